"""The degradation contract and the chain that composes degradations.

A degradation separates random parameter sampling from a deterministic apply (the
kornia way): ``sample_params(n, generator)`` is pure given the generator and returns a
dict of tensors whose first dimension is n; ``apply(images, params, landmarks=None)``
is deterministic given the params, and a batch of N equals N single applications.

``severity_axes`` names the recorded scalar parameters where a larger value means a
worse sample; the spatial-domain (sd) score ranks every declared axis of every step,
so a third-party degradation feeds the annotation without touching the core.

The chain checks the contract where a plugin hands data back: every step's params
(``DegradationChain.sample``) and output (``DegradationChain.apply``: a uint8 tensor of
the input's shape) are checked and a PluginError names the step and its owner.
``DegradationChain.probe`` runs each step once on a tiny fixed batch before a build
writes anything and refuses a step that is not deterministic, whose output depends on
the batch, that writes into its input, or that declares no severity axis (the kit in
synfiqa.testing checks much more, but costs seconds, not milliseconds).

Input checks, for built-in and third-party degradations alike (the kit in synfiqa.testing
expects a degradation to refuse bad input with a TypeError or ValueError that names the
argument)::

    def sample_params(self, n, generator):
        n = check_count(n)                                   # a non-negative int
        ...

    def apply(self, images, params, landmarks=None):
        check_images(images)                                 # uint8 [N, 3, H, W]
        n, _, height, width = images.shape
        check_params(params, n, ("strength",))               # the keys apply reads, N rows each
        landmarks = check_landmarks(landmarks, n, height, width)   # float64 [N, 5, 2]; the template when None
        ...

``check_range`` reads a ``[low, high]`` parameter range from the config (in ``__init__``);
``template_landmarks`` gives the ArcFace template scaled to an image.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from synfiqa.errors import PluginError
from synfiqa.seeding import torch_generator

# the probe batch: small, fixed, and the same in every run
PROBE_IMAGES = 3
PROBE_SEED = 20240229


class Degradation:
    """Base class for degradation plugins (subclassing it is optional; the contract is the
    three members below)."""

    severity_axes: tuple[str, ...] = ()

    def sample_params(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def apply(self, images: torch.Tensor, params: dict[str, torch.Tensor],
              landmarks: torch.Tensor | None = None) -> torch.Tensor:
        """images: uint8 [N, 3, H, W]; landmarks: float [N, 5, 2] in image pixels, when the
        degradation needs to know where the face is. Returns uint8 [N, 3, H, W]."""
        raise NotImplementedError


__all__ = [
    "ChainStep", "Degradation", "DegradationChain", "check_count", "check_images", "check_landmarks", "check_params",
    "check_range", "scalar_record", "template_landmarks",
]


# ---------------------------------------------------------------- input checks (public)


def check_images(images: torch.Tensor, name: str = "images") -> None:
    """Refuse anything but a uint8 [N, 3, H, W] tensor (N may be 0): a TypeError for the
    wrong type or dtype, a ValueError for the wrong shape; the message names ``name``."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"{name} must be [N, 3, H, W], got shape {tuple(images.shape)}")
    if images.dtype != torch.uint8:
        raise TypeError(f"{name} must be uint8, got {images.dtype}")


def check_count(n) -> int:
    """``sample_params``' n: a non-negative int (not a bool), else a ValueError."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int (the number of samples), got {n!r}")
    return n


def check_range(name: str, value, minimum: float = -math.inf, maximum: float = math.inf) -> tuple[float, float]:
    """A [low, high] parameter range from the config: two finite numbers, low <= high,
    inside [minimum, maximum]. Returns (low, high) as floats; a ValueError naming ``name``
    otherwise."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise ValueError(f"{name} must be a range [low, high], got {value!r}")
    try:
        low, high = float(value[0]), float(value[1])
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a range of two numbers, got {value!r}") from None
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise ValueError(f"{name} must be [low, high] with low <= high, got {value!r}")
    if low < minimum or high > maximum:
        raise ValueError(f"{name} must lie inside [{minimum}, {maximum}], got {value!r}")
    return low, high


def check_params(params, n: int, required: Sequence[str]) -> None:
    """``apply``'s params: a dict holding every key in ``required``, each a tensor with n
    rows (the images' count), floating ones finite. A TypeError or ValueError naming the
    key otherwise."""
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict of tensors (from sample_params), got {type(params).__name__}")
    for key in required:
        if key not in params:
            raise ValueError(f"params is missing {key!r} (present: {sorted(params)}); "
                             f"pass what this degradation's sample_params returned")
        value = params[key]
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"params[{key!r}] must be a torch.Tensor, got {type(value).__name__}")
        if value.dim() == 0 or value.shape[0] != n:
            raise ValueError(f"params[{key!r}] has shape {tuple(value.shape)} but images has {n} samples; "
                             f"params and images must have the same length")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(f"params[{key!r}] contains NaN or infinity")


