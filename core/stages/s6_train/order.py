"""The order of the training data: which samples make the global batch of each step, which
of them are flipped, and which process gets which part. A pure function of (seed, epoch,
step), so a resumed run and a run over another number of processes see the same data.

Epoch e is a permutation of all N samples drawn from a generator seeded by (seed, e); the
global batch of step t is the slice [(t mod S) * G, (t mod S + 1) * G) of its epoch's
permutation, S = N // G steps per epoch (the remainder is dropped, as CR-FIQA's
DataLoader does with drop_last). Process r of W takes the r-th of W equal parts of it.
The flips are drawn per epoch and sample from the same generator (probability 1/2).
"""
from __future__ import annotations

import torch

from synfiqa.errors import ConfigError
from synfiqa.seeding import torch_generator


def steps_per_epoch(samples: int, global_batch: int) -> int:
    steps = samples // global_batch
    if steps < 1:
        raise ConfigError(f"the global batch ({global_batch} images: train.batch_size x processes) is larger than "
                          f"the dataset ({samples} images); lower train.batch_size")
    return steps


class EpochOrder:
    def __init__(self, samples: int, seed: int, flip: bool = True):
        self.samples = samples
        self.seed = seed
        self.flip = flip
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def epoch(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(permutation [N], flip [N] bool) of an epoch."""
        if epoch not in self._cache:
            generator = torch_generator(self.seed, "train-order", epoch, "epoch")
            permutation = torch.randperm(self.samples, generator=generator)
            flips = torch.randint(0, 2, (self.samples,), generator=generator).bool()
            if not self.flip:
                flips.zero_()
            self._cache = {epoch: (permutation, flips)}  # one epoch at a time is all a run needs
        return self._cache[epoch]

    def global_batch(self, step: int, global_batch: int, per_epoch: int) -> list[tuple[int, bool]]:
        epoch, position = divmod(step, per_epoch)
        permutation, flips = self.epoch(epoch)
        chosen = permutation[position * global_batch:(position + 1) * global_batch]
        return [(int(i), bool(flips[i])) for i in chosen]


class StepBatches(torch.utils.data.Sampler):
    """The batch sampler of one process: for each step from `start` to `end`, its part of
    the step's global batch, as (sample index, flip) keys of FaceDataset."""

    def __init__(self, order: EpochOrder, start: int, end: int, global_batch: int, per_epoch: int,
                 rank: int = 0, world_size: int = 1):
        self.order, self.start, self.end = order, start, end
        self.global_batch, self.per_epoch = global_batch, per_epoch
        self.rank, self.world_size = rank, world_size
        self.part = global_batch // world_size

    def __len__(self) -> int:
        return max(0, self.end - self.start)

    def __iter__(self):
        for step in range(self.start, self.end):
            batch = self.order.global_batch(step, self.global_batch, self.per_epoch)
            yield batch[self.rank * self.part:(self.rank + 1) * self.part]
