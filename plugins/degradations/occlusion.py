"""occlusion: something between the camera and the face, placed from the five landmarks.

Three occluders, sized in units of the inter-eye distance d so that they fit any face:
  sunglasses (kind 1)  two dark lenses centred on the eyes and a bridge between them;
  mask       (kind 2)  a face mask over nose, mouth and chin: an ellipse around the
                       mouth, cut by a straight upper edge a little above the nose tip;
  hand       (kind 3)  a skin-coloured hand-sized blob (an ellipse about 1.4 d x 2 d with
                       a wobbly outline) near one landmark.
kind 0 means no occluder (a sample is occluded with probability `probability`).

Geometry is expressed in the face frame: x along the line from the left to the right eye,
y perpendicular to it, pointing down the face. Edges are anti-aliased over one pixel.

Severity axis: ``coverage``, the fraction of the face that the occluder hides, measured
on the ArcFace template face (an ellipse from forehead to chin, 2.2 d wide and 2.86 d
tall) so that it is known at sampling time, before any image is seen.
"""
from __future__ import annotations

import math

import torch

from synfiqa import hookimpl
from synfiqa_plugins.degradations._common import (
    PerSampleDegradation,
    check_count,
    check_range,
    template_landmarks,
    to_uint8,
    uniform,
)

KINDS = {"sunglasses": 1, "mask": 2, "hand": 3}

# RGB colours the occluders are drawn in (plus a little jitter)
MASK_COLOURS = torch.tensor([[236, 240, 244], [150, 196, 228], [32, 32, 36], [128, 130, 134]], dtype=torch.float64)
SKIN_COLOURS = torch.tensor([[255, 219, 177], [238, 192, 142], [222, 170, 110], [195, 134, 82],
                             [141, 85, 50], [92, 58, 40]], dtype=torch.float64)

# The face region that `coverage` is measured on, in the face frame (units of d, origin
# between the eyes): centre and semi-axes.
FACE_CENTRE_Y, FACE_SEMI_X, FACE_SEMI_Y = 0.33, 1.1, 1.43

OUTSIDE = 1e9  # "far outside" for a point where a shape's distance is undefined


class FaceFrame:
    """Pixel <-> face-frame geometry of one face from its five landmarks."""

    def __init__(self, landmarks: torch.Tensor):
        self.landmarks = landmarks
        left, right = landmarks[0], landmarks[1]
        self.eye_distance = float(torch.linalg.vector_norm(right - left).clamp_min(1.0))
        axis = (right - left) / self.eye_distance
        self.x_axis = axis
        self.y_axis = torch.stack([-axis[1], axis[0]])
        self.eye_centre = (left + right) / 2

    def point(self, origin: torch.Tensor, x: float, y: float) -> torch.Tensor:
        """origin + (x, y) face units, in pixels."""
        return origin + self.eye_distance * (x * self.x_axis + y * self.y_axis)

    def local(self, xs, ys, centre, rotation_degrees: float = 0.0):
        """Pixel grids -> coordinates (pixels) along the face axes rotated by the angle, about centre."""
        angle = math.radians(rotation_degrees)
        cos, sin = math.cos(angle), math.sin(angle)
        axis_x = cos * self.x_axis + sin * self.y_axis
        axis_y = -sin * self.x_axis + cos * self.y_axis
        dx, dy = xs - centre[0], ys - centre[1]
        return dx * axis_x[0] + dy * axis_x[1], dx * axis_y[0] + dy * axis_y[1]


def coverage_alpha(distance: torch.Tensor) -> torch.Tensor:
    """Signed distance to an edge in pixels (negative inside) -> opacity, a 1-pixel ramp."""
    return (0.5 - distance).clamp(0, 1)


def radial_distance(u, v, semi_u: float, semi_v: float, outline=None) -> torch.Tensor:
    """Signed distance (pixels, along the ray from the centre) to the outline of an ellipse
    whose radius is scaled by `outline` (a function of the polar angle) when given."""
    rho = torch.hypot(u / semi_u, v / semi_v)
    if outline is not None:
        rho = rho / outline(torch.atan2(v / semi_v, u / semi_u))
    radius = torch.hypot(u, v)
    safe = rho.clamp_min(1e-12)
    return torch.where(rho > 1e-12, radius * (safe - 1) / safe, torch.full_like(rho, -OUTSIDE))


