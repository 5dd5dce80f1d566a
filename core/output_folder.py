"""A resumable output folder of a stage command (`synfiqa generate`, `synfiqa degrade`):
a marker file describing the run that owns the folder, and an append-only JSONL manifest
whose rows are written after the files they name, so a killed run leaves only finished
work behind and a rerun with the same description carries on from it."""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np

from synfiqa.errors import OutputConflictError
from synfiqa.images import write_text_atomic


def png_bytes(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def claim(out: Path, marker: str, description: dict, what: str) -> bool:
    """Make OUT ours; True when it holds an earlier run with the same description (resume).
    A folder holding another run, or foreign files, is refused."""
    path = out / marker
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous != description:
            raise OutputConflictError(f"{out} holds {what} made with other settings ({previous}); choose another --out")
        return True
    if out.exists() and any(out.iterdir()):
        raise OutputConflictError(f"{out} is not empty and holds no synfiqa {what}; choose an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(description, sort_keys=True, indent=1) + "\n")
    return False


def read_rows(path: Path, key: str = "path") -> dict[str, dict]:
    """Manifest rows by `key`; a torn last line (a killed run) is ignored."""
    rows = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            rows[row[key]] = row
    return rows


def append_rows(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    torn = path.is_file() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
    with open(path, "a") as handle:
        if torn:  # a killed run's half line stays alone on its line, unreadable, instead of eating the next row
            handle.write("\n")
        for row in rows:
            handle.write(json.dumps(row, sort_keys=True) + "\n")
        handle.flush()


class _NoBar:
    def update(self, _):
        pass

    def close(self):
        pass


def progress_bar(total: int, enabled: bool | None, description: str, unit: str = "img"):
    """A tqdm bar on stderr, by default only when stderr is a terminal."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit=unit, file=sys.stderr)
