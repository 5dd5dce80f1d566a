"""Where a run's time goes: wall and CPU seconds per stage, for the end-of-build table.

    timer = StageTimer()
    with timer("detect"):
        ...
    timer.lines()   # one line per stage, in the order the stages first ran

CPU time is the process's (every thread), so a stage that keeps both cores busy shows CPU
time near twice its wall time. The times are printed, never written into the dataset: a
build's files stay byte-identical from run to run.
"""
from __future__ import annotations

import time
from contextlib import contextmanager


class StageTimer:
    def __init__(self):
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    @contextmanager
    def __call__(self, stage: str):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - wall, time.process_time() - cpu)

    def add(self, stage: str, wall: float, cpu: float, calls: int = 1) -> None:
        self.wall[stage] = self.wall.get(stage, 0.0) + wall
        self.cpu[stage] = self.cpu.get(stage, 0.0) + cpu
        self.calls[stage] = self.calls.get(stage, 0) + calls

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {stage: {"wall_s": self.wall[stage], "cpu_s": self.cpu[stage], "calls": self.calls[stage]}
                for stage in self.wall}

    def lines(self, total_wall: float | None = None) -> list[str]:
        """The table: stage, wall seconds, share of the total, CPU seconds."""
        total = total_wall if total_wall is not None else sum(self.wall.values())
        lines = [f"  {'stage':<12} {'wall s':>9} {'share':>6} {'cpu s':>9}"]
        for stage in self.wall:
            share = self.wall[stage] / total if total > 0 else 0.0
            lines.append(f"  {stage:<12} {self.wall[stage]:>9.2f} {share:>6.1%} {self.cpu[stage]:>9.2f}")
        rest = total - sum(self.wall.values())
        if total_wall is not None and rest > 0.005 * total:   # listing, filters, the progress bar, ...
            lines.append(f"  {'other':<12} {rest:>9.2f} {rest / total:>6.1%} {'':>9}")
        return lines


class NoTimer(StageTimer):
    """A timer that measures nothing (callers that do not report times)."""

    @contextmanager
    def __call__(self, stage: str):
        yield