def template_landmarks(n: int, height: int, width: int) -> torch.Tensor:
    """The ArcFace 112 template scaled to the image: float64 [n, 5, 2] (left eye, right eye,
    nose, left and right mouth corner, in pixels)."""
    from synfiqa.align import ARCFACE_TEMPLATE_112

    template = torch.tensor(ARCFACE_TEMPLATE_112, dtype=torch.float64)
    template[:, 0] *= width / 112.0
    template[:, 1] *= height / 112.0
    return template.expand(n, 5, 2).clone()


def check_landmarks(landmarks, n: int, height: int, width: int) -> torch.Tensor:
    """``apply``'s landmarks: float64 [n, 5, 2] on the CPU, the given ones or, when None,
    the template (``template_landmarks``). A TypeError or ValueError naming landmarks for
    another shape, an integer dtype or NaN."""
    if landmarks is None:
        return template_landmarks(n, height, width)
    if not isinstance(landmarks, torch.Tensor):
        raise TypeError(f"landmarks must be a torch.Tensor [N, 5, 2] or None, got {type(landmarks).__name__}")
    if tuple(landmarks.shape) != (n, 5, 2):
        raise ValueError(f"landmarks must be [N, 5, 2] = [{n}, 5, 2] (left eye, right eye, nose, left and "
                         f"right mouth corner, in pixels), got shape {tuple(landmarks.shape)}")
    if not landmarks.is_floating_point():
        raise TypeError(f"landmarks must be floating point (pixels), got {landmarks.dtype}")
    landmarks = landmarks.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(landmarks).all()):
        raise ValueError("landmarks contain NaN or infinity")
    return landmarks


# ---------------------------------------------------------------- the chain


def scalar_record(params: dict[str, torch.Tensor], n: int) -> list[dict[str, float]]:
    """The per-sample scalar parameters: what the manifest records."""
    rows = [dict() for _ in range(n)]
    for key, value in params.items():
        if isinstance(value, torch.Tensor) and value.dim() == 1 and value.shape[0] == n:
            for i, item in enumerate(value.tolist()):
                rows[i][key] = float(item)
    return rows


