"""Identities from a folder: one sub-folder per identity, or image files grouped by name.

Identity folders are the direct children of the input folder. Images deeper down belong to
their direct-child folder only with grouping = "subfolder-recursive"; otherwise nested folders
are an error that lists them (photos of `group1/obama/` and `group1/macron/` must not become
one identity `group1`). A symlink whose target lies outside the input folder is refused, so a
link pointing up the tree (`in/link -> ..`) cannot pull the whole tree in.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from synfiqa import hookimpl
from synfiqa.errors import BadInputError, ConfigError
from synfiqa.generation import Identity, SourceImage, embedded_faces_dir
from synfiqa.images import is_image_path

_INDEX_SUFFIX = re.compile(r"^(?P<stem>.+?)[_-]\d+$")
GROUPINGS = ("auto", "subfolder", "subfolder-recursive", "stem-suffix", "file")
_SHOWN = 8  # nested folders or links named in an error


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
        root = self.path.resolve()
        entries = sorted(self.path.iterdir())
        _refuse_outside_links(entries, root)
        subfolders = [p for p in entries if p.is_dir() and not p.name.startswith(".")]
        files = [p for p in entries if p.is_file()]
        grouping = self.grouping
        if grouping == "auto":
            grouping = "subfolder" if subfolders else "stem-suffix"
        groups: dict[str, list[Path]] = {}
        keys: dict[Path, str] = {}
        if grouping in ("subfolder", "subfolder-recursive"):
            nested = []
            for folder in subfolders:
                images, deeper = _walk(folder, root, recursive=grouping == "subfolder-recursive")
                nested += deeper
                self.skipped_files += [str(p) for p in images if not is_image_path(p)]
                groups[folder.name] = [p for p in images if is_image_path(p)]
                keys.update({p: p.relative_to(folder).as_posix() for p in groups[folder.name]})
            if nested:
                shown = ", ".join(str(p.relative_to(self.path)) for p in nested[:_SHOWN])
                more = f" and {len(nested) - _SHOWN} more" if len(nested) > _SHOWN else ""
                raise ConfigError(
                    f"identity folders must be the direct sub-folders of {str(self.path)!r}, but some hold "
                    f"folders of images: {shown}{more}. Point --input at the folder whose sub-folders are the "
                    "identities, or set generate.params.folder.grouping = \"subfolder-recursive\" if every image "
                    "below an identity folder shows that identity.")
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
            Identity(name, tuple(SourceImage(key=keys.get(p, p.name), path=p) for p in paths))
            for name, paths in sorted(groups.items()) if paths
        ]
        if not identities:
            raise BadInputError("empty-input", f"input folder {str(self.path)!r} holds no images")
        return identities[:limit] if limit else identities


def _walk(folder: Path, root: Path, recursive: bool) -> tuple[list[Path], list[Path]]:
    """(files under an identity folder, nested folders that hold images). Links are not
    followed into folders: a linked folder inside an identity would repeat another's photos."""
    files, nested = [], []
    for current, folders, names in os.walk(folder):
        current = Path(current)
        folders.sort()
        entries = [current / name for name in (*folders, *names)]
        _refuse_outside_links(entries, root)
        files += sorted(current / name for name in names if (current / name).is_file())
        if not recursive:
            nested += [current / name for name in folders if not name.startswith(".") and _holds_images(current / name)]
            break
        folders[:] = [name for name in folders if not name.startswith(".") and not (current / name).is_symlink()]
    return files, nested


def _holds_images(folder: Path) -> bool:
    return any(is_image_path(Path(name)) for _, _, names in os.walk(folder) for name in names)


def _refuse_outside_links(entries, root: Path) -> None:
    outside = [p for p in entries if p.is_symlink() and not _inside(p.resolve(), root)]
    if outside:
        shown = ", ".join(f"{p} -> {os.readlink(p)}" for p in outside[:_SHOWN])
        raise ConfigError(f"the input folder {str(root)!r} holds links to places outside it: {shown}. "
                          "synfiqa reads only what lies inside --input; copy those photos in or remove the links.")


def _inside(path: Path, root: Path) -> bool:
    return path != root and path.is_relative_to(root)


@hookimpl
def register_generators(register):
    register("folder", FolderGenerator)
