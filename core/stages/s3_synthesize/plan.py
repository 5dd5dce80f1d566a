"""Stage 3: the per-identity generation plan (R references and D degraded samples), each a
:class:`Spec` of pose, expression, light, framing and text prompt drawn from a bank.

``plan_identity`` is a pure function; a build calls it per identity (stage2.bank,
stage2.faithful) and hands the plan to the Stage-2 backend (synfiqa.stages.s3_synthesize).
The conventions and distributions below are repeated, with a plot, in ``docs/plan.md``.

Banks
-----
* :class:`DecaBank` reads MR-FIQA's ``DICT_DECA_DEG_REF.json``. Its layout, as the original
  ``Stage-2/sampling_annotation.py`` reads it (``json.load``, then
  ``DICT["REF"|"DEG"][token]["deca"][key]`` passed straight to ``torch.tensor`` and into
  ``deca.decode``)::

      {"REF": {"<token>": {"deca": {"pose": [[6 floats]], "light": [[[r,g,b] x 9]],
                                    "exp": [[50 floats]], "tform": [[[3] x 3]],
                                    "cam": [[3 floats]]}, ...}, ...},
       "DEG": {...same...}}

  Every array keeps DECA's leading batch axis of 1 (``pose (1,6)``, ``light (1,9,3)``,
  ``exp (1,50)``, ``tform (1,3,3)``, ``cam (1,3)``), since ``deca.decode`` receives them as is.
  The tokens are opaque strings; other keys beside ``"deca"`` in an entry are ignored.
  The reader is strict: a missing key, a wrong shape or a non-finite number raises
  :class:`~synfiqa.errors.DataFileError` naming the file, the entry and the key.
  Entries are ordered as the original orders them: ``sorted(keys)``.
  References take the REF entries in that order (cycled when more references are asked for
  than there are entries). Degraded samples take a seeded permutation of the DEG entries
  (the generator of (run seed, identity, 0, "plan")), its first D: without replacement when
  D <= len(DEG), as the original's ``random.sample(DEG, 100)``; beyond that, further
  permutations from the same generator are appended. A prefix of the permutation does not
  depend on D, so degraded sample k is the same whatever D is.
* :class:`SyntheticBank`, for users without the file (distributions below).

Conventions
-----------
* **Axes**: FLAME/DECA world axes: +x to the image's right (the subject's left), +y up,
  +z from the face towards the camera. DECA's orthographic camera keeps x and flips y for
  the image.
* **Euler angles** (degrees): the global axis-angle (DECA ``pose[:3]``) is turned into a
  matrix by Rodrigues' formula and decomposed as ``R = Rz(roll) @ Ry(yaw) @ Rx(pitch)``
  (Z-Y-X, the decomposition whose y angle is DECA's ``rot_mat_to_euler``:
  ``yaw = atan2(-R[2,0], sqrt(R[0,0]^2 + R[1,0]^2))``), ``pitch = atan2(R[2,1], R[2,2])``,
  ``roll = atan2(R[1,0], R[0,0])``.
  Signs: **positive yaw** (right-handed about +y) turns the nose towards +x, the image's
  right (the subject's own left); an axis-angle of (0, +30 deg, 0) gives yaw = +30.
  Positive pitch (about +x) turns the nose down; positive roll (about +z) turns +x towards +y,
  counter-clockwise as seen from the camera.
* **Jaw**: the magnitude of DECA's jaw axis-angle (``pose[3:]``), in degrees (the opening;
  the synthetic bank opens about +x).
* **Expression**: DECA's 50 FLAME expression coefficients; zeros are neutral.
* **Light**: DECA's ``light (9, 3)`` SH coefficients, basis order
  ``[1, x, y, z, xy, xz, yz, x^2-y^2, 3z^2-1]`` times DECA's constants ``c_k``
  (``c_0 = 1/sqrt(4 pi)``, ``c_1..3 = (2 pi/3) sqrt(3/(4 pi))``); shading of a normal n is
  ``sum_k c_k B_k(n) L_k``.
* **Framing** (scale, offset_x, offset_y): the face's size relative to the canonical framing
  (1 = the references' size), and where the FLAME origin lands in the crop, in half-widths of
  the crop, +x right, +y down. From DECA's ``cam = (s, tx, ty)``
  (``u = s (x + tx)``, ``v = -s (y + ty)``): scale = s / mean(s over the REF entries),
  offset = (s tx, -s ty). The 512-frame placement (``tform``) stays in :attr:`Spec.code`.

Synthetic bank distributions (every angle in degrees)
-----------------------------------------------------
References (deterministic, the same for every identity, as the original's REF entries):
reference i has ``yaw = 4 (2 frac(0.5 + i g1) - 1)``, ``pitch = 3 (2 frac(0.5 + i g2) - 1)``
with ``g1 = 0.6180339887``, ``g2 = 0.7548776662`` (a low-discrepancy spread; reference 0 is
exactly frontal), roll 0, jaw 0, neutral expression, ambient light (only
``L_0 = 1 / c_0`` in every colour, so the shading is 1 everywhere), scale 1, offsets 0.

Degraded sample k: drawn from the generator seeded by (run seed, identity, k, "plan/deg"), so
it does not depend on the other samples, in this order:

* ``yaw = clip(Laplace(0, b = 25), -90, 90)``: heavy-tailed, median |yaw| = 25 ln 2 = 17.3,
  P(|yaw| > 60) = exp(-60/25) = 9.1 %, 2.7 % clipped at +-90;
* ``pitch = clip(Normal(0, 10), -40, 40)``, ``roll = clip(Normal(0, 8), -30, 30)``;
* ``jaw = min(|Normal(0, 8)|, 30)`` about +x;
* expression: intensity ``a ~ U(0, 1)``, ``exp_j = a z_j 1.5 / sqrt(1 + j)``, ``z_j ~ N(0, 1)``
  (j = 0..49; the leading FLAME components vary most);
* light, grey: energy ``e ~ U(0.1, 1.2)`` (dim below about 0.4), directional fraction
  ``f ~ U(0, 0.9)``, direction ``d`` uniform on the sphere; ``L_0 = e / c_0``,
  ``(L_1, L_2, L_3) = e f d / c_1``, higher orders 0, so the shading is ``e (1 + f n.d)``:
  from ``e (1 - f)`` on the side away from the light to ``e (1 + f)`` facing it;
* framing: ``scale ~ U(0.6, 1.2)``, ``offset_x, offset_y ~ U(-0.1, 0.1)``.

Prompts
-------
References get :data:`REFERENCE_PROMPT`; degraded sample k gets
``"a photo of a human face {scene}"`` with the scene drawn uniformly from :data:`SCENES` by the
generator of (run seed, identity, k, "plan/prompt"); :data:`NEGATIVE_PROMPT` is the
unconditional text of every sample. ``faithful=True`` reproduces the original's prompt bug:
it builds ``D`` reference prompts + ``D`` scene prompts and indexes that list with the global
sample number ``g = 0..R+D-1`` (references 0..R-1, then degraded k at ``R + k``), so only
degraded samples with ``R + k >= D`` get a scene prompt, the one at list position ``R + k - D``
(drawn with that position's generator); R > D is refused, as the original would break on it.
For R = 10, D = 100: references and degraded 0..89 get the reference prompt, 90..99 scenes.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from synfiqa.errors import DataFileError
from synfiqa.seeding import torch_generator

REFERENCE_PROMPT = ("a high-resolution clear frontal face image with natural expression under good "
                    "lighting condition without any occlusion")
DEGRADED_TEMPLATE = "a photo of a human face {scene}"
NEGATIVE_PROMPT = ("deformed iris, deformed pupils, semi-realistic, cgi, 3d, render, sketch, cartoon, "
                   "drawing, anime")
SCENES: tuple[str, ...] = (
    "",
    "at the bus stop", "on a crowded platform", "in a parking garage", "in a stairwell",
    "in a supermarket aisle", "in a waiting room", "on a balcony", "in a workshop",
    "in a greenhouse", "in a laundromat", "in a subway car", "in a lecture hall",
    "on a rooftop", "in a museum", "at the harbour", "on a country road", "in a tent",
    "in a warehouse", "at a festival", "in a corridor at night",
    "in heavy rain", "in a snowstorm", "in thick fog", "in a sandstorm", "on a windy day",
    "in harsh midday sun", "at dusk", "by candlelight", "under a street lamp",
    "under neon lights", "in backlight", "in deep shade", "lit by a phone screen",
    "in a dim room",
    "wearing glasses", "wearing sunglasses", "with occluded mask", "wearing a scarf over the chin",
    "wearing a cap", "with a hand near the face",
)

ROLES = ("reference", "degraded")
EXPRESSION_SIZE = 50
DECA_SHAPES = {"pose": (1, 6), "light": (1, 9, 3), "exp": (1, 50), "tform": (1, 3, 3), "cam": (1, 3)}

SH_C0 = 1 / math.sqrt(4 * math.pi)
SH_C1 = (2 * math.pi / 3) * math.sqrt(3 / (4 * math.pi))
SH_C2 = (math.pi / 4) * (1 / 2) * math.sqrt(5 / (4 * math.pi))  # constant of 3z^2 - 1

SYNTH_YAW_SCALE = 25.0  # Laplace b; median |yaw| = b ln 2
SYNTH_YAW_MEDIAN_ABS = SYNTH_YAW_SCALE * math.log(2.0)
SYNTH_YAW_LIMIT = 90.0
SYNTH_PITCH_SD, SYNTH_PITCH_LIMIT = 10.0, 40.0
SYNTH_ROLL_SD, SYNTH_ROLL_LIMIT = 8.0, 30.0
SYNTH_JAW_SD, SYNTH_JAW_LIMIT = 8.0, 30.0
SYNTH_EXP_SCALE = 1.5
SYNTH_ENERGY = (0.1, 1.2)
SYNTH_DIRECTIONAL = (0.0, 0.9)
SYNTH_SCALE = (0.6, 1.2)
SYNTH_OFFSET = 0.1
REF_YAW_SPAN, REF_PITCH_SPAN = 4.0, 3.0
_G1, _G2 = 0.6180339887498949, 0.7548776662466927


# --------------------------------------------------------------------------- rotations
def axis_angle_to_matrix(axis_angle: Sequence[float]) -> np.ndarray:
    """Rodrigues: (3,) axis-angle in radians -> (3, 3) rotation (the identity for zero)."""
    v = np.asarray(axis_angle, dtype=np.float64)
    theta = float(np.linalg.norm(v))
    if theta < 1e-12:
        return np.eye(3)
    k = v / theta
    kx = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + math.sin(theta) * kx + (1 - math.cos(theta)) * (kx @ kx)


def matrix_to_euler(rotation: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees of ``R = Rz(roll) Ry(yaw) Rx(pitch)`` (see the module doc)."""
    r = np.asarray(rotation, dtype=np.float64)
    yaw = math.atan2(-r[2, 0], math.hypot(r[0, 0], r[1, 0]))
    pitch = math.atan2(r[2, 1], r[2, 2])
    roll = math.atan2(r[1, 0], r[0, 0])
    return math.degrees(yaw), math.degrees(pitch), math.degrees(roll)


