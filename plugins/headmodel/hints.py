"""Conditioning hints of a posed FLAME head (STAGE2 sections 3.4-3.5), as DECA's ``SRenderY``
renders them, through synfiqa's own rasteriser (``synfiqa.ops.rasterize``).

Pose (from a Stage-3 :class:`~synfiqa.stages.s3_synthesize.plan.Spec`): the global axis-angle is
``Spec.global_axis_angle()`` (``R = Rz(roll) Ry(yaw) Rx(pitch)``, s3_synthesize.plan's conventions:
positive yaw turns the nose to +x, the image's right); the jaw opens by ``Spec.jaw`` degrees
about +x (the synthetic bank's axis; a DECA bank entry's own jaw axis is not used); the first
``flame.n_exp`` expression coefficients (zeros beyond the spec's 50).

Camera (DECA's orthographic one, :func:`~.shading.project`): from ``framing = (scale, ox, oy)``,
``s = scale * reference_scale`` and the image-axes point of a world point (x, y, z) is
``u = s x + ox`` (+u right), ``v = -s y + oy`` (+v down), ``w = -s z`` (+w away from the
viewer), -1..1 across the crop: DECA's ``cam = (s, ox / s, -oy / s)``. A crop coordinate p is
the continuous pixel position ``(p + 1) / 2 * size`` (pixel c covers [c, c + 1), its centre is
c + 0.5), as :func:`~.shading.crop_pixels`. The rasteriser gets pytorch3d NDC as DECA hands it
over: ``(-u, -v, w + 10)`` (+X left, +Y up, z >= 0 in front of the camera; the nearest surface,
smallest w, wins).

Outputs (:class:`Hints`, float32, channels first, ``alpha`` = 1 where a face covers the pixel
centre, 0 exactly where ``pix_to_face`` is -1):

* ``normal``: world-space vertex normals of the posed mesh, interpolated by barycentrics (not
  renormalised, as DECA's ``normal_images``; slightly shorter than 1 inside a face), times alpha;
  +z points towards the camera, so a frontal face has z > 0.
* ``albedo``: the UV albedo map sampled at the pixel's interpolated UV (DECA's
  ``uv * 2 - 1`` with v flipped, ``grid_sample(align_corners=False)``, bilinear), times alpha; with
  no texture space or no UV layout, a flat grey :data:`FLAT_ALBEDO` (``albedo_source`` says which).
* ``shaded``: ``albedo * sh_shading(normal, light)`` times alpha (DECA's ``rendered_images``).
* ``depth``: DECA's ``render_depth``: ``(max w - w) / (max w - min w)`` over the mesh's vertices,
  interpolated: 1 nearest to the camera, 0 farthest and on the background.
* ``landmarks`` (68, 2): pixel positions (x right, y down, continuous as above) of FLAME's
  68 landmarks (17 yaw-dependent contour points, then 51 static ones); ``landmark_image``:
  CapHuman's ``draw_facepose``, white disks of radius 3 pixels on black.
* ``caphuman`` (9, H, W) = ``cat(normal, albedo, shaded)``, not rescaled (CapHuman's input).
* ``arc2face_normal`` = ``normal * 0.5 + 0.5``: RGB in [0, 1], the background 0.5 grey
  (STAGE2 section 3.5).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from .shading import SH_CONSTANTS, crop_pixels, project, vertex_normals

FLAT_ALBEDO = 0.5           # the grey albedo used without a texture space / UV layout
REFERENCE_SCALE = 8.0       # DECA's cam scale for framing scale 1 (about what DECA fits on its 224 crops)
Z_OFFSET = 10.0             # DECA adds 10 to w before rasterising, so every vertex is in front
LANDMARK_RADIUS = 3         # CapHuman's draw_facepose dots


@dataclass
class Hints:
    """The hints of one spec. ``caphuman`` holds normal, albedo and shaded (channels 0-2, 3-5,
    6-8, a channels-last view); the other images are views of it or made on first use."""

    caphuman: torch.Tensor         # (9, H, W) cat(normal, albedo, shaded)
    alpha: torch.Tensor            # (1, H, W) 0 / 1
    depth: torch.Tensor            # (1, H, W) in [0, 1], 0 on the background
    landmarks: torch.Tensor        # (68, 2) pixel positions (x, y)
    pix_to_face: torch.Tensor      # (H, W) int64 face index of the mesh, -1 on the background
    albedo_source: str = "uv"      # "uv" (texture sampled) or "flat" (FLAT_ALBEDO grey)

    @property
    def normal(self) -> torch.Tensor:
        """(3, H, W) in [-1, 1], times alpha."""
        return self.caphuman[0:3]

    @property
    def albedo(self) -> torch.Tensor:
        """(3, H, W) times alpha."""
        return self.caphuman[3:6]

    @property
    def shaded(self) -> torch.Tensor:
        """(3, H, W) albedo x SH shading, times alpha."""
        return self.caphuman[6:9]

    @property
    def arc2face_normal(self) -> torch.Tensor:
        """(3, H, W) normal * 0.5 + 0.5 (the background 0.5 grey)."""
        return self.normal * 0.5 + 0.5

    @property
    def landmark_image(self) -> torch.Tensor:
        """(3, H, W) white dots on black (CapHuman's draw_facepose)."""
        height, width = self.alpha.shape[-2:]
        return draw_landmarks(self.landmarks, height, width).to(self.alpha.device)


def spec_pose(spec, device=None, dtype=torch.float32) -> torch.Tensor:
    """DECA's (6,) pose code (global axis-angle, jaw axis-angle) of a Spec, radians."""
    global_aa = spec.global_axis_angle()
    return torch.tensor([*global_aa, math.radians(spec.jaw), 0.0, 0.0], device=device, dtype=dtype)


def spec_cam(spec, reference_scale: float = REFERENCE_SCALE, device=None, dtype=torch.float32) -> torch.Tensor:
    """DECA's (3,) cam = (s, tx, ty) of a Spec's framing (module doc)."""
    scale, ox, oy = (float(v) for v in spec.framing)
    s = scale * reference_scale
    if not s > 0:
        raise ValueError(f"framing scale must be > 0, got {scale}")
    return torch.tensor([s, ox / s, -oy / s], device=device, dtype=dtype)


def _fit(values: Sequence[float] | torch.Tensor, size: int, batch: int, device, dtype) -> torch.Tensor:
    """(batch, size): the first `size` values, zero-padded; a 1-D input is shared by the batch."""
    t = torch.as_tensor(values, dtype=dtype, device=device)
    if t.dim() == 1:
        t = t.expand(batch, -1)
    out = t.new_zeros(batch, size)
    n = min(size, t.shape[1])
    out[:, :n] = t[:, :n]
    return out


def _corner_sum(values: torch.Tensor, corners: torch.Tensor, bary: torch.Tensor,
                out: torch.Tensor | None = None) -> torch.Tensor:
    """sum_k bary[:, k] * values[corners[:, k]]: (M, C) from values (R, C), corners (M, 3),
    bary (M, 3), written into `out` when given."""
    first = values.index_select(0, corners[:, 0])
    out = torch.mul(first, bary[:, 0:1], out=out) if out is not None else first.mul_(bary[:, 0:1])
    out.addcmul_(values.index_select(0, corners[:, 1]), bary[:, 1:2])
    out.addcmul_(values.index_select(0, corners[:, 2]), bary[:, 2:3])
    return out


def _sh_quadratic(normal: torch.Tensor) -> torch.Tensor:
    """(M, 3) -> (M, 5): the second-order terms of DECA's SH basis [xy, xz, yz, x^2 - y^2,
    3z^2 - 1] without their constants (the caller folds them into the light)."""
    x, y, z = normal[:, 0], normal[:, 1], normal[:, 2]
    out = torch.empty(normal.shape[0], 5, dtype=normal.dtype, device=normal.device)
    torch.mul(x, y, out=out[:, 0])
    torch.mul(x, z, out=out[:, 1])
    torch.mul(y, z, out=out[:, 2])
    torch.mul(x, x, out=out[:, 3]).addcmul_(y, y, value=-1.0)
    torch.mul(z, z, out=out[:, 4]).mul_(3.0).sub_(1.0)
    return out


def draw_landmarks(points: torch.Tensor, height: int, width: int, radius: int = LANDMARK_RADIUS) -> torch.Tensor:
    """(L, 2) continuous pixel positions -> (3, H, W) white disks of `radius` on black: a pixel
    is lit when its centre (c + 0.5, r + 0.5) lies within `radius` of a point."""
    image = torch.zeros(height, width, dtype=torch.float32)
    cols = torch.arange(width, dtype=torch.float32) + 0.5
    rows = torch.arange(height, dtype=torch.float32) + 0.5
    for x, y in points.detach().to(torch.float32).cpu().tolist():
        if not (math.isfinite(x) and math.isfinite(y)):
            continue
        c0, c1 = max(0, int(math.floor(x - radius))), min(width, int(math.ceil(x + radius)) + 1)
        r0, r1 = max(0, int(math.floor(y - radius))), min(height, int(math.ceil(y + radius)) + 1)
        if c0 >= c1 or r0 >= r1:
            continue
        d2 = (cols[c0:c1][None, :] - x) ** 2 + (rows[r0:r1][:, None] - y) ** 2
        image[r0:r1, c0:c1] = torch.maximum(image[r0:r1, c0:c1], (d2 <= radius * radius).float())
    return image.expand(3, -1, -1).clone()


@torch.no_grad()
def render_hints_batch(flame, texture, shape, specs: Sequence, size: int = 512,
                       uv: tuple[torch.Tensor, torch.Tensor] | None = None, tex: torch.Tensor | None = None,
                       reference_scale: float = REFERENCE_SCALE, impl: str = "auto") -> list[Hints]:
    """The hints of several specs at once (one rasteriser call): ``flame`` a
    :class:`~.flame.Flame`, ``texture`` a :class:`~.shading.FlameTexture` or None, ``shape`` the
    identity's shape code (n,) shared by all specs or (N, n) (cut or zero-padded to
    ``flame.n_shape``), ``uv`` = (vt (T, 2) in 0..1, ft (F, 3)) the UV layout (DECA's
    head_template.obj; None: flat albedo), ``tex`` the albedo code (zeros: the mean albedo)."""
    specs = list(specs)
    n = len(specs)
    if n == 0:
        return []
    device = flame.v_template.device
    dtype = flame.v_template.dtype
    shape_code = _fit(shape, flame.n_shape, n, device, dtype)
    expression = _fit(torch.tensor([list(s.expression) for s in specs], dtype=dtype), flame.n_exp, n, device, dtype)
    pose = torch.stack([spec_pose(s, device, dtype) for s in specs])
    cam = torch.stack([spec_cam(s, reference_scale, device, dtype) for s in specs])
    out = flame(shape=shape_code, expression=expression, pose=pose)
    vertices = out.vertices                                          # world, (N, V, 3)
    faces = flame.faces
    image = project(vertices, cam)                                   # (u, v, w), -1..1 across the crop
    ndc = torch.stack([-image[..., 0], -image[..., 1], image[..., 2] + Z_OFFSET], -1).float()

    from synfiqa.ops import rasterize

    packed, bary, _ = rasterize(ndc, faces, size, size, impl=impl)
    face_count, vertex_count = faces.shape[0], vertices.shape[1]
    mask = packed >= 0
    # only covered pixels are computed (the face fills a fraction of the image), then scattered
    covered = mask.reshape(-1).nonzero().squeeze(1)                  # (M,) into N*H*W, image by image
    counts = mask.reshape(n, -1).sum(1)
    mesh = torch.repeat_interleave(torch.arange(n, device=device), counts)
    local_face = packed.reshape(-1).index_select(0, covered) - mesh * face_count
    # pix_to_face per mesh (packed n * F + f -> f, -1 stays -1), in place: packed is not needed after
    face = packed.sub_((torch.arange(n, device=device) * face_count)[:, None, None]).masked_fill_(~mask, -1)
    weights = bary.reshape(-1, 3).index_select(0, covered).float()
    corners = faces.index_select(0, local_face) + (mesh * vertex_count)[:, None]
    # one row per covered pixel, channels last: depth, normal, albedo, shaded
    rows = torch.empty(covered.shape[0], 10, device=device)

    normals = vertex_normals(vertices, faces).float()
    w = image[..., 2].float()
    w_min, w_max = w.min(1, keepdim=True).values, w.max(1, keepdim=True).values
    depth_vertex = ((w_max - w) / (w_max - w_min).clamp_min(1e-12))[..., None]
    per_vertex = torch.cat([depth_vertex, normals], -1).reshape(n * vertex_count, 4)
    _corner_sum(per_vertex, corners, weights, out=rows[:, 0:4])      # depth, normal (not renormalised)
    normal_pixels = rows[:, 1:4]

    if texture is not None and uv is not None:
        code = torch.zeros(1, texture.n_tex, device=device) if tex is None else tex.reshape(1, -1).to(device)
        texture_map = texture(code.to(texture.mean.dtype)).float()
        vt = torch.as_tensor(uv[0], dtype=torch.float32, device=device)
        ft = torch.as_tensor(uv[1], dtype=torch.long, device=device)
        pixel_uv = _corner_sum(vt, ft.index_select(0, local_face), weights)          # (M, 2)
        grid = pixel_uv.mul_(torch.tensor([2.0, -2.0], device=device)).add_(torch.tensor([-1.0, 1.0], device=device))
        rows[:, 4:7] = F.grid_sample(texture_map, grid[None, None], mode="bilinear",     # DECA: (2u - 1, 1 - 2v)
                                     align_corners=False)[0, :, 0].T
        source = "uv"
    else:
        rows[:, 4:7] = FLAT_ALBEDO
        source = "flat"
    light = torch.tensor([[list(c) for c in s.light] for s in specs], dtype=torch.float32, device=device)
    light = light * light.new_tensor(SH_CONSTANTS)[None, :, None]   # DECA's constants folded into the light
    quadratic = _sh_quadratic(normal_pixels)                         # (M, 5)
    start = 0
    for i, count in enumerate(counts.tolist()):   # shaded = albedo * (L0 + n . L1..3 + quadratic . L4..8)
        part = slice(start, start + count)
        shading = torch.addmm(light[i, 0], normal_pixels[part], light[i, 1:4])
        shading.addmm_(quadratic[part], light[i, 4:9])
        torch.mul(rows[part, 4:7], shading, out=rows[part, 7:10])
        start += count

    channels = torch.zeros(n * size * size, 10, device=device).index_copy_(0, covered, rows)
    channels = channels.reshape(n, size, size, 10).permute(0, 3, 1, 2)
    depth, caphuman = channels[:, :1], channels[:, 1:]
    alpha = mask.float()[:, None]

    landmarks = crop_pixels(project(out.landmarks2d, cam), size).float()
    return [Hints(caphuman=caphuman[i], alpha=alpha[i], depth=depth[i], landmarks=landmarks[i], pix_to_face=face[i],
                  albedo_source=source) for i in range(n)]


def render_hints(flame, texture, shape, spec, size: int = 512, **options) -> Hints:
    """The hints of one spec (see :func:`render_hints_batch`)."""
    return render_hints_batch(flame, texture, shape, [spec], size, **options)[0]


def uv_layout(model: dict) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(vt, ft) from a loaded model dict when it carries a UV layout, else None."""
    if "vt" in model and "ft" in model:
        return torch.as_tensor(model["vt"], dtype=torch.float32), torch.as_tensor(model["ft"].astype("int64"))
    return None


# ------------------------------------------------------------------ images

def to_uint8(image: torch.Tensor, signed: bool = False):
    """(C, H, W) float -> (H, W, C) uint8 numpy; `signed` maps [-1, 1] to [0, 255]."""
    x = image.detach().float().cpu()
    if signed:
        x = x * 0.5 + 0.5
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    return x.permute(1, 2, 0).numpy()


def hint_images(hints: Hints) -> dict:
    """name -> (H, W, 3) uint8 of the viewable hints (normal as RGB = n * 0.5 + 0.5, background grey)."""
    return {
        "normal": to_uint8(hints.arc2face_normal),
        "albedo": to_uint8(hints.albedo),
        "shaded": to_uint8(hints.shaded),
        "depth": to_uint8(hints.depth),
        "landmarks": to_uint8(hints.landmark_image),
        "alpha": to_uint8(hints.alpha),
    }


def write_hints(hints: Hints, out_dir) -> list:
    """normal.png, albedo.png, shaded.png, depth.png, landmarks.png and caphuman.npy (9, H, W)
    float32 into `out_dir`; returns the paths written."""
    from pathlib import Path

    import numpy as np
    from PIL import Image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = hint_images(hints)
    written = []
    for name in ("normal", "albedo", "shaded", "depth", "landmarks"):
        path = out / f"{name}.png"
        Image.fromarray(images[name]).save(path)
        written.append(path)
    path = out / "caphuman.npy"
    np.save(path, hints.caphuman.detach().cpu().numpy().astype(np.float32))
    written.append(path)
    return written


def hints_grid(hints: Hints):
    """A 2 x 3 uint8 grid: normal, albedo, shaded / depth, landmarks, alpha."""
    import numpy as np

    images = hint_images(hints)
    top = np.concatenate([images[k] for k in ("normal", "albedo", "shaded")], 1)
    bottom = np.concatenate([images[k] for k in ("depth", "landmarks", "alpha")], 1)
    return np.concatenate([top, bottom], 0)


# ------------------------------------------------------------------ the command

def plan_entry(index: int, plan: str = "synthetic", seed: int = 0, identity: str = "identity", references: int = 10):
    """Entry `index` of the identity's plan: references 0..R-1, then degraded samples."""
    from synfiqa.errors import ConfigError
    from synfiqa.stages.s3_synthesize.plan import DecaBank, SyntheticBank, plan_identity

    if index < 0:
        raise ConfigError(f"--index must be >= 0, got {index}")
    bank = SyntheticBank() if plan == "synthetic" else DecaBank.from_json(plan)
    degraded = max(0, index - references + 1)
    return plan_identity(identity, seed, references, degraded, bank)[index]


def render_command():
    import click

    @click.command("render")
    @click.option("--identity-shape", required=True, metavar="FILE.npy|zeros",
                  help="The identity's FLAME shape code (a .npy vector), or 'zeros' for the mean head.")
    @click.option("--identity", "identity_name", default=None, metavar="NAME",
                  help="The identity whose plan is drawn (a build's identity folder name); default: the .npy "
                       "file's stem, or 'zeros'.")
    @click.option("--index", "index", required=True, type=int, help="The plan entry: references first, then degraded.")
    @click.option("--plan", default="synthetic", show_default=True, metavar="synthetic|BANK.json",
                  help="The bank: the built-in synthetic one or MR-FIQA's DICT_DECA_DEG_REF.json.")
    @click.option("--seed", default=0, show_default=True, type=int, help="The run seed of the plan.")
    @click.option("--references", default=10, show_default=True, type=int, help="References in the plan.")
    @click.option("--size", default=512, show_default=True, type=int, help="Image side in pixels.")
    @click.option("--out", required=True, type=click.Path(file_okay=False), help="The folder to write.")
    def render(identity_shape, identity_name, index, plan, seed, references, size, out):
        """Render the conditioning hints (normal, albedo, shaded, depth, landmarks, and the 9-channel
        CapHuman array) of one plan entry with the user-supplied FLAME files."""
        from pathlib import Path

        import numpy as np

        from synfiqa.errors import ConfigError, WeightsNotFoundError

        from .assets import ASSETS, load_generic_model, load_landmark_embedding, locate_file, texture_from_assets
        from .flame import Flame

        if identity_shape == "zeros":
            shape, identity = np.zeros(1, np.float32), "zeros"
        else:
            try:
                shape = np.asarray(np.load(identity_shape, allow_pickle=False), np.float32).reshape(-1)
            except (OSError, ValueError) as error:
                raise ConfigError(f"--identity-shape {identity_shape}: not a readable .npy vector "
                                  f"({' '.join(str(error).split())[:160]})") from None
            identity = Path(identity_shape).stem
        identity = identity_name or identity
        spec = plan_entry(index, plan, seed, identity, references)
        paths, missing = {}, []
        for key, file_name in (("generic_model", "generic_model.pkl"), ("landmark_embedding", "landmark_embedding.npy")):
            try:
                paths[key] = locate_file(ASSETS[key])
            except WeightsNotFoundError:
                missing.append(f"{file_name} (asset {ASSETS[key]})")
        if missing:
            raise WeightsNotFoundError(
                f"the FLAME files are missing: {', '.join(missing)}; put each in $SYNFIQA_WEIGHTS/<asset>/ or "
                f"~/.cache/synfiqa/weights/<asset>/ (`synfiqa models list` and docs/headmodel.md say where to get them)")
        model = load_generic_model(paths["generic_model"])
        landmarks = load_landmark_embedding(paths["landmark_embedding"])
        flame = Flame(model, landmarks, n_shape=min(100, model["shapedirs"].shape[-1]),
                      n_exp=min(50, max(0, model["shapedirs"].shape[-1] - 300)))
        try:
            texture = texture_from_assets()
        except WeightsNotFoundError:
            texture = None
        hints = render_hints(flame, texture, torch.from_numpy(shape), spec, size, uv=uv_layout(model))
        write_hints(hints, out)
        note = "" if hints.albedo_source == "uv" else " (flat grey albedo: no texture space or no UV layout)"
        click.echo(f"wrote {out}: plan entry {index} ({spec.role} {spec.index}, {spec.source}){note}")

    return render
