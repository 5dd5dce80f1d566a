"""Identities from a folder: one sub-folder per identity, or image files grouped by name."""
from __future__ import annotations

import re
from pathlib import Path

from synfiqa import hookimpl
from synfiqa.errors import BadInputError, ConfigError
from synfiqa.generation import Identity, SourceImage, embedded_faces_dir
from synfiqa.images import is_image_path

_INDEX_SUFFIX = re.compile(r"^(?P<stem>.+?)[_-]\d+$")
GROUPINGS = ("auto", "subfolder", "stem-suffix", "file")


class FolderGenerator:
    """Identities from a folder tree (one sub-folder each) or from files (one image each, or
    grouped by a trailing _N / -N in the file name)."""

    def __init__(self, path: str = "", grouping: str = "auto"):
        if grouping not in GROUPINGS:
            raise ConfigError(f"folder generator: grouping must be one of {GROUPINGS}, got {grouping!r}")
        self.path = Path(path).expanduser() if path else embedded_faces_dir()
        self.grouping = grouping
        self.skipped_files: list[str] = []

    def identities(self, limit: int | None = None, seed: int = 0) -> list[Identity]:
        if not self.path.is_dir():
            raise ConfigError(f"input folder {str(self.path)!r} does not exist or is not a folder")
        entries = sorted(self.path.iterdir())
        subfolders = [p for p in entries if p.is_dir() and not p.name.startswith(".")]
        files = [p for p in entries if p.is_file()]
        grouping = self.grouping
        if grouping == "auto":
            grouping = "subfolder" if subfolders else "stem-suffix"
        groups: dict[str, list[Path]] = {}
        if grouping == "subfolder":
            for folder in subfolders:
                images = [p for p in sorted(folder.rglob("*")) if p.is_file()]
                self.skipped_files += [str(p) for p in images if not is_image_path(p)]
                groups[folder.name] = [p for p in images if is_image_path(p)]
        else:
            for file in files:
                if not is_image_path(file):
                    self.skipped_files.append(str(file))
                    continue
                name = file.stem
                if grouping == "stem-suffix":
                    match = _INDEX_SUFFIX.match(name)
                    name = match.group("stem") if match else name
                elif name in groups:  # one image per identity: photo.jpg and photo.png would merge
                    raise ConfigError(f"duplicate identity name {name!r}: {groups[name][0].name!r} and {file.name!r} "
                                      "(grouping 'file' makes one identity per image, named by its stem)")
                groups.setdefault(name, []).append(file)
        lowered: dict[str, str] = {}
        for name in groups:
            if name.lower() in lowered:
                raise ConfigError(
                    f"identity names {lowered[name.lower()]!r} and {name!r} differ only in case; "
                    "they would collide on case-insensitive file systems"
                )
            lowered[name.lower()] = name
        identities = [
            Identity(name, tuple(SourceImage(key=p.name, path=p) for p in paths))
            for name, paths in sorted(groups.items()) if paths
        ]
        if not identities:
            raise BadInputError("empty-input", f"input folder {str(self.path)!r} holds no images")
        return identities[:limit] if limit else identities


@hookimpl
def register_generators(register):
    register("folder", FolderGenerator)
