"""What a report shows, read from a finished build: its samples (through the export stage's
reader of a build, synfiqa.stages.export.source), summary.json, config.toml, the filter
decisions (.synfiqa/filter.json) and where each identity's source photos lie."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from synfiqa import layout
from synfiqa.errors import BadInputError, DataFileError
from synfiqa.stages.export.source import Sample, read_build
from synfiqa.store import STATE

FILTER_DECISIONS = f"{STATE}/filter.json"   # written by the build's s2 (core/stages/build.py)


@dataclass
class BuildView:
    root: Path
    samples: list[Sample]                    # status-ok references and degraded samples, in build order
    summary: dict
    config: dict
    filter_decisions: dict | None            # filter.json: chain, identities, verdicts
    label_name: str                          # the quality score's name (summary "quality_score", mr)
    sources: dict[str, dict[str, Path]] = field(default_factory=dict)   # identity -> source key -> photo

    _by_identity: dict | None = field(default=None, repr=False)

    @property
    def identities(self) -> list[str]:
        return sorted(self._grouped())

    def of(self, identity: str, role: str) -> list[Sample]:
        """An identity's references or degraded samples, in index order."""
        return self._grouped().get(identity, {}).get(role, [])

    def _grouped(self) -> dict[str, dict[str, list[Sample]]]:
        # grouped once: a report of a million samples must not scan them once per identity
        if self._by_identity is None:
            self._by_identity = {}
            for sample in self.samples:
                self._by_identity.setdefault(sample.identity, {}).setdefault(sample.role, []).append(sample)
        return self._by_identity


def read_view(root: str | Path) -> BuildView:
    """A finished build; a build whose filters removed every identity has no samples but
    still its filter decisions."""
    root = Path(root)
    if not (root / layout.BUILD_MARKER).is_file():
        raise BadInputError("not-a-dataset", f"{root} is not a SynFIQA build (no {layout.BUILD_MARKER}): "
                            "report takes the folder `synfiqa build --out` wrote")
    try:
        samples = read_build(root).samples if (root / layout.DATA).is_dir() else []
    except BadInputError as error:
        if error.reason != "empty-dataset":
            raise
        samples = []
    summary = _json(root / layout.SUMMARY) or {}
    decisions = _json(root / FILTER_DECISIONS)
    config = {}
    if (root / layout.CONFIG).is_file():
        from synfiqa.config import read_config_file

        config = read_config_file(root / layout.CONFIG)
    view = BuildView(root, samples, summary, config, decisions, summary.get("quality_score") or "score")
    view.sources = source_photos(root, config, decisions)
    return view


def _json(path: Path):
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise DataFileError(f"{path}: not a JSON file") from None


def source_photos(root: Path, config: dict, decisions: dict | None) -> dict[str, dict[str, Path]]:
    """identity -> {source key (the manifest's "source"): the photo file}: a generative
    model's identities lie in OUT/generated/<identity>/; a folder generator's are listed by the
    generator itself, from the build's config (its input folder may have moved: then none)."""
    found: dict[str, dict[str, Path]] = {}
    generated = root / layout.GENERATED
    if generated.is_dir():
        for folder in sorted(p for p in generated.iterdir() if p.is_dir()):
            found[folder.name] = {p.name: p for p in sorted(folder.iterdir()) if p.is_file()}
    generator = config.get("generate", {}).get("generator")
    if generator == "folder":
        from synfiqa.errors import SynfiqaError
        from synfiqa.registry import get_registry

        params = dict(config.get("generate", {}).get("params", {}).get(generator, {}))
        try:
            listed = get_registry().create("generator", generator, **params).identities()
        except SynfiqaError:   # the input folder is gone or changed: the report goes without source photos
            listed = []
        for identity in listed:
            found.setdefault(identity.name, {}).update(
                {image.key: image.path for image in identity.images if image.path is not None})
    return found
