"""The one store for what a stage writes: atomic files, an owned output folder, per-unit
records and append-only JSONL manifests. Every stage that writes uses it (build, generate,
filter, degrade, annotate, score), so resume, refusal and crash safety work one way:

* a file is written to a temporary name and renamed into place (`write_atomic`): a killed
  run leaves the old file or the new one, never half of one, and `write_group` replaces
  several files all or none;
* a `StageFolder` is owned by one run description (its marker): a rerun with the same
  description resumes, another description or foreign files are refused before anything is
  written or deleted, with the command that resumes; `--overwrite` removes only what the
  stage owns; an advisory lock keeps a second run out while one is writing;
* a `RecordSet` keeps one JSON record per unit of work (an identity), written last, with the
  size of every file the unit wrote, so a resumed run redoes a unit whose files are gone;
* `append_rows` adds manifest rows after the files they name, and `read_rows` skips the torn
  last line of a killed run.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from typing import Callable, Iterable

from synfiqa.errors import OutputConflictError, OutputWriteError

STATE = ".synfiqa"  # the folder of a stage's own state inside its output folder
LOCK = f"{STATE}/lock"


# ---------------------------------------------------------------- atomic files

def temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def is_temporary(name: str) -> bool:
    """What `write_atomic` leaves behind when killed between open and rename."""
    return name.startswith(".") and ".tmp-" in name


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write to a temporary name in the same folder, then rename into place: a killed
    process leaves either the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_name(path)
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_atomic(path, text.encode("utf-8"))


def write_group(files: dict[Path, bytes | Iterable[bytes]], root: Path) -> None:
    """Replace several files together: every new version is written and synced to a temporary
    name first, and only when all of them are on disk are they renamed into place. A full disk
    leaves the previous versions (or none) of all of them, never a manifest without its scores.
    A file's content is bytes, or an iterable of byte chunks written as they come (a manifest
    of a million rows never exists whole in memory)."""
    temporaries = {}
    try:
        for path, data in files.items():
            temporary = temporary_name(path)
            temporaries[path] = temporary
            with open(temporary, "wb") as handle:
                for chunk in ([data] if isinstance(data, bytes) else data):
                    handle.write(chunk)
                handle.flush()
                os.fsync(handle.fileno())
    except OSError as error:
        for temporary in temporaries.values():
            temporary.unlink(missing_ok=True)
        raise write_error(root, error) from None
    for path, temporary in temporaries.items():
        os.replace(temporary, path)


def write_error(root: Path, error: OSError) -> OutputWriteError:
    """One line for a write that failed: what is wrong with the folder, and that nothing was lost."""
    if error.errno == errno.ENOSPC:
        why = "the disk is full"
    elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = "the folder cannot be written (read-only or no permission)"
    else:
        why = error.strerror or type(error).__name__
    return OutputWriteError(f"cannot write in {root}: {why} ({error.filename or root}). Everything written "
                            "before is kept; free space or fix the permissions, then rerun the same command.")


# ---------------------------------------------------------------- manifests

def append_rows(path: Path, rows: list[dict]) -> None:
    """Append rows to a JSONL manifest, after the files they name were written."""
    if not rows:
        return
    torn = path.is_file() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
    with open(path, "a") as handle:
        if torn:  # a killed run's half line stays alone on its line, unreadable, instead of eating the next row
            handle.write("\n")
        for row in rows:
            handle.write(json.dumps(row, sort_keys=True) + "\n")
        handle.flush()


def read_rows(path: Path, key: str = "path") -> dict[str, dict]:
    """Manifest rows by `key`; a torn line (a killed run) is ignored, and so is a row
    without the key (a build's skipped sample has no path)."""
    rows = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and key in row:
                rows[row[key]] = row
    return rows


# ---------------------------------------------------------------- an owned output folder

class StageFolder:
    """The output folder of one stage run.

    `marker` (relative to the folder) holds the run's description: what decides the output
    (a config fingerprint, a seed and a chain, ...). `owned` names the top-level entries the
    stage writes; `--overwrite` removes those and nothing else. `resume_hint` says how to
    resume the run recorded in a folder, for the refusal message."""

    def __init__(self, root: str | Path, *, marker: str, what: str, owned: tuple[str, ...] = (),
                 resume_hint: Callable[["StageFolder"], str] | None = None, settings: str = "other settings"):
        self.root = Path(root)
        self.marker = self.root / marker
        self.what = what
        self.owned = tuple(owned) or (marker.split("/")[0],)
        self.resume_hint = resume_hint
        self.settings = settings  # what differs when the marker differs, for the refusal message
        self._lock_handle = None

    @property
    def lock_path(self) -> Path:
        return self.root / LOCK

    def claim(self, description: dict, overwrite: bool = False) -> bool:
        """Make the folder this run's; True when it holds an earlier run of the same
        description (resume). Nothing is written or deleted before every check has passed;
        the folder's lock is held until `release`."""
        self._check(description, overwrite)
        self.acquire()
        self._check(description, overwrite)  # again under the lock: another run may have just finished
        if overwrite and self.marker.is_file():
            self.remove_owned()
        resumed = self.marker.is_file()
        self.remove_temporary_files()
        try:
            write_text_atomic(self.marker, json.dumps(description, sort_keys=True, indent=2) + "\n")
        except OSError as error:
            raise write_error(self.root, error) from None
        return resumed

    def description(self) -> dict | None:
        try:
            return json.loads(self.marker.read_text())
        except (OSError, ValueError):
            return None

    def _check(self, description: dict, overwrite: bool) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise OutputConflictError(f"{self.root} is a file, not a folder")
        if self.marker.is_file():
            previous = self.description()
            if previous != description and not overwrite:
                hint = self.resume_hint(self) if self.resume_hint else ""
                raise OutputConflictError(
                    f"{self.root} holds a {self.what} made with {self.settings} ({_short(previous)}; this one "
                    f"{_short(description)}).{hint} To replace it: add --overwrite."
                )
        elif self._entries():
            foreign = sorted(p.name for p in self._entries() if p.name not in self.owned)
            ours = sorted(p.name for p in self._entries() if p.name in self.owned)
            detail = (f" (it holds {', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''})" if foreign
                      else f" (it holds {', '.join(ours)} but no marker)")
            raise OutputConflictError(f"{self.root} is not empty and holds no synfiqa {self.what}{detail}; "
                                      "choose an empty or new folder. Nothing was changed.")

    def _entries(self) -> list[Path]:
        """What the folder holds, less a lone lock file (ours, or a finished run's)."""
        if not self.root.is_dir():
            return []
        entries = list(self.root.iterdir())
        state = self.root / STATE
        if state.is_dir() and {p.name for p in state.iterdir()} <= {"lock"}:
            entries.remove(state)
        return entries

    def acquire(self) -> None:
        """Hold the folder's advisory lock until `release` (or the process ends)."""
        import fcntl

        if self._lock_handle is not None:
            return
        try:
            self.lock_path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self.lock_path, "a+")
        except OSError as error:
            raise write_error(self.root, error) from None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise OutputConflictError(f"{self.root} is in use by another synfiqa run ({holder}); "
                                      "wait for it to finish, or choose another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        self._lock_handle = handle

    def release(self) -> None:
        if self._lock_handle is not None:
            self._lock_handle.close()  # closing drops the flock
            self._lock_handle = None

    def __enter__(self) -> "StageFolder":
        return self

    def __exit__(self, *_) -> None:
        self.release()

    def remove_owned(self) -> None:
        """Remove what the stage wrote here (the marker last, so that a removal cut short is
        still recognised as this stage's folder and can be overwritten again); keep our lock."""
        keep = {self.lock_path, self.marker}
        for name in self.owned:
            path = self.root / name
            if path.is_symlink() or path.is_file():
                if path not in keep:
                    path.unlink()
            elif path.is_dir():
                if any(kept.is_relative_to(path) for kept in keep):  # the state folder: all but lock and marker
                    for child in path.iterdir():
                        if child not in keep:
                            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
                else:
                    shutil.rmtree(path)
        self.marker.unlink(missing_ok=True)

    def remove_temporary_files(self) -> int:
        """The half-written temporaries a killed run left (`.<name>.tmp-<pid>`), in the folder
        and in the entries the stage owns; safe under the lock."""
        removed = 0
        tops = [self.root] + [self.root / name for name in self.owned if (self.root / name).is_dir()]
        for top in tops:
            for folder, _, files in os.walk(top):
                for name in files:
                    if is_temporary(name):
                        Path(folder, name).unlink(missing_ok=True)
                        removed += 1
                if Path(folder) == self.root:
                    break  # the root itself: only its own files, not the user's subfolders
        return removed


def _short(description) -> str:
    text = json.dumps(description, sort_keys=True)
    return text if len(text) <= 160 else text[:157] + "..."


# ---------------------------------------------------------------- per-unit records

class RecordSet:
    """One JSON record per unit of work (an identity), the unit of resume.

    With `fingerprint`, the set belongs to what the records were computed with: when a run
    comes with another fingerprint, the stored records are dropped (and `dropped` says how
    many), so a changed model redoes every unit instead of mixing old and new results."""

    STATE_FILE = "state.json"

    def __init__(self, folder: str | Path, root: str | Path | None = None, fingerprint: str | None = None):
        self.folder = Path(folder)
        self.root = Path(root) if root is not None else None  # where the records' file paths are relative to
        self.dropped = 0
        self.folder.mkdir(parents=True, exist_ok=True)
        if fingerprint is not None:
            state = self.folder / self.STATE_FILE
            previous = json.loads(state.read_text()).get("fingerprint") if state.is_file() else None
            stale = [p for p in self.folder.glob("*.json") if p != state]
            if previous != fingerprint and stale:
                for path in stale:
                    path.unlink()
                self.dropped = len(stale)
            write_text_atomic(state, json.dumps({"fingerprint": fingerprint}) + "\n")

    def path(self, unit: str) -> Path:
        return self.folder / f"{unit}.json"

    def has(self, unit: str) -> bool:
        return self.path(unit).is_file()

    def read(self, unit: str) -> dict:
        return json.loads(self.path(unit).read_text())

    def write(self, unit: str, record: dict, *, indent: int | None = 1) -> None:
        """Written last for a unit, after its files: with `root`, it records the size of every
        file its rows name (status ok), so `is_complete` can tell a deleted or truncated file."""
        if self.root is not None:
            files = {row["path"]: (self.root / row["path"]).stat().st_size
                     for row in record.get("rows", []) if row.get("path") and row.get("status") == "ok"}
            record = {**record, "files": dict(sorted(files.items()))} if files else record
        write_text_atomic(self.path(unit), json.dumps(record, indent=indent, sort_keys=True) + "\n")

    def is_complete(self, unit: str) -> bool:
        """The record exists, reads, and every file it names is there with its recorded size."""
        try:
            record = self.read(unit)
        except (OSError, ValueError):
            return False
        if self.root is None:
            return True
        sizes = record.get("files")
        if sizes is None:  # a record from before sizes were kept: the files must exist
            sizes = {row["path"]: None for row in record.get("rows", []) if row.get("path")}
        for path, size in sizes.items():
            file = self.root / path
            try:
                if not file.is_file() or (size is not None and file.stat().st_size != size):
                    return False
            except OSError:
                return False
        return True
