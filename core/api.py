"""synfiqa's Python API: thin calls of what the command line runs, for notebooks and scripts.

    import synfiqa
    synfiqa.list_models("fiqa")                          # what create_scorer takes
    scorer = synfiqa.create_scorer("cr-fiqa-l", device="cuda")   # or a CR-FIQA checkpoint file
    scorer.score(["a.jpg", "b.jpg"])                     # photos: detected and aligned first
    scorer.score(crops, aligned=True)                    # 112x112 aligned crops: no detection
    synfiqa.build("out", input="photos/", overrides=["run.degraded=100"])
    synfiqa.evaluate(pairs="pairs.csv", embeddings="emb.npz", quality={"mine": "q.csv"})

Each function imports what it needs when called, so `import synfiqa` stays light. The
functions are exported lazily by synfiqa/__init__.py. Documented in docs/api.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

MODEL_KINDS = ("fiqa", "embedder", "detector", "pose", "vision-language")


def list_models(kind: str | None = None) -> list[dict]:
    """The registered face models (`synfiqa plugins list` for the model kinds), each as
    {"kind", "name", "summary", "plugin", "distribution", "version", "defaults"}; `kind`
    ("fiqa", "embedder", "detector", "pose", "vision-language") keeps one kind. The FIQA models
    are what `create_scorer` takes by name; `synfiqa.weights.asset_report()` says which model
    files were found (as `synfiqa models list`)."""
    from synfiqa.errors import ConfigError
    from synfiqa.registry import get_registry

    if kind is not None and kind not in MODEL_KINDS:
        raise ConfigError(f"list_models: kind must be one of {', '.join(MODEL_KINDS)}, got {kind!r}")
    return [component.describe() for k in ([kind] if kind else MODEL_KINDS)
            for component in get_registry().components(k)]


@dataclass
class _ArrayItem:
    """An image handed over in memory (HxWx3 uint8 RGB), in the shape CropMaker reads."""
    name: str
    array: np.ndarray
    path: None = None
    data: None = None


def _crop_maker(aligned: bool, detector):
    """synfiqa.faces.CropMaker (the one crop path of `synfiqa score`), reading in-memory
    images as they are."""
    from synfiqa.faces import CropMaker

    class InputCropMaker(CropMaker):
        def load(self, item):
            return item.array if isinstance(item, _ArrayItem) else super().load(item)

    return InputCropMaker(aligned, detector)


def _as_rgb(image, name: str) -> np.ndarray:
    """HxWx3 uint8 RGB from a numpy array (HxWx3, uint8, or float in [0, 1]) or a torch tensor
    (3xHxW, uint8 or float in [0, 1])."""
    from synfiqa.errors import BadInputError

    if type(image).__module__.startswith("torch"):
        array = image.detach().cpu().numpy()
        if array.ndim == 3 and array.shape[0] in (1, 3):
            array = np.moveaxis(array, 0, -1)
    else:
        array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3):
        raise BadInputError("bad-array", f"{name}: expected an RGB image (HxWx3 array or 3xHxW tensor), got shape "
                            f"{tuple(np.shape(image))}")
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.floating):
            raise BadInputError("bad-array", f"{name}: expected uint8 or float values in [0, 1], got {array.dtype}")
        array = np.clip(np.rint(array.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(array)


def _items(inputs) -> list:
    """ImageItems (files; folders walked as `synfiqa score` walks them) and in-memory images."""
    from synfiqa.images import collect_images

    if isinstance(inputs, (str, Path)):
        return collect_images([inputs])
    if type(inputs).__module__.startswith("torch") or isinstance(inputs, np.ndarray):
        batch = inputs if inputs.ndim == 4 else inputs[None]
        return [_ArrayItem(f"image {i}", _as_rgb(image, f"image {i}")) for i, image in enumerate(batch)]
    items = []
    for i, entry in enumerate(inputs):
        if isinstance(entry, (str, Path)):
            items += collect_images([entry])
        else:
            items.append(_ArrayItem(f"image {i}", _as_rgb(entry, f"image {i}")))
    return items


class Scorer:
    """A FIQA model with the crop path of `synfiqa score`. Attributes:

    * ``name``: the model's label (its name, or the checkpoint's file name);
    * ``variant``: the one line the model describes itself with (architecture, head), or "";
    * ``higher_is_better``: True, the contract of every FIQA model in synfiqa;
    * ``score_range``: (low, high) of the values; a CR-FIQA head's raw output is unbounded,
      (-inf, inf): compare scores of one model only.
    """

    higher_is_better = True
    score_range = (-math.inf, math.inf)

    def __init__(self, model, name: str, device: str, detector: str = "mtcnn", batch_size: int = 64):
        from synfiqa.protocols import model_variant

        self.model, self.name, self.device = model, name, device
        self.variant = model_variant(model)
        self.detector_name, self.batch_size = detector, batch_size
        self._detector = None

    def __repr__(self) -> str:
        return f"Scorer({self.name!r}, device={self.device!r}{', ' + self.variant if self.variant else ''})"

    def score_outcomes(self, inputs, aligned: bool = False, progress: bool = False) -> list:
        """One synfiqa.batch_inference.ImageOutcome per image (name, value, reason, detail):
        an image without a usable face has value None and a reason (no-face, unreadable-image, ...)."""
        from synfiqa.batch_inference import run_model

        detector = None if aligned else self._detector_model()
        return run_model(_items(inputs), _crop_maker(aligned, detector), self.model.score, self.batch_size,
                         progress, "scoring")

    def score(self, inputs, aligned: bool = False, progress: bool = False) -> np.ndarray:
        """The quality of each image, float64, NaN where no usable face was found.

        ``inputs``: a path (a folder is walked recursively, sorted, as `synfiqa score` does), a
        list of paths, a numpy array (HxWx3, or NxHxWx3, uint8 RGB or float in [0, 1]), a torch
        tensor (3xHxW or Nx3xHxW), or a list mixing them. Photos are detected and aligned to
        the ArcFace 112x112 template first, unless ``aligned=True`` says they are aligned crops
        (then only resized to 112x112 when they are not that size)."""
        return np.array([math.nan if o.value is None else float(o.value)
                         for o in self.score_outcomes(inputs, aligned, progress)], dtype=np.float64)

    def _detector_model(self):
        if self._detector is None:
            from synfiqa.context import create_on_device
            from synfiqa.registry import get_registry

            self._detector = create_on_device(get_registry(), "detector", self.detector_name, self.device)
        return self._detector


class ReferenceScorer:
    """The MR-FIQA label as a scorer with references (`synfiqa score --model mr`): fr against
    the references of each image's identity (the folder it lies in), sd over the measured
    |yaw|, vl when BLIP's weights are there, min-max normalised over the images of one call,
    so scores of one call compare, scores of two calls do not. ``score_range`` is (0, 1)."""

    higher_is_better = True
    score_range = (0.0, 1.0)
    name = "mr"
    variant = "reference-based MR-FIQA"

    def __init__(self, references: str | Path | None, config: dict, detector: str):
        self.references, self.config, self.detector_name = references, config, detector
        self.device = config["run"]["device"]

    def __repr__(self) -> str:
        return f"ReferenceScorer(references={str(self.references) if self.references else 'Ref-<k> beside'!r})"

    def score_outcomes(self, inputs, aligned: bool = False, progress: bool = False) -> list:
        """As Scorer.score_outcomes; images without references get no value ("no-reference")."""
        from synfiqa.context import create_on_device
        from synfiqa.errors import ConfigError
        from synfiqa.registry import get_registry
        from synfiqa.stages.s7_score import score_with_references

        items = _items(inputs)
        if any(isinstance(item, _ArrayItem) for item in items):
            raise ConfigError("the mr scorer takes image files: an image's identity is the folder it lies in")
        registry = get_registry()
        detector = None if aligned else create_on_device(registry, "detector", self.detector_name, self.device)
        return score_with_references(items, self.references, self.config, registry,
                                     _crop_maker(aligned, detector)).outcomes

    def score(self, inputs, aligned: bool = False, progress: bool = False) -> np.ndarray:
        return np.array([math.nan if o.value is None else float(o.value)
                         for o in self.score_outcomes(inputs, aligned, progress)], dtype=np.float64)


def create_scorer(model: str | Path, device: str = "auto", *, detector: str = "mtcnn", batch_size: int = 64,
                  references: str | Path | None = None, config: str | Path | None = None,
                  overrides: Sequence[str] = ()) -> Scorer | ReferenceScorer:
    """A FIQA model by name (`list_models("fiqa")`) or a CR-FIQA checkpoint file, on `device`
    ("auto": CUDA when available; "cpu", "cuda", "cuda:N"), as `synfiqa score --model` loads
    it. Missing weights are a one-line error naming where they were looked for.

    ``"mr"``: the MR-FIQA label against references (`synfiqa score --model mr [--references
    DIR]`); `references` is a folder with one sub-folder of references per identity (default:
    the Ref-<k> images beside each scored image); `config`/`overrides` set its models and
    annotators as --config/--set do."""
    from synfiqa.config import device_problem
    from synfiqa.errors import ConfigError
    from synfiqa.models import resolve_device
    from synfiqa.registry import get_registry

    problem = device_problem(device)
    if problem:
        raise ConfigError(f"device {problem}")
    if str(model) == "mr":
        from synfiqa.config import load_config

        resolved = load_config(config, list(overrides), registry=get_registry(),
                               values={"run.device": None if device == "auto" else device})
        return ReferenceScorer(references, resolved, detector)
    if references is not None or config is not None or overrides:
        raise ConfigError("references, config and overrides are for create_scorer('mr'): a FIQA network needs none")
    from synfiqa.batch_inference import resolve_model

    scorer, label = resolve_model("fiqa", str(model), device, get_registry())
    return Scorer(scorer, label, str(resolve_device(device)), detector, batch_size)


def build(out: str | Path, input: str | Path | None = None, *, config: str | Path | None = None,
          overrides: Sequence[str] = (), seed: int | None = None, device: str | None = None,
          overwrite: bool = False, shard: tuple[int, int] | None = None, progress: bool = False,
          echo=None) -> dict:
    """`synfiqa build --out OUT [--input DIR] [--config FILE] [--set KEY=VALUE ...]`: returns the
    build's summary (summary.json's content). `overrides` are --set's KEY=VALUE strings; `echo`
    receives the lines the command prints (default: none)."""
    from synfiqa.config import load_config
    from synfiqa.errors import ConfigError
    from synfiqa.registry import get_registry
    from synfiqa.stages.build import build as run_build

    if input is not None and not Path(input).is_dir():
        raise ConfigError(f"input folder {str(input)!r} does not exist or is not a folder")
    values = {"generate.params.folder.path": None if input is None else str(Path(input).resolve()),
              "run.seed": seed, "run.device": device}
    resolved = load_config(config, list(overrides), registry=get_registry(), values=values)
    return run_build(resolved, out, overwrite=overwrite, shard=shard, progress=progress,
                     echo=echo or (lambda *_args, **_kwargs: None))


def evaluate(pairs: str | Path, *, embeddings: str | Path | None = None,
             quality: Mapping[str, str | Path] | Iterable[str | Path] = (), images: str | Path | None = None,
             name: str | None = None, pairs_format: str = "auto", protocol: str = "A",
             fmr_targets: Sequence[float] = (1e-2, 1e-3, 1e-4), discard_limit: float = 0.3,
             subtract_best: bool = False, tie_rule: str = "erc", quality_sort: str = "stable",
             threshold_rule: str = "iso", curves: bool = False, plot: str | Path | None = None) -> dict:
    """`synfiqa evaluate --pairs FILE --embeddings FILE --quality [NAME=]FILE ... --json`: EDC and
    pAUC of each quality method on one benchmark. Returns the document `--json` prints (with
    every curve point when `curves`); `plot` also writes the EDC figure (.png, .pdf or .svg).
    `quality` maps method names to quality CSVs (image,quality), or lists CSVs (named by stem)."""
    from synfiqa.errors import ConfigError
    from synfiqa.stages.s8_evaluate import report
    from synfiqa.stages.s8_evaluate.dataset import evaluate_dataset
    from synfiqa.stages.s8_evaluate.spec import (DatasetSpec, load_embeddings, load_pairs, load_qualities,
                                                 quality_method_name)

    if embeddings is None:
        raise ConfigError("evaluate: give embeddings=FILE.npz (an .npz mapping each image name to its vector)")
    spec = DatasetSpec(name=name or Path(pairs).stem, pairs=Path(pairs), format=pairs_format,
                       embeddings=Path(embeddings), images=Path(images) if images else None)
    if isinstance(quality, Mapping):
        spec.quality = {method: Path(file) for method, file in quality.items()}
    else:
        for file in quality:
            spec.quality[quality_method_name(Path(file), set(spec.quality))] = Path(file)
    if not spec.quality:
        raise ConfigError("evaluate: give at least one quality file (quality={'name': 'q.csv'})")
    if plot is not None:
        from synfiqa.stages.s8_evaluate.plot import plot_format

        plot_format(plot)
    result = evaluate_dataset(spec.name, load_pairs(spec), load_embeddings(spec), load_qualities(spec),
                              protocol.upper(), list(fmr_targets), discard_limit, subtract_best, tie_rule=tie_rule,
                              threshold_rule=threshold_rule, quality_sort=quality_sort)
    if plot is not None:
        from synfiqa.stages.s8_evaluate.plot import plot_edc

        plot_edc([result], plot, recognition=Path(embeddings).name)
    return report.to_json([result], curves=curves)


def report(dataset: str | Path, out: str | Path | None = None, evaluation: str | Path | None = None, **options):
    """`synfiqa report DATASET [--out DIR] [--evaluation FILE]`: returns the ReportResult
    (index: the page's path; flagged: identities whose labels do not follow severity)."""
    from synfiqa.stages.s9_report import make_report

    return make_report(dataset, out, evaluation, **options)
