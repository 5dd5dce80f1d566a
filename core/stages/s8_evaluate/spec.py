"""What `synfiqa evaluate` evaluates: one dataset from command-line options, or several
from a TOML file, and the inputs each needs (read from files, or computed with an
embedder / FIQA models over the dataset's images).

A spec file::

    [[dataset]]
    name = "lfw"
    pairs = "lfw.bin"                # any format of synfiqa.stages.s8_evaluate.pairs
    embeddings = "emb/lfw.npz"       # optional when an embedder is given
    images = "lfw_aligned/"          # optional: where the pairs' images are (not for .bin)
    [dataset.quality]                # optional when FIQA models are given
    "CR-FIQA(L)" = "quality/lfw_crfiqal.csv"

Relative paths are relative to the spec file.

A benchmark folder (``synfiqa evaluate --benchmarks DIR...``) is recognised by what it holds,
in this order: a TinyFace test set (Probe/ and Gallery_Match/, also under Testing_Set/ or
tinyface/Testing_Set/); Adience fold files (fold_<k>_data.txt); exactly one insightface
``.bin``; ``xqlfw_pairs.txt`` (images in xqlfw_aligned_112/ when present); LFW's
``pairs.txt`` (images in lfw/ when present); CR-FIQA's ``pair_list.txt`` (images in images/
when present); ``pairs.csv``. Beside them, optionally, ``embeddings.npz`` and a ``quality/``
folder of quality files (one method per file, named by its stem).
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from synfiqa.errors import ConfigError, DataFileError
from synfiqa.faces import CropMaker
from synfiqa.images import ImageItem, items_under
from synfiqa.batch_inference import ImageOutcome, run_model
from synfiqa.stages.s8_evaluate.inputs import (EmbeddingTable, QualityTable, embedding_table, quality_table,
                                       read_embeddings, read_quality)
from synfiqa.stages.s8_evaluate.pairs import PairList, adience_fold_files, read_pairs, tinyface_root


@dataclass
class DatasetSpec:
    name: str
    pairs: Path
    format: str = "auto"
    embeddings: Path | None = None
    images: Path | None = None
    quality: dict[str, Path] = field(default_factory=dict)


def read_spec(path: str | Path) -> list[DatasetSpec]:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"spec file {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML ({error})") from None
    entries = raw.get("dataset")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: needs at least one [[dataset]] table")
    base = path.parent
    known = {"name", "pairs", "format", "embeddings", "images", "quality"}

    def resolve(value):
        return None if value in (None, "") else (base / Path(value).expanduser())

    specs = []
    for number, entry in enumerate(entries, start=1):
        unknown = sorted(set(entry) - known)
        if unknown:
            raise ConfigError(f"{path}: dataset {number}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        if "pairs" not in entry:
            raise ConfigError(f"{path}: dataset {number} has no pairs file")
        quality = entry.get("quality", {})
        if not isinstance(quality, dict):
            raise ConfigError(f"{path}: dataset {number}: quality must be a table of method name = file")
        pairs = resolve(entry["pairs"])
        specs.append(DatasetSpec(
            name=str(entry.get("name") or pairs.stem), pairs=pairs, format=entry.get("format", "auto"),
            embeddings=resolve(entry.get("embeddings")), images=resolve(entry.get("images")),
            quality={str(method): resolve(file) for method, file in quality.items()},
        ))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: dataset names must differ, got {names}")
    return specs


def dataset_items(pairs: PairList, images: Path | None) -> list[ImageItem]:
    names = pairs.image_names()
    if pairs.encoded_images is not None:
        return [ImageItem(name, data=pairs.encoded_images[name]) for name in names]
    if images is None:
        images = pairs.image_root
    if images is None:
        raise ConfigError(f"{pairs.source}: to compute embeddings or qualities, say where its images are "
                          f"(--images DIR, or images = ... in the spec)")
    return items_under(images, names)


def _require_all(outcomes: list[ImageOutcome], what: str, source: str) -> None:
    failed = [o for o in outcomes if o.value is None]
    if failed:
        first = failed[0]
        raise DataFileError(f"{source}: {len(failed)} of {len(outcomes)} image(s) have no {what}; first: "
                            f"{first.name} ({first.reason}: {first.detail}). Every image of a pair needs one "
                            f"(aligned crops? try --aligned)")


def compute_embeddings(pairs: PairList, items: list[ImageItem], crop_maker: CropMaker, embedder,
                       batch_size: int, progress) -> EmbeddingTable:
    outcomes = run_model(items, crop_maker, embedder.embed, batch_size, progress, "embeddings")
    _require_all(outcomes, "embedding", pairs.source)
    return embedding_table({o.name: o.value for o in outcomes}, f"embeddings computed for {pairs.source}")


def compute_quality(pairs: PairList, items: list[ImageItem], crop_maker: CropMaker, scorer, label: str,
                    batch_size: int, progress) -> QualityTable:
    outcomes = run_model(items, crop_maker, scorer.score, batch_size, progress, f"quality {label}")
    _require_all(outcomes, f"quality from {label}", pairs.source)
    return quality_table({o.name: o.value for o in outcomes}, f"qualities from {label} for {pairs.source}")


def load_pairs(spec: DatasetSpec) -> PairList:
    return read_pairs(spec.pairs, spec.format)


def load_embeddings(spec: DatasetSpec) -> EmbeddingTable | None:
    return read_embeddings(spec.embeddings) if spec.embeddings is not None else None


def load_qualities(spec: DatasetSpec) -> dict[str, QualityTable]:
    return {method: read_quality(path) for method, path in spec.quality.items()}


def quality_method_name(file: Path, taken: set[str]) -> str:
    """A quality file's label in the tables: its stem, made unique."""
    name = file.stem
    suffix = 2
    while name in taken:
        name, suffix = f"{file.stem}-{suffix}", suffix + 1
    return name


