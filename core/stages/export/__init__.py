"""`synfiqa export`: a finished SynFIQA build as WebDataset shards, MXNet RecordIO, a Parquet
manifest or a `datasets` imagefolder (docs/export.md), and a torch Dataset over the shards.

    source.py    the build's samples in export order (manifest.jsonl + Quality-Scores.txt)
    writers.py   the four formats, each file written atomically, export.json last
    wds.py       WebDatasetFaces: a map-style torch Dataset over the shards (train's sample format)
"""
from synfiqa.stages.export.source import Build, Sample, read_build
from synfiqa.stages.export.wds import WebDatasetFaces
from synfiqa.stages.export.writers import FORMATS, export_dataset

__all__ = ["FORMATS", "Build", "Sample", "WebDatasetFaces", "export_dataset", "read_build"]
