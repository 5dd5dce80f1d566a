"""The SynFIQA dataset layout: where each file of a build lies, how a sample is keyed, and
Quality-Scores.txt (one writer, one reader).

    OUT/data/<identity>/Ref-<k>.jpg     references (clean, aligned)
    OUT/data/<identity>/<k>.jpg         degraded samples
    OUT/Quality-Scores.txt              "/<identity>/<k>.jpg<TAB><score>", keyed by path
    OUT/manifest.jsonl                  one row per sample (and per skipped photo)
    OUT/config.toml                     the resolved config of the build
    OUT/summary.json                    counts and unavailable domains
    OUT/generated/<identity>/0.png      a generative model's identities (ddpm builds only)
    OUT/annotations.jsonl, OUT/annotation-summary.json   `synfiqa annotate`'s outputs
    OUT/.synfiqa/build.json             the build marker (config fingerprint)
    OUT/.synfiqa/lock                   held by the running build (advisory, fcntl)
    OUT/.synfiqa/identities/<id>.json   per-identity records: the unit of resume, with the
                                        size of every file the identity wrote

An image has one key in every file that names it: "/<identity>/<file>", its path under
data/ with a leading slash, exactly as Quality-Scores.txt writes it (the original's format).
manifest.jsonl and annotations.jsonl rows carry it as "key", beside "path", where the file
lies relative to the build folder ("data/<identity>/<file>"); join the three files on it.
"""
from __future__ import annotations

import re
import unicodedata
from pathlib import Path

from synfiqa.errors import BadInputError, ConfigError
from synfiqa.images import is_image_path

DATA = "data"
GENERATED = "generated"          # a generative model's identities, inside the build folder
STAGE2_IMAGES = "generated/stage2"   # a Stage-2 backend's stored images (stores_images), one folder per identity
MANIFEST = "manifest.jsonl"
QUALITY_SCORES = "Quality-Scores.txt"
SUMMARY = "summary.json"
CONFIG = "config.toml"
BUILD_MARKER = ".synfiqa/build.json"
IDENTITY_RECORDS = ".synfiqa/identities"
REPORT = "report"                # the HTML report a build ends with (synfiqa report)
# everything synfiqa writes into a build folder (`synfiqa annotate`'s outputs included);
# `--overwrite` removes these and nothing else
OWNED_ENTRIES = (DATA, GENERATED, ".synfiqa", QUALITY_SCORES, MANIFEST, CONFIG, SUMMARY,
                 "annotations.jsonl", "annotation-summary.json", REPORT)
MAX_NAME_BYTES = 200  # below every common file system's 255-byte limit, with room for suffixes

_REFERENCE = re.compile(r"^Ref-(\d+)\.[A-Za-z0-9]+$")
_SAMPLE = re.compile(r"^(\d+)\.[A-Za-z0-9]+$")


def reference_name(k: int) -> str:
    return f"Ref-{k}.jpg"


def sample_name(k: int) -> str:
    return f"{k}.jpg"


def reference_index(name: str) -> int | None:
    """k of a reference image `Ref-<k>.<image suffix>`, else None."""
    match = _REFERENCE.match(name)
    return int(match[1]) if match and is_image_path(Path(name)) else None


def sample_index(name: str) -> int | None:
    """k of a degraded sample `<k>.<image suffix>`, else None."""
    match = _SAMPLE.match(name)
    return int(match[1]) if match and is_image_path(Path(name)) else None


def image_path(root: Path, identity: str, name: str) -> Path:
    return Path(root) / DATA / identity / name


def relative_path(identity: str, name: str) -> str:
    """The path of a dataset image relative to the build folder, as the manifest records it."""
    return f"{DATA}/{identity}/{name}"


def quality_key(identity: str, name: str) -> str:
    """The key of an image: its path under data/, with a leading slash, as Quality-Scores.txt
    writes it; manifest.jsonl and annotations.jsonl name the image by it too ("key")."""
    return f"/{identity}/{name}"


def image_fields(key: str) -> dict[str, str]:
    """The fields that name a dataset image in every row about it (manifest.jsonl,
    annotations.jsonl), from its key ("/<identity>/<file>", see `quality_key`): "key", the
    join key shared with Quality-Scores.txt, and "path", where the file lies relative to the
    build folder ("data/<identity>/<file>")."""
    return {"key": key, "path": f"{DATA}{key}"}


def sample_key(path: str) -> str:
    """"data/<id>/<k>.jpg", "/<id>/<k>.jpg", "<id>/<k>.jpg" or an absolute path -> "/<id>/<k>.jpg"."""
    parts = Path(str(path).replace("\\", "/")).parts
    if len(parts) < 2:
        raise ConfigError(f"sample path {path!r} does not name <identity>/<file>")
    return quality_key(parts[-2], parts[-1])


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


def scan_dataset(root: Path) -> dict[str, dict[str, list[str]]]:
    """identity -> {"references": [...], "degraded": [...]}, file names in index order."""
    data = Path(root) / DATA
    if not data.is_dir():
        raise BadInputError("not-a-dataset", f"{root} has no data/ folder: not a dataset in the SynFIQA layout")
    layout = {}
    for folder in sorted(p for p in data.iterdir() if p.is_dir()):
        names = [p.name for p in folder.iterdir() if p.is_file()]
        references = sorted((n for n in names if reference_index(n) is not None), key=reference_index)
        degraded = sorted((n for n in names if sample_index(n) is not None), key=sample_index)
        layout[folder.name] = {"references": references, "degraded": degraded}
    if not any(files["degraded"] for files in layout.values()):
        raise BadInputError("not-a-dataset", f"{data} holds no degraded samples (data/<identity>/<k>.jpg)")
    return layout


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