def concat_params(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    if not parts:
        return {}
    return {key: torch.cat([part[key] for part in parts], dim=0) for key in parts[0]}


@dataclass
class ChainStep:
    name: str
    degradation: object
    owner: str = ""   # who provides it, for error messages: "plugin 'm' (dist 1.0)"

    def describe(self) -> str:
        return f"degradation {self.name!r}" + (f" of {self.owner}" if self.owner else "")


def probe_images(n: int = PROBE_IMAGES, height: int = 112, width: int = 112) -> torch.Tensor:
    """Fixed uint8 [n, 3, H, W] images with smooth shading, texture and edges (every kind
    of damage shows on them), the same on every machine and in every run."""
    generator = torch.Generator().manual_seed(PROBE_SEED)
    coarse = torch.rand(n, 3, 4, 4, generator=generator, dtype=torch.float32)
    shading = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    ys = torch.arange(height, dtype=torch.float32).view(1, 1, height, 1)
    xs = torch.arange(width, dtype=torch.float32).view(1, 1, 1, width)
    frequency = 0.3 + 0.4 * torch.rand(n, 1, 1, 1, generator=generator)
    texture = torch.sin(frequency * xs) * torch.cos(0.7 * frequency * ys)
    blocks = ((xs // 9 + ys // 13) % 2) * 2 - 1
    image = 0.55 * shading + 0.15 * texture + 0.1 * blocks + 0.2
    return (image.clamp(0, 1) * 220 + 16).round().to(torch.uint8)


def probe_landmarks(n: int = PROBE_IMAGES, height: int = 112, width: int = 112) -> torch.Tensor:
    """The ArcFace 112 template scaled to the image, float32 [n, 5, 2] as a build passes them."""
    from synfiqa.align import ARCFACE_TEMPLATE_112

    template = torch.tensor(ARCFACE_TEMPLATE_112, dtype=torch.float64)
    template[:, 0] *= width / 112.0
    template[:, 1] *= height / 112.0
    return template.to(torch.float32).expand(n, 5, 2).clone()


def check_params_of(step: ChainStep, params, n: int) -> dict[str, torch.Tensor]:
    """sample_params' result at the boundary: a dict of tensors whose first dimension is n."""
    if not isinstance(params, dict):
        raise PluginError(f"{step.describe()}: sample_params returned a {type(params).__name__}, "
                          f"not a dict of tensors")
    for key, value in params.items():
        if not isinstance(key, str):
            raise PluginError(f"{step.describe()}: sample_params returned a key {key!r} that is not a string")
        if not isinstance(value, torch.Tensor):
            raise PluginError(f"{step.describe()}: sample_params returned params[{key!r}] as a "
                              f"{type(value).__name__}, not a torch.Tensor")
        if value.dim() == 0 or value.shape[0] != n:
            raise PluginError(f"{step.describe()}: sample_params({n}) returned params[{key!r}] of shape "
                              f"{tuple(value.shape)}; its first dimension must be {n}, one row per sample")
    return params


def check_output_of(step: ChainStep, images: torch.Tensor, out) -> torch.Tensor:
    """apply's result at the boundary: a uint8 tensor of the input's [N, 3, H, W] shape,
    on the input's device."""
    if not isinstance(out, torch.Tensor):
        raise PluginError(f"{step.describe()}: apply returned a {type(out).__name__}, not a torch.Tensor; "
                          f"a degradation returns uint8 images [N, 3, H, W] like its input")
    if out.dtype != torch.uint8:
        raise PluginError(f"{step.describe()}: apply returned {str(out.dtype).removeprefix('torch.')} images; "
                          f"a degradation returns uint8 (0..255) [N, 3, H, W] like its input")
    if out.shape != images.shape:
        raise PluginError(f"{step.describe()}: apply returned shape {list(out.shape)} for input of shape "
                          f"{list(images.shape)}; a degradation keeps the batch size, the 3 channels and "
                          f"the image size")
    if out.device != images.device:
        raise PluginError(f"{step.describe()}: apply returned images on {out.device} for input on "
                          f"{images.device}")
    return out


def _rows(params: dict[str, torch.Tensor], index: int) -> dict[str, torch.Tensor]:
    return {key: value[index : index + 1] for key, value in params.items()}


class DegradationChain:
    """Applies named degradations in order. Each sample's parameters for step s are drawn
    from the generator seeded by (run seed, identity, sample index, "degrade/<s>")."""

    def __init__(self, steps: list[ChainStep]):
        names = [step.name for step in steps]
        if len(set(names)) != len(names):
            raise ValueError(f"a degradation appears twice in the chain: {names}")
        self.steps = steps

    @classmethod
    def from_config(cls, config: dict, registry) -> "DegradationChain":
        """The chain `degrade.chain` names, each step built with its `degrade.params`."""
        from synfiqa.config import component_params

        steps = []
        for name in config["degrade"]["chain"]:
            component = registry.get("degradation", name)
            steps.append(ChainStep(name, registry.create("degradation", name, **component_params(config, "degrade", name)),
                                   owner=f"plugin {component.plugin!r} ({component.distribution} {component.version})"))
        return cls(steps)

    @property
    def severity_axes(self) -> list[str]:
        return [f"{step.name}.{axis}" for step in self.steps for axis in step.degradation.severity_axes]

    def sample(self, run_seed: int, identity: str, indices: list[int]) -> list[dict[str, torch.Tensor]]:
        sampled = []
        for step in self.steps:
            per_sample = [self._sample_one(step, run_seed, identity, index) for index in indices]
            sampled.append(self._concat(step, per_sample))
        return sampled

    @staticmethod
    def _sample_one(step: ChainStep, run_seed: int, identity: str, index: int) -> dict[str, torch.Tensor]:
        generator = torch_generator(run_seed, identity, index, f"degrade/{step.name}")
        return check_params_of(step, step.degradation.sample_params(1, generator), 1)

    @staticmethod
    def _concat(step: ChainStep, per_sample: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        keys = [sorted(params) for params in per_sample]
        if any(k != keys[0] for k in keys):
            raise PluginError(f"{step.describe()}: sample_params returned different keys for different samples "
                              f"({keys[0]} and {next(k for k in keys if k != keys[0])})")
        try:
            return concat_params(per_sample)
        except RuntimeError as error:
            raise PluginError(f"{step.describe()}: the params of different samples do not stack "
                              f"({' '.join(str(error).split())})") from None

    def apply(self, images: torch.Tensor, sampled: list[dict[str, torch.Tensor]],
              landmarks: torch.Tensor | None = None) -> torch.Tensor:
        """Every step in order; each step's output is checked before the next step (or the
        caller) sees it, and a bad one raises a PluginError that names the step."""
        for step, params in zip(self.steps, sampled):
            images = self._apply_step(step, images, params, landmarks)
        return images

    @staticmethod
    def _apply_step(step: ChainStep, images: torch.Tensor, params: dict[str, torch.Tensor],
                    landmarks: torch.Tensor | None) -> torch.Tensor:
        try:
            out = step.degradation.apply(images, params, landmarks=landmarks)
        except Exception as error:
            error.add_note(f"raised by {step.describe()}")
            raise
        return check_output_of(step, images, out)

    def probe(self, image_size: int | tuple[int, int] = 112) -> None:
        """Run every step once on a tiny fixed batch (PROBE_IMAGES images, ArcFace-template
        landmarks) before a build writes anything, and raise a PluginError naming the first
        step that breaks the contract: no severity axis declared, params of the wrong form,
        sample_params not pure given its generator, output of the wrong type or shape,
        apply writing into its input, not deterministic, or a batch giving other results
        than its images one at a time. Milliseconds for the built-ins."""
        if not self.steps:
            return
        height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
        images = probe_images(PROBE_IMAGES, height, width)
        landmarks = probe_landmarks(PROBE_IMAGES, height, width)
        for step in self.steps:
            try:
                images = self._probe_step(step, images, landmarks)
            except PluginError:
                raise
            except Exception as error:
                raise PluginError(f"{step.describe()} failed on synfiqa's probe batch ({PROBE_IMAGES} images of "
                                  f"{width}x{height}): {' '.join(repr(error).split())}") from error

    def _probe_step(self, step: ChainStep, images: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
        axes = getattr(step.degradation, "severity_axes", None)
        if not isinstance(axes, (tuple, list)) or not all(isinstance(axis, str) and axis for axis in axes):
            raise PluginError(f"{step.describe()}: severity_axes must be a tuple of parameter names, got {axes!r}")
        if not axes:
            raise PluginError(f"{step.describe()} declares no severity axis; the sd score needs at least one "
                              f"(severity_axes: the recorded params where larger means worse)")
        n = len(images)
        per_sample = [self._sample_one(step, PROBE_SEED, "probe", index) for index in range(n)]
        again = self._sample_one(step, PROBE_SEED, "probe", 0)
        if again.keys() != per_sample[0].keys() or not all(torch.equal(again[k], per_sample[0][k]) for k in again):
            raise PluginError(f"{step.describe()}: sample_params is not pure: the same generator state gave "
                              f"different params (draw from the generator it is given, nothing else)")
        params = self._concat(step, per_sample)
        check_params_of(step, step.degradation.sample_params(n, torch.Generator().manual_seed(PROBE_SEED)), n)
        for axis in axes:
            value = params.get(axis)
            if value is None or not value.is_floating_point() or value.dim() != 1:
                raise PluginError(f"{step.describe()}: severity axis {axis!r} must be a 1-D float param "
                                  + ("(it is not among the params)" if value is None
                                     else f"(it is {str(value.dtype).removeprefix('torch.')} of shape "
                                          f"{list(value.shape)})"))
            if not bool(torch.isfinite(value).all()):
                raise PluginError(f"{step.describe()}: severity axis {axis!r} has NaN or infinity")
        before = images.clone()
        first = self._apply_step(step, images, params, landmarks)
        if not torch.equal(images, before):
            raise PluginError(f"{step.describe()}: apply writes into its input images; it must return new ones")
        second = self._apply_step(step, images, params, landmarks)
        if not torch.equal(first, second):
            raise PluginError(f"{step.describe()} is not deterministic: the same images and params gave different "
                              f"output (draw randomness in sample_params, or from a seed it records)")
        for index in range(n):
            single = self._apply_step(step, images[index : index + 1], _rows(params, index),
                                      landmarks[index : index + 1])
            if not torch.equal(single, first[index : index + 1]):
                raise PluginError(f"{step.describe()}: output depends on the batch: probe image {index} comes out "
                                  f"differently alone than in a batch of {n}")
        return first

    def records(self, sampled: list[dict[str, torch.Tensor]], n: int) -> list[dict[str, float]]:
        rows = [dict() for _ in range(n)]
        for step, params in zip(self.steps, sampled):
            for row, record in zip(rows, scalar_record(params, n)):
                row.update({f"{step.name}.{key}": value for key, value in record.items()})
        return rows
