"""The training data: a torch Dataset over one or more datasets, each a SynFIQA build, a
folder with one sub-folder of aligned crops per identity, an MXNet RecordIO file, or the
WebDataset shards of `synfiqa export --format webdataset`.

Every sample is (image, identity index, label, params):

* image: an aligned 112x112 RGB crop (uint8 [3, 112, 112]), flipped when the sampler says so;
* identity: the class index; the identities of several datasets are kept apart (a SynFIQA
  build and CASIA-WebFace train together as their union);
* label: the sample's MR score: from Quality-Scores.txt (keyed by path) in a build, from the
  sample's JSON in WebDataset shards, `header.label[1]` in RecordIO (the layout `synfiqa
  export --format recordio` writes: labels [identity, MR]); NaN where there is none
  (references, folder datasets, RecordIO records with one label);
* params: the degradation parameters the build recorded for it (manifest.jsonl, or the
  shard's JSON), {} when none.

RecordIO files and shards are read through one reader each (`RecordFile`,
`synfiqa.stages.export.WebDatasetFaces`), which both hand out a sample's encoded image by
key (`image_bytes`).

A sample that cannot be read is not raised inside a DataLoader worker (where it would
come back as a multi-line traceback): it travels as an error text and the training loop
raises it as one BadInputError line.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from synfiqa import layout
from synfiqa.errors import BadInputError, ConfigError, DataFileError
from synfiqa.images import decode_image, is_image_path, read_rgb

SIDE = 112


@dataclass(frozen=True)
class Source:
    """One sample: where its image is (a file, or a key of a RecordIO file) and what it is."""
    name: str                  # how errors name it
    identity: int              # class index over all datasets
    label: float               # NaN when unlabelled
    path: Path | None = None
    record: int | None = None  # the key of the sample in its reader (RecordIO key, shard sample index)
    reader: int = -1           # index into FaceDataset.readers


@dataclass
class DatasetInfo:
    path: str
    kind: str                  # "synfiqa", "folder", "recordio" or "webdataset"
    identities: int
    samples: int
    labelled: int


def detect_kind(path: Path) -> str:
    if path.is_file() and path.suffix == ".rec":
        return "recordio"
    if path.is_file() and path.suffix == ".tar":
        return "webdataset"
    if path.is_dir() and (path / "train.rec").is_file():
        return "recordio"
    if path.is_dir() and (path / layout.DATA).is_dir():
        return "synfiqa"
    if path.is_dir() and any(path.glob("*.tar")):
        return "webdataset"
    if path.is_dir():
        return "folder"
    if not path.exists():
        raise ConfigError(f"dataset {str(path)!r} does not exist")
    raise ConfigError(f"dataset {str(path)!r} is neither a folder, a RecordIO .rec file nor a WebDataset .tar shard")


class FaceDataset(torch.utils.data.Dataset):
    """The samples of every dataset given, in a fixed order (dataset, identity, file).
    `dataset[(i, flip)]` or `dataset[i]` -> {"image", "identity", "label", "params",
    "error"}."""

    def __init__(self, paths: list[str | Path], require_labels: bool = False, manifest_params: bool = True):
        from synfiqa.stages.s6_train.recordio import RecordFile

        self.sources: list[Source] = []
        self.readers: list = []
        self.infos: list[DatasetInfo] = []
        self.params: dict[int, dict] = {}
        self.identity_names: list[str] = []
        if not paths:
            raise ConfigError("no dataset given: name at least one SynFIQA build, identity folder or train.rec")
        for given in paths:
            path = Path(given).expanduser()
            kind = detect_kind(path)
            before, first_class = len(self.sources), len(self.identity_names)
            if kind == "synfiqa":
                self._add_synfiqa(path, manifest_params)
            elif kind == "folder":
                self._add_folder(path)
            elif kind == "webdataset":
                from synfiqa.stages.export.wds import WebDatasetFaces

                self.readers.append(WebDatasetFaces(path))
                self._add_webdataset(path, len(self.readers) - 1)
            else:
                rec = path if path.is_file() else path / "train.rec"
                self.readers.append(RecordFile(rec))
                self._add_recordio(rec, len(self.readers) - 1)
            added = self.sources[before:]
            labelled = sum(1 for s in added if not math.isnan(s.label))
            if not added:
                raise BadInputError("empty-dataset", f"dataset {path} holds no images")
            if require_labels and labelled == 0:
                raise ConfigError(f"--target mr needs MR labels, and dataset {path} ({kind}) has none (a SynFIQA "
                                  f"build's Quality-Scores.txt, or its export); train it with --target cr")
            self.infos.append(DatasetInfo(str(path), kind, len(self.identity_names) - first_class, len(added),
                                          labelled))
        if len(self.identity_names) < 2:
            raise BadInputError("too-few-identities", f"{len(self.identity_names)} identity in "
                                f"{', '.join(map(str, paths))}: the identity head needs at least 2 classes")

    # ---------------------------------------------------------------- readers

    def _new_class(self, name: str) -> int:
        self.identity_names.append(name)
        return len(self.identity_names) - 1

    def _add_synfiqa(self, root: Path, manifest_params: bool) -> None:
        found = layout.scan_dataset(root)
        scores_path = root / layout.QUALITY_SCORES
        try:
            scores = layout.read_quality_scores(scores_path) if scores_path.is_file() else {}
        except (ValueError, OSError, UnicodeDecodeError) as error:
            raise DataFileError(f"{scores_path}: {error}") from None
        for key, value in scores.items():
            if not math.isfinite(value):
                raise DataFileError(f"{scores_path}: the score of {key} is {value}, not a finite number")
        rows = {}
        if manifest_params and (root / layout.MANIFEST).is_file():
            from synfiqa.store import read_rows

            rows = read_rows(root / layout.MANIFEST)
        unlabelled = []
        for identity, files in found.items():
            names = files["references"] + files["degraded"]
            if not names:
                continue
            cls = self._new_class(f"{root.name}/{identity}")
            for name in names:
                key = layout.quality_key(identity, name)
                degraded = name in files["degraded"]
                label = scores.get(key, math.nan) if degraded else math.nan
                if degraded and math.isnan(label):
                    unlabelled.append(key)
                index = len(self.sources)
                self.sources.append(Source(key, cls, label, path=layout.image_path(root, identity, name)))
                row = rows.get(layout.relative_path(identity, name))
                if row and isinstance(row.get("params"), dict):
                    self.params[index] = {k: float(v) for k, v in row["params"].items()
                                          if isinstance(v, (int, float))}
        if scores and unlabelled:
            raise DataFileError(f"{scores_path} has no score for {len(unlabelled)} degraded sample(s) of the build, "
                                f"e.g. {unlabelled[0]}: the scores and the images do not belong together")

    def _add_folder(self, root: Path) -> None:
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not folders:
            raise BadInputError("not-a-dataset", f"{root} holds no identity sub-folders: a folder dataset is one "
                                "sub-folder of aligned 112x112 crops per identity")
        for folder in folders:
            images = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_path(p))
            if not images:
                continue
            cls = self._new_class(f"{root.name}/{folder.name}")
            for image in images:
                self.sources.append(Source(f"{folder.name}/{image.relative_to(folder).as_posix()}", cls, math.nan,
                                           path=image))

    def _add_recordio(self, rec: Path, reader_index: int) -> None:
        reader = self.readers[reader_index]
        found = []
        for key in reader.image_keys():
            header = reader.header(key)
            value = header.first_label
            if not math.isfinite(value) or value < 0 or value != int(value):
                raise DataFileError(f"{rec} (record {key}): identity label {value} is not a non-negative integer")
            # labels [identity, MR] (synfiqa export): the second is the quality label, NaN for references
            quality = float(header.label[1]) if isinstance(header.label, np.ndarray) and len(header.label) > 1 \
                else math.nan
            found.append((f"{rec.name}#{key}", int(value), quality, key))
        self._add_indexed(rec.name, reader_index, found)

    def _add_webdataset(self, path: Path, reader_index: int) -> None:
        reader = self.readers[reader_index]
        start = len(self.sources)
        self._add_indexed(path.name, reader_index,
                          [(reader.image_name(i), sample.identity, sample.label, i)
                           for i, sample in enumerate(reader.samples)])
        for offset, sample in enumerate(reader.samples):
            if sample.params:
                self.params[start + offset] = dict(sample.params)

    def _add_indexed(self, name: str, reader_index: int, found: list[tuple[str, int, float, int]]) -> None:
        """Samples of a reader, each (name, identity label, quality, key): the identity labels
        become classes in label order, numbered after those of the datasets before."""
        classes = {identity: -1 for identity in sorted({identity for _, identity, _, _ in found})}
        for identity in classes:
            classes[identity] = self._new_class(f"{name}/{identity}")
        for sample_name, identity, quality, key in found:
            self.sources.append(Source(sample_name, classes[identity], quality, record=key, reader=reader_index))

    # ---------------------------------------------------------------- access

    @property
    def num_classes(self) -> int:
        return len(self.identity_names)

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.sources], dtype=np.float64)

    def __len__(self) -> int:
        return len(self.sources)

    def read_image(self, index: int) -> np.ndarray:
        """HxWx3 uint8 RGB of a sample; BadInputError when it cannot be used for training."""
        source = self.sources[index]
        if source.path is not None:
            image = read_rgb(source.path)
        else:
            try:
                encoded = self.readers[source.reader].image_bytes(source.record)
            except OSError as error:
                raise DataFileError(f"{source.name}: cannot be read ({error})") from None
            image = decode_image(encoded, source.name)
        if image.shape[:2] != (SIDE, SIDE):
            raise BadInputError("wrong-size", f"{source.name}: {image.shape[1]}x{image.shape[0]} pixels; training "
                                f"takes aligned {SIDE}x{SIDE} crops (align photos with `synfiqa build` first)")
        return image

    def __getitem__(self, key) -> dict:
        index, flip = (key if isinstance(key, tuple) else (key, False))
        source = self.sources[index]
        item = {"identity": source.identity, "label": source.label, "index": index,
                "params": self.params.get(index, {}), "error": ""}
        try:
            image = self.read_image(index)
        except (BadInputError, DataFileError) as error:
            item["image"] = torch.zeros(3, SIDE, SIDE, dtype=torch.uint8)
            item["error"] = str(error)
            return item
        tensor = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1)
        item["image"] = tensor.flip(-1).contiguous() if flip else tensor.contiguous()
        return item


def collate(items: list[dict]) -> dict:
    """A batch: images uint8 [N, 3, 112, 112], identity int64 [N], label float32 [N] (NaN =
    none), index int64 [N], the error texts; params stay per sample."""
    return {
        "image": torch.stack([item["image"] for item in items]),
        "identity": torch.tensor([item["identity"] for item in items], dtype=torch.int64),
        "label": torch.tensor([item["label"] for item in items], dtype=torch.float32),
        "index": torch.tensor([item["index"] for item in items], dtype=torch.int64),
        "errors": [item["error"] for item in items if item["error"]],
        "params": [item["params"] for item in items],
    }


def to_network_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 3, 112, 112] -> float in [-1, 1], as CR-FIQA scales its input (x / 127.5 - 1)."""
    return images.float() / 127.5 - 1.0
