"""A torch Dataset over the WebDataset shards `synfiqa export --format webdataset` writes
(or any tar shards holding <key>.jpg|png + <key>.json with identity_index and quality), with
the sample format of `synfiqa train`'s FaceDataset (synfiqa.stages.s6_train.data):

    dataset[i] or dataset[(i, flip)] -> {"image": uint8 [3, H, W], "identity": int,
                                         "label": float (NaN = none), "index": i,
                                         "params": {name: float}, "error": ""}

It is map-style: opening it reads every shard's member headers and the small .json
members once (not the images), so a sampler can draw any order; an image is read by one
seek into its shard. Each DataLoader worker opens its own file handles.
"""
from __future__ import annotations

import json
import math
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from synfiqa.errors import BadInputError, DataFileError
from synfiqa.images import decode_image

IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp")


@dataclass(frozen=True)
class ShardSample:
    key: str
    shard: int
    offset: int        # of the image bytes in the shard
    size: int
    identity: int
    label: float
    params: dict


def _split(name: str) -> tuple[str, str]:
    """WebDataset's key/extension rule: the key is everything before the first dot of the
    file name (folders included), the extension everything after it."""
    folder, _, base = name.rpartition("/")
    stem, dot, suffix = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), suffix.lower()


def expand_shards(paths) -> list[Path]:
    """Shard files, folders (their *.tar, sorted) and lists of both."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found = []
    for given in paths:
        path = Path(given).expanduser()
        if path.is_dir():
            found += sorted(path.glob("*.tar"))
        elif path.is_file():
            found.append(path)
        else:
            raise DataFileError(f"WebDataset shard {str(path)!r} does not exist")
    if not found:
        raise BadInputError("empty-dataset", f"no .tar shards in {', '.join(map(str, paths))}")
    return found


class WebDatasetFaces(torch.utils.data.Dataset):
    def __init__(self, shards):
        self.shards = expand_shards(shards)
        self.samples: list[ShardSample] = []
        for number, shard in enumerate(self.shards):
            self.samples += self._index(number, shard)
        self._handles: dict[int, object] = {}
        self._pid = None

    @staticmethod
    def _index(number: int, shard: Path) -> list[ShardSample]:
        images, records, order = {}, {}, []
        try:
            with tarfile.open(shard, mode="r:") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    key, suffix = _split(member.name)
                    if key not in images and key not in records:
                        order.append(key)
                    if suffix in IMAGE_SUFFIXES:
                        images[key] = (member.offset_data, member.size)
                    elif suffix == "json":
                        records[key] = json.loads(tar.extractfile(member).read())
        except (tarfile.TarError, OSError, ValueError) as error:
            raise DataFileError(f"{shard}: not a readable WebDataset shard ({error})") from None
        samples = []
        for key in order:
            if key not in images or key not in records:
                raise DataFileError(f"{shard}: sample {key!r} lacks its "
                                    f"{'image' if key not in images else '.json'} member")
            record = records[key]
            quality = record.get("quality")
            params = {k: float(v) for k, v in (record.get("params") or {}).items() if isinstance(v, (int, float))}
            samples.append(ShardSample(key, number, *images[key], int(record["identity_index"]),
                                       math.nan if quality is None else float(quality), params))
        return samples

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handles"], state["_pid"] = {}, None
        return state

    def _read(self, sample: ShardSample) -> bytes:
        if self._pid != os.getpid():
            self._handles, self._pid = {}, os.getpid()
        handle = self._handles.get(sample.shard)
        if handle is None:
            handle = self._handles[sample.shard] = open(self.shards[sample.shard], "rb")
        handle.seek(sample.offset)
        return handle.read(sample.size)

    def image_bytes(self, index: int) -> bytes:
        """The encoded image of sample `index`, as stored (one seek into its shard)."""
        return self._read(self.samples[index])

    def image_name(self, index: int) -> str:
        """How errors name sample `index`: <shard file>#<key>."""
        sample = self.samples[index]
        return f"{self.shards[sample.shard].name}#{sample.key}"

    @property
    def num_classes(self) -> int:
        return 1 + max((s.identity for s in self.samples), default=-1)

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=np.float64)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key) -> dict:
        index, flip = key if isinstance(key, tuple) else (key, False)
        sample = self.samples[index]
        item = {"identity": sample.identity, "label": sample.label, "index": index, "params": sample.params,
                "error": ""}
        try:
            image = decode_image(self.image_bytes(index), self.image_name(index))
        except (BadInputError, DataFileError, OSError) as error:
            item["image"] = torch.zeros(3, 1, 1, dtype=torch.uint8)
            item["error"] = str(error)
            return item
        tensor = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1)
        item["image"] = tensor.flip(-1).contiguous() if flip else tensor.contiguous()
        return item
