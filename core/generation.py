"""The generator contract: a generator yields identities, each with one or more source
photos. Folder import lists them; generative models make them (``identities`` may
generate on the fly and must be deterministic in (n, seed))."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from synfiqa.images import read_rgb


@dataclass(frozen=True)
class SourceImage:
    key: str                       # stable name inside the identity, e.g. the file name
    path: Path | None = None
    array: np.ndarray | None = field(default=None, compare=False, repr=False)

    def load(self) -> np.ndarray:
        if self.array is not None:
            return self.array
        return read_rgb(self.path)


@dataclass(frozen=True)
class Identity:
    name: str
    images: tuple[SourceImage, ...]
    metadata: dict = field(default_factory=dict, compare=False)


def embedded_faces_dir() -> Path:
    """The licensed test photos that ship with synfiqa (the demo's default input)."""
    from importlib import resources

    packaged = Path(str(resources.files("synfiqa").joinpath("data/faces")))
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "tests" / "data" / "faces"
