"""The SynFIQA dataset on disk: layout, build marker, lock, per-identity records, final files.

    OUT/data/<identity>/Ref-<k>.jpg     references
    OUT/data/<identity>/<k>.jpg         degraded samples
    OUT/Quality-Scores.txt              "/<identity>/<k>.jpg<TAB><score>", keyed by path
    OUT/manifest.jsonl                  one row per sample (and per skipped photo)
    OUT/config.toml                     the resolved config of the build
    OUT/summary.json                    counts and unavailable domains
    OUT/generated/<identity>/0.png      a generative model's identities (ddpm builds only)
    OUT/.synfiqa/build.json             the build marker (config fingerprint)
    OUT/.synfiqa/lock                   held by the running build (advisory, fcntl)
    OUT/.synfiqa/identities/<id>.json   per-identity records: the unit of resume, with the
                                        size of every file the identity wrote

Safety rules, each tested in tests/test_reliability_build.py:
* nothing is deleted before every check has passed, and `--overwrite` deletes only the
  entries synfiqa writes (OWNED_ENTRIES), never a file of the user's;
* one build at a time holds a folder (an advisory lock; a second one is refused);
* a resumed build trusts files, not records: an identity whose recorded files are missing or
  changed size is built again;
* the dataset-wide files are written together: all or none of them are replaced.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import unicodedata
from pathlib import Path

from synfiqa.errors import BadInputError, OutputConflictError, OutputWriteError
from synfiqa.images import write_text_atomic

# everything synfiqa writes into a build folder (`synfiqa annotate`'s outputs included);
# `--overwrite` removes these and nothing else
OWNED_ENTRIES = ("data", "generated", ".synfiqa", "Quality-Scores.txt", "manifest.jsonl", "config.toml",
                 "summary.json", "annotations.jsonl", "annotation-summary.json")
FINAL_FILES = ("manifest.jsonl", "Quality-Scores.txt", "summary.json")
MAX_NAME_BYTES = 200  # below every common file system's 255-byte limit, with room for suffixes


def identity_folder_name(name: str) -> str:
    """`name` when it can be a folder under data/ and a Quality-Scores.txt key that reads back
    as written; otherwise BadInputError naming the identity."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith("."):
        raise BadInputError("bad-identity-name", f"identity name {name!r} cannot be a folder name")
    control = sorted({repr(c) for c in name if unicodedata.category(c)[0] == "C"})
    if control:
        raise BadInputError("bad-identity-name", f"identity name {name!r} holds control characters "
                            f"({', '.join(control)}); they would break Quality-Scores.txt lines: rename the folder")
    if name != name.strip():
        raise BadInputError("bad-identity-name", f"identity name {name!r} starts or ends with white space; rename the folder")
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise BadInputError("bad-identity-name", f"identity name {name[:40]!r}... is longer than {MAX_NAME_BYTES} bytes")
    return name


def _is_temporary(name: str) -> bool:
    # what synfiqa.images.write_atomic leaves when killed between open and rename
    return name.startswith(".") and ".tmp-" in name


class DatasetDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._lock_handle = None

    @property
    def marker(self) -> Path:
        return self.root / ".synfiqa" / "build.json"

    @property
    def records_dir(self) -> Path:
        return self.root / ".synfiqa" / "identities"

    @property
    def lock_path(self) -> Path:
        return self.root / ".synfiqa" / "lock"

    def image_path(self, identity: str, name: str) -> Path:
        return self.root / "data" / identity / name

    def record_path(self, identity: str) -> Path:
        return self.records_dir / f"{identity}.json"

    # ------------------------------------------------------------ claiming the folder

    def prepare(self, fingerprint: str, config_toml: str, overwrite: bool) -> bool:
        """Make the folder ready; returns True when an earlier run of the same build is resumed.
        Refuses, before writing or deleting anything, a folder holding another build or files
        that are not a synfiqa build. Takes the folder's lock (see `release`)."""
        self._check(fingerprint, overwrite)
        self.acquire()
        self._check(fingerprint, overwrite)  # again under the lock: another build may have just finished
        if overwrite and self.marker.is_file():
            self.remove_owned()
        resumed = self.marker.is_file()
        self.remove_temporary_files()
        try:
            self.records_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.root / "config.toml", config_toml)
            write_text_atomic(self.marker, json.dumps({"fingerprint": fingerprint}, indent=2) + "\n")
        except OSError as error:
            raise _write_error(self.root, error) from None
        return resumed

    def _check(self, fingerprint: str, overwrite: bool) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise OutputConflictError(f"--out {self.root} is a file, not a folder")
        if self.marker.is_file():
            try:
                previous = json.loads(self.marker.read_text()).get("fingerprint")
            except (OSError, ValueError, AttributeError):
                previous = "unreadable"
            if previous != fingerprint and not overwrite:
                config = self.root / "config.toml"
                resume = (f" To resume that build: synfiqa build --out {self.root} --config {config}."
                          if config.is_file() else "")
                raise OutputConflictError(
                    f"{self.root} holds a build made with another config (fingerprint {previous}, this one "
                    f"{fingerprint}).{resume} To replace it: add --overwrite."
                )
        elif self._entries():
            ours = sorted(p.name for p in self._entries() if p.name in OWNED_ENTRIES)
            foreign = sorted(p.name for p in self._entries() if p.name not in OWNED_ENTRIES)
            detail = f" (it holds {', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''})" if foreign else \
                f" (it holds {', '.join(ours)} but no build marker)"
            raise OutputConflictError(
                f"{self.root} is not empty and holds no synfiqa build{detail}; choose an empty or new folder. "
                "Nothing was changed."
            )

    def _entries(self) -> list[Path]:
        """What the folder holds, less a lone lock file (ours, or a finished run's)."""
        if not self.root.is_dir():
            return []
        entries = list(self.root.iterdir())
        state = self.root / ".synfiqa"
        if state.is_dir() and {p.name for p in state.iterdir()} <= {"lock"}:
            entries.remove(state)
        return entries

    def acquire(self) -> None:
        """Hold the folder's advisory lock until `release` (or the process ends): a second
        build, or `synfiqa annotate`, in the same folder is refused instead of interleaving."""
        import fcntl

        if self._lock_handle is not None:
            return
        try:
            self.lock_path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self.lock_path, "a+")
        except OSError as error:
            raise _write_error(self.root, error) from None
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

    def remove_owned(self) -> None:
        """Remove what synfiqa wrote here (the marker last, so that a removal cut short is
        still recognised as a build and can be overwritten again); keep the lock we hold."""
        for name in OWNED_ENTRIES:
            path = self.root / name
            if name == ".synfiqa" and path.is_dir():
                for child in path.iterdir():
                    if child not in (self.lock_path, self.marker):
                        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
            elif path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
        if self.marker.exists():
            self.marker.unlink()

    def remove_temporary_files(self) -> int:
        """The half-written temporaries a killed run left (`.<name>.tmp-<pid>`); safe under the lock."""
        removed = 0
        for top in (self.root, self.root / "data", self.root / "generated", self.root / ".synfiqa"):
            if not top.is_dir():
                continue
            for folder, _, files in os.walk(top):
                for name in files:
                    if _is_temporary(name):
                        Path(folder, name).unlink(missing_ok=True)
                        removed += 1
                if Path(folder) == self.root:
                    break  # the root itself: only its own files, not the user's subfolders
        return removed

    # ------------------------------------------------------------ per-identity records

    def has_record(self, identity: str) -> bool:
        return self.record_path(identity).is_file()

    def record_is_complete(self, identity: str) -> bool:
        """The record exists, reads, and every file it names is there with its recorded size."""
        try:
            record = self.read_record(identity)
        except (OSError, ValueError):
            return False
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

    def write_record(self, identity: str, record: dict) -> None:
        """Written last for an identity, after its files: it records their sizes, so a resumed
        build can tell a deleted or truncated image from a finished one."""
        files = {row["path"]: (self.root / row["path"]).stat().st_size
                 for row in record.get("rows", []) if row.get("path") and row.get("status") == "ok"}
        record = {**record, "files": dict(sorted(files.items()))} if files else record
        write_text_atomic(self.record_path(identity), json.dumps(record, indent=1, sort_keys=True) + "\n")

    def read_record(self, identity: str) -> dict:
        return json.loads(self.record_path(identity).read_text())

    # ------------------------------------------------------------ the dataset-wide files

    def write_outputs(self, rows: list[dict], quality: dict[str, float], summary: dict) -> None:
        manifest = "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)
        write_group({
            self.root / "manifest.jsonl": manifest.encode(),
            self.root / "Quality-Scores.txt": format_quality_scores(quality).encode(),
            self.root / "summary.json": (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode(),
        }, self.root)


def write_group(files: dict[Path, bytes], root: Path) -> None:
    """Replace several files together: every new version is written and synced to a temporary
    name first, and only when all of them are on disk are they renamed into place. A full disk
    leaves the previous versions (or none) of all of them, never a manifest without its scores."""
    temporaries = {}
    try:
        for path, data in files.items():
            temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            temporaries[path] = temporary
            with open(temporary, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
    except OSError as error:
        for temporary in temporaries.values():
            temporary.unlink(missing_ok=True)
        raise _write_error(root, error) from None
    for path, temporary in temporaries.items():
        os.replace(temporary, path)


def _write_error(root: Path, error: OSError) -> OutputWriteError:
    if error.errno == errno.ENOSPC:
        why = "the disk is full"
    elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = "the folder cannot be written (read-only or no permission)"
    else:
        why = error.strerror or type(error).__name__
    return OutputWriteError(f"cannot write in {root}: {why} ({error.filename or root}). Everything written "
                            "before is kept; free space or fix the permissions, then rerun the same command.")


def quality_key(identity: str, name: str) -> str:
    """The key of a sample in Quality-Scores.txt: its path under data/, with a leading slash."""
    return f"/{identity}/{name}"


def format_quality_scores(quality: dict[str, float]) -> str:
    """Quality-Scores.txt: one "<key><TAB><score>" line per sample, sorted by key. Keys come
    from identity names that `identity_folder_name` accepted: no tab or newline inside."""
    return "".join(f"{path}\t{score:.6f}\n" for path, score in sorted(quality.items()))


def read_quality_scores(path: str | Path) -> dict[str, float]:
    scores = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").split("\n"), start=1):
        if not line.strip():
            continue
        try:
            key, value = line.rsplit("\t", 1)
            scores[key] = float(value)
        except ValueError:
            raise ValueError(f"{path}:{number}: expected '<path><TAB><score>', got {line!r}") from None
    return scores