def euler_to_matrix(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """``Rz(roll) @ Ry(yaw) @ Rx(pitch)``, angles in degrees."""
    y, p, r = (math.radians(a) for a in (yaw, pitch, roll))
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    return rz @ ry @ rx


def matrix_to_axis_angle(rotation: np.ndarray) -> tuple[float, float, float]:
    """The inverse of :func:`axis_angle_to_matrix` (angle in [0, pi], radians)."""
    r = np.asarray(rotation, dtype=np.float64)
    cos = max(-1.0, min(1.0, (np.trace(r) - 1) / 2))
    theta = math.acos(cos)
    if theta < 1e-12:
        return (0.0, 0.0, 0.0)
    if math.pi - theta < 1e-6:  # near pi: the axis from the symmetric part
        b = (r + np.eye(3)) / 2
        axis = np.sqrt(np.clip(np.diag(b), 0, None))
        i = int(np.argmax(axis))
        axis = b[i] / axis[i]
        axis = axis / np.linalg.norm(axis)
    else:
        axis = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]]) / (2 * math.sin(theta))
    return tuple(float(a) for a in axis * theta)


# --------------------------------------------------------------------------- the spec
@dataclass(frozen=True)
class Spec:
    """The conditioning of one generated sample. Angles in degrees (conventions in the module doc).

    ``pose`` = (yaw, pitch, roll, jaw); ``expression`` = 50 FLAME coefficients; ``light`` =
    9 x 3 SH coefficients; ``framing`` = (scale, offset_x, offset_y); ``scene`` is the scene of
    a scene prompt (possibly ""), None for the reference prompt; ``source`` names the bank
    entry ("REF/<token>", "DEG/<token>", "synthetic/ref/<i>", "synthetic/deg/<k>");
    ``code`` holds a DECA bank entry's own arrays (pose, light, exp, tform, cam as nested
    tuples) for a backend that swaps them in verbatim, None for synthetic specs."""

    role: str
    index: int
    pose: tuple[float, float, float, float]
    expression: tuple[float, ...]
    light: tuple[tuple[float, float, float], ...]
    framing: tuple[float, float, float]
    prompt: str = ""
    source: str = ""
    scene: str | None = None
    negative_prompt: str = NEGATIVE_PROMPT
    code: Mapping[str, Any] | None = field(default=None, repr=False, hash=False)

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"Spec role must be one of {ROLES}, not {self.role!r}")
        if len(self.pose) != 4 or len(self.framing) != 3:
            raise ValueError("Spec pose is (yaw, pitch, roll, jaw) and framing (scale, offset_x, offset_y)")
        if len(self.expression) != EXPRESSION_SIZE:
            raise ValueError(f"Spec expression has {len(self.expression)} coefficients, not {EXPRESSION_SIZE}")
        if len(self.light) != 9 or any(len(c) != 3 for c in self.light):
            raise ValueError("Spec light is 9 x 3 SH coefficients")

    @property
    def yaw(self) -> float:
        return self.pose[0]

    @property
    def pitch(self) -> float:
        return self.pose[1]

    @property
    def roll(self) -> float:
        return self.pose[2]

    @property
    def jaw(self) -> float:
        return self.pose[3]

    def global_axis_angle(self) -> tuple[float, float, float]:
        """DECA ``pose[:3]`` (radians) of this yaw, pitch and roll."""
        return matrix_to_axis_angle(euler_to_matrix(self.yaw, self.pitch, self.roll))

    def light_summary(self) -> dict[str, float]:
        """Scalars of the SH light, over the mean of the three colours: ``ambient`` = L_0,
        ``directional`` = |(L_1, L_2, L_3)|, ``energy`` = the L2 norm of all nine,
        ``frontal`` = the shading of the normal (0, 0, 1) facing the camera
        (``c_0 L_0 + c_1 L_3 + 2 c_8 L_8``), ``direction_x/y/z`` = the unit first-order
        direction in world axes (zeros when there is none)."""
        sh = np.asarray(self.light, dtype=np.float64).mean(axis=1)
        first = sh[1:4]
        norm = float(np.linalg.norm(first))
        direction = first / norm if norm > 1e-12 else np.zeros(3)
        return {
            "ambient": float(sh[0]),
            "directional": norm,
            "energy": float(np.linalg.norm(sh)),
            "frontal": float(SH_C0 * sh[0] + SH_C1 * sh[3] + 2 * SH_C2 * sh[8]),
            "direction_x": float(direction[0]),
            "direction_y": float(direction[1]),
            "direction_z": float(direction[2]),
        }

    def to_record(self) -> dict[str, float | str]:
        """The manifest's flat ``control.*`` columns: floats and strings only."""
        light = self.light_summary()
        record: dict[str, float | str] = {
            "control.yaw": float(self.yaw),
            "control.pitch": float(self.pitch),
            "control.roll": float(self.roll),
            "control.jaw": float(self.jaw),
            "control.expression_norm": float(np.linalg.norm(np.asarray(self.expression, dtype=np.float64))),
            "control.scale": float(self.framing[0]),
            "control.offset_x": float(self.framing[1]),
            "control.offset_y": float(self.framing[2]),
        }
        record.update({f"control.light_{name}": value for name, value in light.items()})
        record["control.prompt"] = self.prompt
        record["control.scene"] = self.scene if self.scene is not None else ""
        record["control.source"] = self.source
        return record