def sunglasses_alpha(frame: FaceFrame, xs, ys, p) -> torch.Tensor:
    size, aspect, rotation = p["size"], p["aspect"], p["rotation"]
    d = frame.eye_distance
    lenses = []
    for eye in (frame.landmarks[0], frame.landmarks[1]):
        centre = frame.point(eye, p["offset_x"], p["offset_y"])
        u, v = frame.local(xs, ys, centre, rotation)
        lenses.append(coverage_alpha(radial_distance(u, v, 0.36 * size * d, 0.26 * size * aspect * d)))
    bridge_centre = frame.point(frame.eye_centre, p["offset_x"], p["offset_y"] - 0.05 * size)
    u, v = frame.local(xs, ys, bridge_centre, rotation)
    bridge = coverage_alpha(torch.maximum(u.abs() - 0.5 * d, v.abs() - 0.05 * size * d))
    return torch.maximum(torch.maximum(lenses[0], lenses[1]), bridge)


def mask_alpha(frame: FaceFrame, xs, ys, p) -> torch.Tensor:
    size, aspect, rotation = p["size"], p["aspect"], p["rotation"]
    d = frame.eye_distance
    mouth = (frame.landmarks[3] + frame.landmarks[4]) / 2
    centre = frame.point(mouth, p["offset_x"], p["offset_y"] + 0.1)
    u, v = frame.local(xs, ys, centre, rotation)
    body = coverage_alpha(radial_distance(u, v, 0.95 * size * d, 1.0 * size * aspect * d))
    top = frame.point(frame.landmarks[2], p["offset_x"], p["offset_y"] - 0.25 * size)
    _, above = frame.local(xs, ys, top, rotation)
    return torch.minimum(body, coverage_alpha(-above))


def hand_alpha(frame: FaceFrame, xs, ys, p) -> torch.Tensor:
    size, aspect, rotation = p["size"], p["aspect"], p["rotation"]
    d = frame.eye_distance
    centre = frame.point(frame.landmarks[int(p["anchor"])], p["offset_x"], p["offset_y"])
    u, v = frame.local(xs, ys, centre, rotation)
    amplitudes, phases = p["wobble_amplitude"], p["wobble_phase"]

    def outline(angle):
        wobble = torch.ones_like(angle)
        for k in range(amplitudes.shape[0]):
            wobble = wobble + float(amplitudes[k]) * torch.cos((k + 2) * angle + float(phases[k]))
        return wobble

    return coverage_alpha(radial_distance(u, v, 0.7 * size * d, 1.0 * size * aspect * d, outline))


SHAPES = {1: sunglasses_alpha, 2: mask_alpha, 3: hand_alpha}


