"""The one progress bar of every stage: tqdm on stderr, by default only when stderr is a
terminal (logs and pipes stay clean), and a silent stand-in otherwise."""
from __future__ import annotations

import sys


class _Silent:
    def __init__(self, iterable=None):
        self.iterable = iterable

    def __iter__(self):
        return iter(self.iterable if self.iterable is not None else ())

    def update(self, _=1):
        pass

    def close(self):
        pass


def progress(iterable=None, *, total: int | None = None, enabled: bool | None = None,
             description: str = "", unit: str = "it"):
    """A bar over `iterable` (iterate it) or up to `total` (call `.update(n)`, then `.close()`)."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return _Silent(iterable)
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=description, unit=unit, file=sys.stderr)