# --------------------------------------------------------------------------- banks
@runtime_checkable
class Bank(Protocol):
    """Where the specs come from. Prompts, roles' indices and seeds are set by
    :func:`plan_identity`; a bank returns specs with an empty prompt."""

    name: str

    def reference_specs(self, n: int) -> list[Spec]:
        """References 0..n-1 (the same for every identity)."""
        ...

    def degraded_specs(self, n: int, run_seed: int, identity: str) -> list[Spec]:
        """Degraded samples 0..n-1 of the identity; sample k must not depend on n."""
        ...


def _ambient_light(level: float = 1.0) -> tuple[tuple[float, float, float], ...]:
    dc = level / SH_C0
    return ((dc, dc, dc),) + ((0.0, 0.0, 0.0),) * 8


def _frac(x: float) -> float:
    return x - math.floor(x)


class SyntheticBank:
    """The built-in bank: near-frontal references, heavy-tailed degraded samples (module doc)."""

    name = "synthetic"

    def reference_specs(self, n: int) -> list[Spec]:
        specs = []
        for i in range(_count(n)):
            yaw = REF_YAW_SPAN * (2 * _frac(0.5 + i * _G1) - 1)
            pitch = REF_PITCH_SPAN * (2 * _frac(0.5 + i * _G2) - 1)
            specs.append(Spec(role="reference", index=i, pose=(yaw, pitch, 0.0, 0.0),
                              expression=(0.0,) * EXPRESSION_SIZE, light=_ambient_light(),
                              framing=(1.0, 0.0, 0.0), source=f"synthetic/ref/{i}"))
        return specs

    def degraded_specs(self, n: int, run_seed: int, identity: str) -> list[Spec]:
        return [self.degraded_spec(k, run_seed, identity) for k in range(_count(n))]

    @staticmethod
    def degraded_spec(k: int, run_seed: int, identity: str) -> Spec:
        g = torch_generator(run_seed, identity, k, "plan/deg")

        def uniform(lo: float, hi: float, size: int = 1) -> np.ndarray:
            return lo + (hi - lo) * torch.rand(size, generator=g, dtype=torch.float64).numpy()

        def normal(size: int = 1) -> np.ndarray:
            return torch.randn(size, generator=g, dtype=torch.float64).numpy()

        u = float(uniform(-0.5, 0.5)[0])
        laplace = -SYNTH_YAW_SCALE * math.copysign(1.0, u) * math.log(max(1.0 - 2.0 * abs(u), 1e-300))
        yaw = float(np.clip(laplace, -SYNTH_YAW_LIMIT, SYNTH_YAW_LIMIT))
        pitch = float(np.clip(SYNTH_PITCH_SD * normal()[0], -SYNTH_PITCH_LIMIT, SYNTH_PITCH_LIMIT))
        roll = float(np.clip(SYNTH_ROLL_SD * normal()[0], -SYNTH_ROLL_LIMIT, SYNTH_ROLL_LIMIT))
        jaw = float(min(abs(SYNTH_JAW_SD * normal()[0]), SYNTH_JAW_LIMIT))
        intensity = float(uniform(0.0, 1.0)[0])
        falloff = SYNTH_EXP_SCALE / np.sqrt(1.0 + np.arange(EXPRESSION_SIZE))
        expression = intensity * normal(EXPRESSION_SIZE) * falloff
        energy = float(uniform(*SYNTH_ENERGY)[0])
        directional = float(uniform(*SYNTH_DIRECTIONAL)[0])
        d = normal(3)
        d = d / max(float(np.linalg.norm(d)), 1e-12)
        first = energy * directional * d / SH_C1
        dc = energy / SH_C0
        light = ((dc, dc, dc),) + tuple((float(c),) * 3 for c in first) + ((0.0, 0.0, 0.0),) * 5
        scale = float(uniform(*SYNTH_SCALE)[0])
        ox, oy = (float(v) for v in uniform(-SYNTH_OFFSET, SYNTH_OFFSET, 2))
        return Spec(role="degraded", index=k, pose=(yaw, pitch, roll, jaw),
                    expression=tuple(float(v) for v in expression), light=light,
                    framing=(scale, ox, oy), source=f"synthetic/deg/{k}")