def occluder_alpha(kind: int, params: dict, landmarks: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Opacity in [0, 1] of the occluder at pixel centres (xs, ys), float64."""
    if kind == 0:
        return torch.zeros_like(xs)
    if kind not in SHAPES:
        raise ValueError(f"params['kind'] must be 0 (none), 1 (sunglasses), 2 (mask) or 3 (hand), got {kind}")
    return SHAPES[kind](FaceFrame(landmarks), xs, ys, params)


def template_face_grid() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pixel centres inside the face region of the 112x112 template face, and its landmarks."""
    landmarks = template_landmarks(1, 112, 112)[0]
    frame = FaceFrame(landmarks)
    coords = torch.arange(-40, 152, dtype=torch.float64)  # wider than the image: the chin may leave it
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    centre = frame.point(frame.eye_centre, 0.0, FACE_CENTRE_Y)
    u, v = frame.local(xs, ys, centre)
    d = frame.eye_distance
    inside = torch.hypot(u / (FACE_SEMI_X * d), v / (FACE_SEMI_Y * d)) <= 1
    return xs[inside], ys[inside], landmarks


_TEMPLATE_FACE = template_face_grid()


def row(params: dict, i: int) -> dict:
    return {key: (value[i] if value[i].dim() else float(value[i])) for key, value in params.items()}


class Occlusion(PerSampleDegradation):
    """Sunglasses, a face mask or a hand, placed from the landmarks."""

    severity_axes = ("coverage",)
    required_params = ("kind", "size", "aspect", "offset_x", "offset_y", "rotation", "anchor",
                       "wobble_amplitude", "wobble_phase", "colour")

    def __init__(self, kinds=("sunglasses", "mask", "hand"), probability: float = 0.5,
                 size=(0.85, 1.2)):
        kinds = list(kinds) if not isinstance(kinds, str) else [kinds]
        unknown = [k for k in kinds if k not in KINDS]
        if not kinds or unknown:
            raise ValueError(f"kinds must be a non-empty list of {sorted(KINDS)}, got {kinds!r}")
        if isinstance(probability, bool) or not isinstance(probability, (int, float)) or not 0 <= probability <= 1:
            raise ValueError(f"probability must be a number in [0, 1], got {probability!r}")
        self.size = check_range("size", size, 0.1, 5.0)
        self.kind_codes = torch.tensor([KINDS[k] for k in kinds], dtype=torch.int64)
        self.probability = float(probability)

    def sample_params(self, n, generator):
        check_count(n)
        # every draw is made for every sample, whatever its kind, so that one sample's
        # kind never shifts the random stream of the draws after it
        occluded = torch.rand(n, generator=generator, dtype=torch.float64) < self.probability
        choice = torch.randint(0, len(self.kind_codes), (n,), generator=generator)
        kind = torch.where(occluded, self.kind_codes[choice], torch.zeros_like(choice))
        size = uniform(n, generator, *self.size)
        aspect = uniform(n, generator, 0.85, 1.15)
        offset = uniform(2 * n, generator, -1.0, 1.0).reshape(n, 2)
        turn = uniform(n, generator, -1.0, 1.0)
        anchor = torch.randint(0, 5, (n,), generator=generator).to(torch.float64)
        wobble_amplitude = uniform(3 * n, generator, 0.0, 0.08).reshape(n, 3)
        wobble_phase = uniform(3 * n, generator, 0.0, 2 * math.pi).reshape(n, 3)
        palette = torch.rand(n, generator=generator, dtype=torch.float64)
        jitter = uniform(3 * n, generator, -1.0, 1.0).reshape(n, 3)
        grey = uniform(n, generator, 5.0, 45.0)

        is_hand = kind == KINDS["hand"]
        # a hand wanders over the face and turns freely; glasses and masks sit where they belong
        offset_scale = torch.where(is_hand, 0.35, 0.06)
        rotation = turn * torch.where(is_hand, 90.0, 8.0)
        colour = torch.where(
            (kind == KINDS["sunglasses"])[:, None], grey[:, None] + 6 * jitter,
            torch.where((kind == KINDS["mask"])[:, None],
                        MASK_COLOURS[(palette * len(MASK_COLOURS)).long().clamp(max=len(MASK_COLOURS) - 1)] + 8 * jitter,
                        SKIN_COLOURS[(palette * len(SKIN_COLOURS)).long().clamp(max=len(SKIN_COLOURS) - 1)] + 10 * jitter),
        ).clamp(0, 255)
        params = {
            "kind": kind.to(torch.float64), "size": size, "aspect": aspect,
            "offset_x": offset[:, 0] * offset_scale, "offset_y": offset[:, 1] * offset_scale,
            "rotation": rotation, "anchor": anchor,
            "wobble_amplitude": wobble_amplitude, "wobble_phase": wobble_phase, "colour": colour,
        }
        xs, ys, landmarks = _TEMPLATE_FACE
        params["coverage"] = torch.tensor(
            [float(occluder_alpha(int(kind[i]), row(params, i), landmarks, xs, ys).mean()) for i in range(n)],
            dtype=torch.float64)
        return params

    def apply_one(self, image, params, landmarks):
        kind = int(params["kind"])
        if kind == 0:
            return image.clone()
        anchor = float(params["anchor"])
        if anchor != int(anchor) or not 0 <= anchor <= 4:
            raise ValueError(f"params['anchor'] must be a landmark index 0..4, got {anchor}")
        height, width = image.shape[1:]
        ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                                indexing="ij")
        scalars = {key: (value if value.dim() else float(value)) for key, value in params.items()}
        alpha = occluder_alpha(kind, scalars, landmarks, xs, ys)
        colour = params["colour"].to(torch.float64)[:, None, None]
        return to_uint8(image.to(torch.float64) * (1 - alpha) + colour * alpha)


@hookimpl
def register_degradations(register):
    register("occlusion", Occlusion)