def parse_quality_option(value: str) -> tuple[str | None, Path]:
    """--quality NAME=FILE or --quality FILE."""
    if "=" in value and not Path(value).exists():
        name, file = value.split("=", 1)
        if not name:
            raise ConfigError(f"--quality {value!r}: the method name before '=' is empty")
        return name, Path(file)
    return None, Path(value)


# ---------------------------------------------------------------- benchmark folders


QUALITY_SUFFIXES = {".csv", ".txt"}


def _pairs_in_folder(folder: Path) -> tuple[Path, str, Path | None]:
    """(pairs path, format, images folder or None) for a benchmark folder."""
    if tinyface_root(folder) is not None:
        return folder, "tinyface", None
    if adience_fold_files(folder):
        return folder, "adience", None
    bins = sorted(folder.glob("*.bin"))
    if len(bins) == 1:
        return bins[0], "bin", None
    if len(bins) > 1:
        raise ConfigError(f"benchmark folder {folder}: holds {len(bins)} .bin files ({', '.join(b.name for b in bins)}); "
                          f"give each file as its own benchmark")

    def images_in(sub: str) -> Path:
        return folder / sub if (folder / sub).is_dir() else folder

    for file, format, sub in (("xqlfw_pairs.txt", "xqlfw", "xqlfw_aligned_112"), ("pairs.txt", "lfw", "lfw"),
                              ("pair_list.txt", "list", "images"), ("pairs.csv", "csv", "images")):
        if (folder / file).is_file():
            return folder / file, format, images_in(sub)
    raise ConfigError(f"benchmark folder {folder}: found no benchmark in it (a TinyFace Probe/ + Gallery_Match/, "
                      f"Adience fold_<k>_data.txt, one .bin, xqlfw_pairs.txt, pairs.txt, pair_list.txt or pairs.csv)")


def benchmark_spec(path: str | Path) -> DatasetSpec:
    """A benchmark given as a folder (or as its pairs file): what it holds, and its side files
    embeddings.npz and quality/*.csv|*.txt when present."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ConfigError(f"benchmark {str(path)!r} does not exist")
    if path.is_dir():
        pairs, format, images = _pairs_in_folder(path)
        folder, name = path, path.name
    else:
        pairs, format, images, folder, name = path, "auto", None, path.parent, path.stem
    embeddings = folder / "embeddings.npz"
    quality_dir = folder / "quality"
    quality = {}
    if quality_dir.is_dir():
        quality = {file.stem: file for file in sorted(quality_dir.iterdir())
                   if file.is_file() and file.suffix.lower() in QUALITY_SUFFIXES}
    return DatasetSpec(name=name, pairs=pairs, format=format, embeddings=embeddings if embeddings.is_file() else None,
                       images=images, quality=quality)


def benchmark_specs(paths) -> list[DatasetSpec]:
    specs, taken = [], set()
    for path in paths:
        spec = benchmark_spec(path)
        name, suffix = spec.name, 2
        while name in taken:
            name, suffix = f"{spec.name}-{suffix}", suffix + 1
        spec.name = name
        taken.add(name)
        specs.append(spec)
    return specs
