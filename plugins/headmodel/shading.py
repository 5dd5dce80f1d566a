"""Camera, normals, spherical-harmonics shading and the UV albedo, as DECA defines them.

Camera (DECA ``util.batch_orth_proj``): ``cam = (s, tx, ty)``;
``x' = s (x + tx)``, ``y' = s (y + ty)``, ``z' = s z``: the translation is added *before*
the scale. DECA then negates y and z (``trans_verts[:, :, 1:] *= -1``) so that +y points
down the image; the result is in the normalised crop square, -1..1 across the crop.
A crop point ``p`` in -1..1 is the pixel ``(p + 1) / 2 * S`` of an S x S crop
(``transform_points``' ``points_scale``), and ``transform_points`` maps it through a 3x3
``tform`` acting on the row vector ``[u, v, 1] @ tform`` (DECA passes
``inverse(crop_tform).T``, the crop -> original-image map, see :func:`crop_to_image_matrix`).

Shading (DECA ``SRenderY.add_SHlight``): nine real SH basis functions of the unit normal
``n = (x, y, z)`` scaled by DECA's constants (the Lambertian-convolved SH basis of
Ramamoorthi & Hanrahan 2001), summed against ``sh (N, 9, 3)``:
``[1, x, y, z, xy, xz, yz, x^2 - y^2, 3z^2 - 1]`` * ``SH_CONSTANTS``.

Albedo (DECA ``FLAMETex``): ``mean + basis @ tex`` reshaped to a 512 x 512 x 3 UV map,
resized (nearest) to 256 x 256, channels reversed (the file stores BGR), range 0..1.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

_pi = math.pi
SH_CONSTANTS = (
    1 / math.sqrt(4 * _pi),
    (2 * _pi / 3) * math.sqrt(3 / (4 * _pi)),
    (2 * _pi / 3) * math.sqrt(3 / (4 * _pi)),
    (2 * _pi / 3) * math.sqrt(3 / (4 * _pi)),
    (_pi / 4) * 3 * math.sqrt(5 / (12 * _pi)),
    (_pi / 4) * 3 * math.sqrt(5 / (12 * _pi)),
    (_pi / 4) * 3 * math.sqrt(5 / (12 * _pi)),
    (_pi / 4) * (3 / 2) * math.sqrt(5 / (12 * _pi)),
    (_pi / 4) * (1 / 2) * math.sqrt(5 / (4 * _pi)),
)


def orthographic_projection(points: torch.Tensor, cam: torch.Tensor) -> torch.Tensor:
    """DECA's batch_orth_proj: points (N,P,3), cam (N,3) = (s, tx, ty) -> s * (x + tx, y + ty, z)."""
    cam = cam.reshape(-1, 1, 3)
    scale, shift = cam[..., :1], cam[..., 1:]
    return scale * torch.cat([points[..., :2] + shift, points[..., 2:]], -1)


def to_image_axes(projected: torch.Tensor) -> torch.Tensor:
    """DECA's flip after projection: y and z negated (+y down the image, +z away from the viewer)."""
    return projected * projected.new_tensor([1.0, -1.0, -1.0])


def project(points: torch.Tensor, cam: torch.Tensor) -> torch.Tensor:
    """Orthographic projection then the image-axes flip: the normalised crop coordinates
    (-1..1 across the crop) DECA rasterises and compares landmarks in."""
    return to_image_axes(orthographic_projection(points, cam))


def crop_pixels(normalised: torch.Tensor, size: int) -> torch.Tensor:
    """Normalised crop coordinates -> pixel coordinates of an S x S crop: (p + 1) / 2 * S."""
    return (normalised[..., :2] * 0.5 + 0.5) * size


