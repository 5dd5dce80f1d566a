"""The ``echo`` Stage-2 backend: each planned image is one of the identity's photos, warped
toward the plan entry's head pose and framing through a 3-D template. It needs no diffusion
model, so detect, align, degrade, |yaw|, annotate, resume and shards run end to end on real
photos (the tests use it); it is not a generator of new faces.

How a photo is warped (``size`` x ``size`` output):

1. **Canonical frame.** The photo is aligned by a similarity of its five landmarks to the
   ArcFace template scaled so that the template's 112 pixels span half the output
   (``FACE_FRACTION``), centred.
2. **Template.** An ellipsoid head (a latitude-longitude mesh, ``LATITUDES`` x ``LONGITUDES``)
   with semi-axes ``HEAD_AXES`` times the template's eye distance, centred between the eyes and
   the mouth; every vertex keeps, as its texture coordinate, where it lies in the canonical
   frame seen from the front.
3. **Pose.** The mesh turns by the spec's ``R = Rz(roll) Ry(yaw) Rx(pitch)`` about its centre
   (the plan's conventions: positive yaw turns the nose to the image's right), is scaled by the
   framing scale about the image centre and moved by the framing offsets (half-widths of the
   image), and is rasterised with ``synfiqa.ops.rasterize`` (nearest surface wins).
4. **Texture.** A pixel the head covers takes the canonical photo at its interpolated texture
   coordinate; a pixel outside takes the canonical photo under the same roll, scale and offset
   (hair and background follow the head in the image plane). Bilinear, black outside the photo.

The pose is applied on top of the photo's own (a photo at 10 degrees of yaw planned at 30 ends
near 40). Expression, jaw, light and prompt are not realised; the manifest still records the
plan's ``control.*``, and |yaw| is measured on the result as for any backend. References and
sample sources are the identity's photos split as the ``folder`` backend splits them
(synfiqa.synthesis.split_photos): with a single photo, samples are circular (marked).
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from synfiqa import hookimpl
from synfiqa.align import ARCFACE_TEMPLATE_112, similarity_transform, warp_affine
from synfiqa.errors import ConfigError
from synfiqa.stages.s3_synthesize.plan import euler_to_matrix
from synfiqa.synthesis import Rendered, split_photos

FACE_FRACTION = 0.5                 # the 112 template spans this share of the output side
HEAD_AXES = (1.15, 1.55, 1.3)       # ellipsoid semi-axes x, y, z in eye distances
LATITUDES, LONGITUDES = 24, 48
Z_OFFSET = 10.0                     # keeps every vertex in front of the rasteriser's camera
_TEMPLATE_EYE_DISTANCE = float(np.linalg.norm(ARCFACE_TEMPLATE_112[1] - ARCFACE_TEMPLATE_112[0]))


@functools.cache
def ellipsoid(latitudes: int = LATITUDES, longitudes: int = LONGITUDES) -> tuple[torch.Tensor, torch.Tensor]:
    """A unit sphere as (vertices (V, 3) float64, faces (F, 3) int64): two poles on the y axis
    and (latitudes - 1) rings of `longitudes` vertices, the seam at the back."""
    rings = []
    for i in range(1, latitudes):
        polar = math.pi * i / latitudes
        for j in range(longitudes):
            azimuth = 2 * math.pi * j / longitudes            # 0 at the front (+z)
            rings.append((math.sin(polar) * math.sin(azimuth), math.cos(polar),
                          math.sin(polar) * math.cos(azimuth)))
    top, bottom = len(rings), len(rings) + 1
    vertices = torch.tensor(rings + [(0.0, 1.0, 0.0), (0.0, -1.0, 0.0)], dtype=torch.float64)
    faces = []
    for j in range(longitudes):
        k = (j + 1) % longitudes
        faces.append((top, j, k))
        for i in range(latitudes - 2):
            a, b = i * longitudes + j, i * longitudes + k
            c, d = a + longitudes, b + longitudes
            faces += [(a, c, b), (b, c, d)]
        last = (latitudes - 2) * longitudes
        faces.append((bottom, last + k, last + j))
    return vertices, torch.tensor(faces, dtype=torch.int64)


class EchoBackend:
    """the identity's photos warped toward each planned pose through a 3-D ellipsoid head (tests and demos; no diffusion model)"""

    def __init__(self, size: int = 256, impl: str = "auto"):
        if isinstance(size, bool) or not isinstance(size, int) or not 64 <= size <= 1024:
            raise ConfigError(f"echo: size must be an integer from 64 to 1024, got {size!r}")
        self.size = size
        self.impl = impl
        self.batch = 16

    def render(self, identity, plan, context):
        references, sources = split_photos(identity.photos, max(1, len(plan.references)))
        jobs = [(spec, references[spec.index % len(references)]) for spec in plan.references]
        jobs += [(spec, sources[spec.index % len(sources)]) for spec in plan.degraded]
        for start in range(0, len(jobs), self.batch):
            part = jobs[start:start + self.batch]
            images = self.warp([photo for _, photo in part], [spec for spec, _ in part])
            for (spec, photo), image in zip(part, images):
                yield Rendered(spec.role, spec.index, image, source=photo.key, spec=spec)

    # ------------------------------------------------------------ the warp
    def canonical(self, photo) -> torch.Tensor:
        """The photo in the canonical frame: float [3, S, S]."""
        size = self.size
        target = (ARCFACE_TEMPLATE_112 - 56.0) * (size * FACE_FRACTION / 112.0) + size / 2.0
        matrix = similarity_transform(np.asarray(photo.face.landmarks, dtype=np.float64), target)
        image = torch.from_numpy(np.array(photo.image, dtype=np.uint8, copy=True)).permute(2, 0, 1)[None]
        return warp_affine(image, torch.from_numpy(matrix)[None], (size, size))[0].float()

    def geometry(self) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """The template at rest in canonical pixels (x right, y down, z towards the camera),
        its faces and the head centre (x, y)."""
        scale = self.size * FACE_FRACTION / 112.0
        template = (ARCFACE_TEMPLATE_112 - 56.0) * scale + self.size / 2.0
        eye = _TEMPLATE_EYE_DISTANCE * scale
        centre = np.array([template[2, 0], (template[:2, 1].mean() + template[3:, 1].mean()) / 2])
        unit, faces = ellipsoid()
        axes = torch.tensor(HEAD_AXES, dtype=torch.float64) * eye
        return unit * axes, faces, centre

    def warp(self, photos, specs) -> list[np.ndarray]:
        from synfiqa.ops import rasterize

        size, n = self.size, len(specs)
        rest, faces, centre = self.geometry()
        half = size / 2.0
        # world axes (x right, y up, z to the camera) about the head centre
        rotations = torch.tensor(np.stack([euler_to_matrix(s.yaw, s.pitch, s.roll) for s in specs]))
        posed = rest[None] @ rotations.transpose(1, 2)                          # (N, V, 3)
        scale = torch.tensor([s.framing[0] for s in specs], dtype=torch.float64)[:, None]
        offset = torch.tensor([[s.framing[1], s.framing[2]] for s in specs], dtype=torch.float64) * half
        u = half + scale * (centre[0] + posed[..., 0] - half) + offset[:, :1]
        v = half + scale * (centre[1] - posed[..., 1] - half) + offset[:, 1:]
        w = -posed[..., 2] * scale / half + Z_OFFSET
        ndc = torch.stack([1 - 2 * u / size, 1 - 2 * v / size, w], -1).float()
        packed, bary, _ = rasterize(ndc, faces, size, size, impl=self.impl)

        covered = packed >= 0
        face = torch.where(covered, packed % faces.shape[0], torch.zeros_like(packed))
        corners = faces[face]                                                    # (N, S, S, 3)
        texture = torch.stack([centre[0] + rest[:, 0], centre[1] - rest[:, 1]], -1).float()   # (V, 2)
        head = (texture[corners] * bary[..., None]).sum(-2)                      # (N, S, S, 2)

        # outside the head: the inverse of roll, scale and offset about the head centre
        ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float64) + 0.5,
                                torch.arange(size, dtype=torch.float64) + 0.5, indexing="ij")
        roll = torch.tensor([math.radians(s.roll) for s in specs], dtype=torch.float64)[:, None, None]
        px = (xs[None] - half - offset[:, :1, None]) / scale[..., None] + half - centre[0]
        py = (ys[None] - half - offset[:, 1:, None]) / scale[..., None] + half - centre[1]
        # the image-plane rotation of Rz(roll) is [[cos, sin], [-sin, cos]]; this is its inverse
        bx = centre[0] + px * torch.cos(roll) - py * torch.sin(roll)
        by = centre[1] + px * torch.sin(roll) + py * torch.cos(roll)
        background = torch.stack([bx, by], -1).float()
        where = torch.where(covered[..., None], head, background)               # canonical pixel positions
        grid = where * (2.0 / size) - 1.0                                        # align_corners=False
        canonical = torch.stack([self.canonical(photo) for photo in photos])
        out = F.grid_sample(canonical, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        pixels = out.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return [np.ascontiguousarray(p) for p in pixels]


@hookimpl
def register_stage2_backends(register):
    register("echo", EchoBackend)