class DecaBank:
    """MR-FIQA's ``DICT_DECA_DEG_REF.json`` (layout in the module doc), read strictly."""

    name = "deca"

    def __init__(self, ref: Sequence[tuple[str, Mapping]], deg: Sequence[tuple[str, Mapping]],
                 origin: str = "<bank>"):
        if not ref:
            raise DataFileError(f"{origin}: the bank has no REF entry")
        if not deg:
            raise DataFileError(f"{origin}: the bank has no DEG entry")
        self.origin = origin
        self.ref = [(token, _check_entry(origin, "REF", token, entry)) for token, entry in ref]
        self.deg = [(token, _check_entry(origin, "DEG", token, entry)) for token, entry in deg]
        scales = [code["cam"][0][0] for _, code in self.ref]
        self.reference_cam_scale = float(np.mean(scales))
        if not self.reference_cam_scale > 0:
            raise DataFileError(f"{origin}: the REF entries' mean cam scale is {self.reference_cam_scale}, not > 0")

    @classmethod
    def from_json(cls, path: str | Path) -> "DecaBank":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataFileError(f"{path}: not a readable JSON bank ({exc})") from None
        return cls.from_dict(data, origin=str(path))

    @classmethod
    def from_dict(cls, data: Any, origin: str = "<bank>") -> "DecaBank":
        if not isinstance(data, dict):
            raise DataFileError(f"{origin}: the bank must be an object with REF and DEG, not {type(data).__name__}")
        parts = {}
        for part in ("REF", "DEG"):
            entries = data.get(part)
            if not isinstance(entries, dict):
                raise DataFileError(f"{origin}: {part} is missing or not an object of entries")
            parts[part] = [(token, entries[token]) for token in sorted(entries)]
        return cls(parts["REF"], parts["DEG"], origin=origin)

    def __len__(self) -> int:
        return len(self.ref) + len(self.deg)

    def _spec(self, role: str, index: int, part: str, token: str, code: Mapping) -> Spec:
        pose = code["pose"][0]
        yaw, pitch, roll = matrix_to_euler(axis_angle_to_matrix(pose[:3]))
        jaw = math.degrees(float(np.linalg.norm(np.asarray(pose[3:], dtype=np.float64))))
        s, tx, ty = code["cam"][0]
        return Spec(role=role, index=index, pose=(yaw, pitch, roll, jaw),
                    expression=tuple(code["exp"][0]), light=tuple(code["light"][0]),
                    framing=(s / self.reference_cam_scale, s * tx, -s * ty),
                    source=f"{part}/{token}", code=code)

    def reference_specs(self, n: int) -> list[Spec]:
        return [self._spec("reference", i, "REF", *self.ref[i % len(self.ref)]) for i in range(_count(n))]

    def degraded_specs(self, n: int, run_seed: int, identity: str) -> list[Spec]:
        n = _count(n)
        g = torch_generator(run_seed, identity, 0, "plan")
        order: list[int] = []
        while len(order) < n:
            order.extend(torch.randperm(len(self.deg), generator=g).tolist())
        return [self._spec("degraded", k, "DEG", *self.deg[order[k]]) for k in range(n)]


