"""Alignment to the ArcFace 112x112 five-point template (docs/method.md#3-alignment)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from synfiqa.errors import BadInputError

# (x, y): left eye, right eye, nose tip, left mouth corner, right mouth corner.
ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping source
    points onto target points (Umeyama 1991). Returns a 2x3 matrix."""
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    source_mean, target_mean = source.mean(0), target.mean(0)
    source_centred, target_centred = source - source_mean, target - target_mean
    covariance = target_centred.T @ source_centred / len(source)
    u, singular, vt = np.linalg.svd(covariance)
    reflection = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        reflection[1, 1] = -1.0
    rotation = u @ reflection @ vt
    variance = source_centred.var(0).sum()
    scale = np.trace(np.diag(singular) @ reflection) / variance if variance > 0 else 1.0
    translation = target_mean - scale * rotation @ source_mean
    return np.hstack([scale * rotation, translation[:, None]])


# run.alignment: how the similarity to the template is solved (docs/method.md section 11).
# "landmarks-to-template" (synfiqa): least squares in the template's frame, the crop's own
# pixels. "template-to-landmarks" (the original's warp_and_crop_face, matlab_cp2tform): least
# squares in the photo's frame, from the template to the landmarks, then inverted; the two
# agree only when the landmarks fit the template exactly, and the original's face comes out
# 0.2-5 % larger on the test photos.
ALIGNMENTS = ("landmarks-to-template", "template-to-landmarks")


def template_transform(landmarks: np.ndarray, size: int = 112, alignment: str = ALIGNMENTS[0]) -> np.ndarray:
    """The 2x3 similarity that takes a photo's five landmarks onto the ArcFace template at
    `size`, solved as `alignment` says."""
    template = ARCFACE_TEMPLATE_112 * (size / 112.0)
    if alignment == "landmarks-to-template":
        return similarity_transform(landmarks, template)
    if alignment == "template-to-landmarks":
        return original_similarity_transform(landmarks, template)
    raise ValueError(f"alignment must be one of {', '.join(ALIGNMENTS)}; got {alignment!r}")


def original_similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The original's similarity from `source` (landmarks) to `target` (template), as
    matlab_cp2tform's get_similarity_transform_for_cv2 computes it: the points are float32; the
    least-squares similarity is fitted from target to source and inverted; a mirrored fit is
    its alternative, and the plain fit is kept when its residual is no larger, both residuals
    taken against the x-mirrored target (the original mirrors the target array in place before
    it compares, so that is what it measures against)."""
    source = np.asarray(source, dtype=np.float32).astype(np.float64)
    target = np.asarray(target, dtype=np.float32).astype(np.float64)
    if not np.ptp(source, axis=0).any():  # the fit to one point has scale 0 and no inverse (the original crashes)
        raise BadInputError("no-face", "the five landmarks are one point: no similarity maps the template onto them")
    mirror = np.diag([-1.0, 1.0, 1.0])
    mirrored = target * np.array([-1.0, 1.0])
    plain = _inverted(similarity_transform(target, source))[:2]
    reflected = (mirror @ _inverted(similarity_transform(mirrored, source)))[:2]
    plain_residual = np.linalg.norm(apply_transform(plain, source) - mirrored)
    return plain if plain_residual <= np.linalg.norm(apply_transform(reflected, source) - mirrored) else reflected


def _inverted(matrix: np.ndarray) -> np.ndarray:
    """The 3x3 inverse of a 2x3 affine matrix."""
    return np.linalg.inv(np.vstack([matrix, [0.0, 0.0, 1.0]]))


def apply_transform(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def warp_affine(images: torch.Tensor, matrices: torch.Tensor, size: tuple[int, int] = (112, 112)) -> torch.Tensor:
    """Batched bilinear warp. images: uint8 or float [N, C, H, W]; matrices [N, 2, 3] map
    input pixel coordinates (pixel centres at integers) to output ones, as cv2.warpAffine.
    Outside the image is black. Returns the dtype it was given."""
    n, _, height, width = images.shape
    out_h, out_w = size
    full = torch.zeros(n, 3, 3, dtype=torch.float64)
    full[:, :2] = matrices.to(torch.float64)
    full[:, 2, 2] = 1.0
    inverse = torch.linalg.inv(full)[:, :2]  # output pixel -> input pixel
    ys, xs = torch.meshgrid(torch.arange(out_h, dtype=torch.float64), torch.arange(out_w, dtype=torch.float64), indexing="ij")
    grid = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1).reshape(-1, 3)
    source = grid @ inverse.transpose(1, 2)  # [N, out_h*out_w, 2]
    normalised = torch.empty_like(source)
    normalised[..., 0] = (2 * source[..., 0] + 1) / width - 1  # align_corners=False convention
    normalised[..., 1] = (2 * source[..., 1] + 1) / height - 1
    grid_sample_grid = normalised.reshape(n, out_h, out_w, 2).to(torch.float32)
    warped = F.grid_sample(images.to(torch.float32), grid_sample_grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if images.dtype == torch.uint8:
        return warped.round().clamp(0, 255).to(torch.uint8)
    return warped.to(images.dtype)


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = 112,
               alignment: str = ALIGNMENTS[0]) -> tuple[np.ndarray, np.ndarray]:
    """Align one HxWx3 uint8 photo from its five landmarks. Returns the size x size crop
    and the 2x3 transform that made it."""
    matrix = template_transform(landmarks, size, alignment)
    tensor = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1)[None]
    crop = warp_affine(tensor, torch.from_numpy(matrix)[None], (size, size))[0].permute(1, 2, 0).numpy()
    return np.ascontiguousarray(crop), matrix


_UPRIGHT_DETECTOR = None
UPSIDE_DOWN_MARGIN = 0.5  # HOG score units; on the 7 test photos either way up the gap is 1.1 to 2.6


def upside_down(crop: np.ndarray) -> bool | None:
    """Whether an aligned crop shows its face upside down (None when dlib is missing).

    A landmark detector fitted to an upside-down face still puts "eyes" above "mouth" (MTCNN
    does: the mouth corners become the eyes), so landmark geometry cannot tell; dlib's HOG face
    detector, trained on upright faces only, can: it scores the crop and the crop turned
    180 degrees, and the turned one wins by a clear margin only when the face is upside down."""
    global _UPRIGHT_DETECTOR
    try:
        import dlib
    except ImportError:
        return None
    if _UPRIGHT_DETECTOR is None:
        _UPRIGHT_DETECTOR = dlib.get_frontal_face_detector()
    # HOG's smallest window is 80 px: twice the crop's size gives it the whole face
    big = np.ascontiguousarray(np.kron(crop, np.ones((2, 2, 1), dtype=np.uint8)))
    upright = max(_UPRIGHT_DETECTOR.run(big, 0, -1.5)[1], default=-1.5)
    turned = max(_UPRIGHT_DETECTOR.run(np.ascontiguousarray(big[::-1, ::-1]), 0, -1.5)[1], default=-1.5)
    return turned > upright + UPSIDE_DOWN_MARGIN
