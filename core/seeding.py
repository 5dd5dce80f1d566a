"""Every random draw of a build comes from a generator seeded by
(run seed, identity, sample index, stage), so any identity can be recomputed alone
and a resumed build equals an uninterrupted one."""
from __future__ import annotations

import hashlib

import numpy as np
import torch


def derive_seed(run_seed: int, identity: str, index: int, stage: str) -> int:
    digest = hashlib.blake2b(f"{run_seed}\x1f{identity}\x1f{index}\x1f{stage}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def torch_generator(run_seed: int, identity: str, index: int, stage: str) -> torch.Generator:
    generator = torch.Generator(device="cpu")
    generator.manual_seed(derive_seed(run_seed, identity, index, stage))
    return generator


def numpy_generator(run_seed: int, identity: str, index: int, stage: str) -> np.random.Generator:
    return np.random.default_rng(derive_seed(run_seed, identity, index, stage))
