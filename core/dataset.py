"""The SynFIQA dataset on disk: layout, build marker, per-identity records, final files.

    OUT/data/<identity>/Ref-<k>.jpg     references
    OUT/data/<identity>/<k>.jpg         degraded samples
    OUT/Quality-Scores.txt              "/<identity>/<k>.jpg<TAB><score>", keyed by path
    OUT/manifest.jsonl                  one row per sample (and per skipped photo)
    OUT/config.toml                     the resolved config of the build
    OUT/summary.json                    counts and unavailable domains
    OUT/generated/<identity>/0.png      a generative model's identities (ddpm builds only)
    OUT/.synfiqa/build.json             the build marker (config fingerprint)
    OUT/.synfiqa/identities/<id>.json   per-identity records: the unit of resume
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from synfiqa.errors import OutputConflictError
from synfiqa.images import write_text_atomic

OWNED_ENTRIES = ("data", "generated", ".synfiqa", "Quality-Scores.txt", "manifest.jsonl", "config.toml", "summary.json")


class DatasetDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def marker(self) -> Path:
        return self.root / ".synfiqa" / "build.json"

    @property
    def records_dir(self) -> Path:
        return self.root / ".synfiqa" / "identities"

    def image_path(self, identity: str, name: str) -> Path:
        return self.root / "data" / identity / name

    def record_path(self, identity: str) -> Path:
        return self.records_dir / f"{identity}.json"

    def prepare(self, fingerprint: str, config_toml: str, overwrite: bool) -> bool:
        """Make the folder ready; returns True when an earlier run of the same build is resumed.
        Refuses a folder holding another build or files that are not a synfiqa build."""
        if overwrite:
            self.remove_owned()
        resumed = False
        if self.marker.is_file():
            previous = json.loads(self.marker.read_text()).get("fingerprint")
            if previous != fingerprint:
                raise OutputConflictError(
                    f"{self.root} holds a build made with another config (fingerprint {previous}, this one "
                    f"{fingerprint}). To resume that build: synfiqa build --out {self.root} --config "
                    f"{self.root / 'config.toml'}. To replace it: add --overwrite."
                )
            resumed = True
        elif self.root.exists() and any(self.root.iterdir()):
            raise OutputConflictError(
                f"{self.root} is not empty and holds no synfiqa build; choose an empty or new folder "
                "(or add --overwrite to replace the synfiqa files in it)"
            )
        self.records_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.root / "config.toml", config_toml)
        write_text_atomic(self.marker, json.dumps({"fingerprint": fingerprint}, indent=2) + "\n")
        return resumed

    def remove_owned(self) -> None:
        for name in OWNED_ENTRIES:
            path = self.root / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()

    def has_record(self, identity: str) -> bool:
        return self.record_path(identity).is_file()

    def write_record(self, identity: str, record: dict) -> None:
        write_text_atomic(self.record_path(identity), json.dumps(record, indent=1, sort_keys=True) + "\n")

    def read_record(self, identity: str) -> dict:
        return json.loads(self.record_path(identity).read_text())

    def write_outputs(self, rows: list[dict], quality: dict[str, float], summary: dict) -> None:
        manifest = "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)
        write_text_atomic(self.root / "manifest.jsonl", manifest)
        lines = "".join(f"{path}\t{score:.6f}\n" for path, score in sorted(quality.items()))
        write_text_atomic(self.root / "Quality-Scores.txt", lines)
        write_text_atomic(self.root / "summary.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")


def quality_key(identity: str, name: str) -> str:
    """The key of a sample in Quality-Scores.txt: its path under data/, with a leading slash."""
    return f"/{identity}/{name}"


def read_quality_scores(path: str | Path) -> dict[str, float]:
    scores = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            key, value = line.rsplit("\t", 1)
            scores[key] = float(value)
        except ValueError:
            raise ValueError(f"{path}:{number}: expected '<path><TAB><score>', got {line!r}") from None
    return scores
