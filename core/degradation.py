"""The degradation contract and the chain that composes degradations.

A degradation separates random parameter sampling from a deterministic apply (the
kornia way): ``sample_params(n, generator)`` is pure given the generator and returns a
dict of tensors whose first dimension is n; ``apply(images, params, landmarks=None)``
is deterministic given the params, and a batch of N equals N single applications.

``severity_axes`` names the recorded scalar parameters where a larger value means a
worse sample; the spatial-domain (sd) score ranks every declared axis of every step,
so a third-party degradation feeds the annotation without touching the core.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from synfiqa.seeding import torch_generator


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


def check_images(images: torch.Tensor, name: str = "images") -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"{name} must be [N, 3, H, W], got shape {tuple(images.shape)}")
    if images.dtype != torch.uint8:
        raise TypeError(f"{name} must be uint8, got {images.dtype}")


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

        return cls([ChainStep(name, registry.create("degradation", name, **component_params(config, "degrade", name)))
                    for name in config["degrade"]["chain"]])

    @property
    def severity_axes(self) -> list[str]:
        return [f"{step.name}.{axis}" for step in self.steps for axis in step.degradation.severity_axes]

    def sample(self, run_seed: int, identity: str, indices: list[int]) -> list[dict[str, torch.Tensor]]:
        sampled = []
        for step in self.steps:
            per_sample = [
                step.degradation.sample_params(1, torch_generator(run_seed, identity, index, f"degrade/{step.name}"))
                for index in indices
            ]
            sampled.append(concat_params(per_sample))
        return sampled

    def apply(self, images: torch.Tensor, sampled: list[dict[str, torch.Tensor]],
              landmarks: torch.Tensor | None = None) -> torch.Tensor:
        for step, params in zip(self.steps, sampled):
            images = step.degradation.apply(images, params, landmarks=landmarks)
        return images

    def records(self, sampled: list[dict[str, torch.Tensor]], n: int) -> list[dict[str, float]]:
        rows = [dict() for _ in range(n)]
        for step, params in zip(self.steps, sampled):
            for row, record in zip(rows, scalar_record(params, n)):
                row.update({f"{step.name}.{key}": value for key, value in record.items()})
        return rows