def _count(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"a number of samples must be an int >= 0, not {n!r}")
    return n


def _nested(origin: str, where: str, value: Any, shape: tuple[int, ...]) -> tuple:
    if not shape:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise DataFileError(f"{origin}: {where}: {value!r} is not a finite number")
        return float(value)
    if not isinstance(value, list) or len(value) != shape[0]:
        got = f"length {len(value)}" if isinstance(value, list) else type(value).__name__
        raise DataFileError(f"{origin}: {where}: expected shape {shape}, found {got}")
    return tuple(_nested(origin, where, v, shape[1:]) for v in value)


def _check_entry(origin: str, part: str, token: str, entry: Any) -> Mapping[str, Any]:
    name = f"{part} entry {token!r}"
    if not isinstance(entry, dict) or not isinstance(entry.get("deca"), dict):
        raise DataFileError(f"{origin}: {name} has no 'deca' object")
    deca = entry["deca"]
    code = {}
    for key, shape in DECA_SHAPES.items():
        if key not in deca:
            raise DataFileError(f"{origin}: {name} lacks key {key!r}")
        code[key] = _nested(origin, f"{name} key {key!r} {shape}", deca[key], shape)
    return MappingProxyType(code)


# --------------------------------------------------------------------------- the plan
def _scene(run_seed: int, identity: str, position: int) -> str:
    g = torch_generator(run_seed, identity, position, "plan/prompt")
    return SCENES[int(torch.randint(len(SCENES), (1,), generator=g).item())]