def transform_points(points: torch.Tensor, tform: torch.Tensor, points_scale: int | None = None,
                     out_size: tuple[int, int] | None = None) -> torch.Tensor:
    """DECA's util.transform_points: xy of points (N,P,3) (normalised crop coordinates when
    ``points_scale`` = the crop size S is given, else pixels) as the row vector [u, v, 1] times
    ``tform`` (N,3,3); with ``out_size`` = (h, w) the result is normalised to -1..1 of that
    image (x / w * 2 - 1, y / h * 2 - 1). z is kept."""
    xy = crop_pixels(points, points_scale) if points_scale else points[..., :2]
    homogeneous = torch.cat([xy, torch.ones_like(xy[..., :1])], -1)
    moved = (homogeneous @ tform)[..., :2]
    if out_size is not None:
        h, w = out_size
        moved = torch.stack([moved[..., 0] / w * 2 - 1, moved[..., 1] / h * 2 - 1], -1)
    return torch.cat([moved, points[..., 2:]], -1)


def crop_to_image_matrix(crop_tform: torch.Tensor) -> torch.Tensor:
    """The matrix DECA's demos pass to transform_points: inverse(tform).T, where ``tform`` is the
    similarity that took original-image pixels to crop pixels (column-vector convention, as
    skimage's estimate_transform returns)."""
    return torch.linalg.inv(crop_tform).transpose(-1, -2)


def vertex_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """(N,V,3) unit normals: the sum of the (area-weighted) normals cross(v1 - v0, v2 - v0) of
    the faces around each vertex, normalised (as DECA's util.vertex_normals)."""
    corners = vertices[:, faces]  # (N, F, 3, 3)
    face_normal = torch.linalg.cross(corners[:, :, 1] - corners[:, :, 0], corners[:, :, 2] - corners[:, :, 0], dim=-1)
    normals = torch.zeros_like(vertices)
    for k in range(3):
        normals.index_add_(1, faces[:, k], face_normal)
    return F.normalize(normals, eps=1e-6, dim=-1)


def sh_basis(normals: torch.Tensor) -> torch.Tensor:
    """normals (N,3,H,W) -> (N,9,H,W): the nine basis values times SH_CONSTANTS."""
    x, y, z = normals[:, 0], normals[:, 1], normals[:, 2]
    basis = torch.stack([torch.ones_like(x), x, y, z, x * y, x * z, y * z, x * x - y * y, 3 * z * z - 1], 1)
    return basis * basis.new_tensor(SH_CONSTANTS)[None, :, None, None]


def sh_shading(normals: torch.Tensor, sh_coeff: torch.Tensor) -> torch.Tensor:
    """normals (N,3,H,W), sh_coeff (N,9,3) -> shading (N,3,H,W) = sum_k sh[:, k, c] * basis_k."""
    return torch.einsum("nkc,nkhw->nchw", sh_coeff, sh_basis(normals))


class FlameTexture(torch.nn.Module):
    """The UV albedo model: ``texture(tex (N, n_tex)) -> (N, 3, uv_size, uv_size)``, RGB 0..1.
    ``space`` is what :func:`~.assets.load_texture_space` returns."""

    def __init__(self, space: dict, n_tex: int = 50, uv_size: int = 256):
        super().__init__()
        mean = np.asarray(space["mean"], dtype=np.float32).reshape(1, -1)
        basis = np.asarray(space["basis"], dtype=np.float32).reshape(mean.shape[1], -1)
        if n_tex > basis.shape[1]:
            raise ValueError(f"the texture space has {basis.shape[1]} components, {n_tex} asked for")
        side = int(round(math.sqrt(mean.shape[1] / 3)))
        if side * side * 3 != mean.shape[1]:
            raise ValueError(f"the texture mean has {mean.shape[1]} values: not a square RGB map")
        self.side, self.uv_size, self.n_tex = side, uv_size, n_tex
        self.register_buffer("mean", torch.from_numpy(mean))
        self.register_buffer("basis", torch.from_numpy(np.ascontiguousarray(basis[:, :n_tex])))

    def forward(self, tex: torch.Tensor) -> torch.Tensor:
        flat = self.mean + tex @ self.basis.T
        image = flat.reshape(tex.shape[0], self.side, self.side, 3).permute(0, 3, 1, 2)
        if self.uv_size != self.side:
            image = F.interpolate(image, [self.uv_size, self.uv_size])  # nearest, as DECA
        return image.flip(1)  # BGR -> RGB, DECA's [2, 1, 0]