def plan_identity(identity: str, run_seed: int, references: int, degraded: int, bank: Bank,
                  faithful: bool = False) -> list[Spec]:
    """The identity's specs: references 0..R-1 then degraded 0..D-1, with their prompts.

    Degraded sample k depends only on (run seed, identity, k) and the bank, not on D (for a
    :class:`DecaBank`, on the identity's permutation of DEG, of which it takes entry k).
    ``faithful=True`` gives the original's prompts, bug included (module doc)."""
    references, degraded = _count(references), _count(degraded)
    if faithful and references > degraded:
        raise ValueError(f"faithful prompts need references <= degraded (the original indexes "
                         f"{degraded} + {degraded} prompts with {references + degraded} samples)")
    refs = bank.reference_specs(references)
    degs = bank.degraded_specs(degraded, run_seed, identity)
    if len(refs) != references or len(degs) != degraded:
        raise ValueError(f"bank {getattr(bank, 'name', bank)!r} returned {len(refs)} references and "
                         f"{len(degs)} degraded specs for {references} and {degraded}")
    plan = [replace(spec, role="reference", index=i, prompt=REFERENCE_PROMPT, scene=None)
            for i, spec in enumerate(refs)]
    for k, spec in enumerate(degs):
        position = references + k - degraded if faithful else k
        if position < 0:
            plan.append(replace(spec, role="degraded", index=k, prompt=REFERENCE_PROMPT, scene=None))
        else:
            scene = _scene(run_seed, identity, position)
            plan.append(replace(spec, role="degraded", index=k,
                                prompt=DEGRADED_TEMPLATE.format(scene=scene), scene=scene))
    return plan
