"""The settings of a training run (`synfiqa train`): the CR-FIQA recipe's constants as
defaults (docs/train.md, ALGORITHMS section 9), a TOML `[train]` table to change them and
`--set train.KEY=VALUE` overrides, every problem in one ConfigError.

The recipe (fdbtrs/CR-FIQA, `train_cr_fiqa.py`, `losses.py`, `config.py`):

* IResNet-50 with dropout 0.4 and a 512-d embedding, quality head `qs`;
* ArcFace margin head s = 64, m = 0.5, weight (512 x classes) ~ N(0, 0.01);
* loss = CE(margin logits, label) + 10 * SmoothL1(beta 0.5)(target, qs), target ccs / nnccs;
* SGD momentum 0.9, weight decay 5e-4, lr 0.01 / 512 * batch * world size, batch 128 per
  process, x0.1 at epochs 20, 28, 32 of 34; gradient-norm clip 5 on the backbone.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from synfiqa.errors import ConfigError

HEADS = ("linear", "mlp")
TARGETS = ("cr", "mr")
AMP = ("auto", "on", "off")
EXPORTS = ("", "onnx")


@dataclass(frozen=True)
class TrainSettings:
    # the network: a `fiqa` component that can build a trainable network (docs/train.md), and
    # the architecture it is asked for (cr-fiqa: iresnet18, iresnet34, iresnet50, iresnet100)
    network: str = "cr-fiqa"
    arch: str = "iresnet50"
    head: str = "linear"
    embedding_size: int = 512
    dropout: float = 0.4
    # the loss
    target: str = "cr"
    margin_scale: float = 64.0       # ArcFace s
    margin: float = 0.5              # ArcFace m
    quality_weight: float = 10.0     # alpha
    smooth_l1_beta: float = 0.5
    cr_offset: float = 0.0           # added to nnccs before the division; 0 = the published code
    # the optimiser and schedule
    batch_size: int = 128            # per process and step
    accumulate: int = 1              # micro-batches the per-process batch is split into
    lr: float = 0.01                 # per 512 images of the global batch
    momentum: float = 0.9
    weight_decay: float = 5e-4
    epochs: int = 34
    decay_epochs: tuple[int, ...] = (20, 28, 32)
    decay_factor: float = 0.1
    clip_norm: float = 5.0           # on the backbone's gradient; 0 = no clipping
    # the data
    flip: bool = True
    workers: int = 4
    seed: int = 0
    # the run
    amp: str = "auto"                # auto: on CUDA only
    checkpoint_every: int = 1000     # steps
    log_every: int = 50              # steps
    keep_checkpoints: int = 2
    device: str = "auto"
    export: str = ""                 # "onnx": also DIR/model.onnx

    # ---------------------------------------------------------------- derived

    def global_batch(self, world_size: int) -> int:
        return self.batch_size * world_size

    def base_lr(self, world_size: int) -> float:
        """0.01 / 512 * batch * world size (CR-FIQA's linear scaling)."""
        return self.lr / 512 * self.batch_size * world_size

    def lr_factor(self, epoch: int) -> float:
        """CR-FIQA's `lr_step_func` (no warm-up): 0.1 ** #{m in decay_epochs : m - 1 <= epoch},
        epoch counted from 0, so the first decay applies from the 20th epoch on."""
        return self.decay_factor ** sum(1 for m in self.decay_epochs if m - 1 <= epoch)

    def fingerprint(self, datasets: list[str], world_size: int) -> dict:
        """What decides the trained weights: a resumed run must match it. Run-only settings
        (workers, checkpoint and log intervals, export, device) are left out."""
        decisive = {k: v for k, v in dataclasses.asdict(self).items()
                    if k not in ("workers", "checkpoint_every", "log_every", "keep_checkpoints", "device", "export")}
        decisive["decay_epochs"] = list(self.decay_epochs)
        text = json.dumps({"settings": decisive, "datasets": datasets, "world_size": world_size}, sort_keys=True)
        return {"kind": "synfiqa-train", "settings": decisive, "datasets": datasets, "world_size": world_size,
                "fingerprint": hashlib.sha256(text.encode()).hexdigest()[:16]}

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["decay_epochs"] = list(self.decay_epochs)
        return out


FIELDS = {f.name: f for f in dataclasses.fields(TrainSettings)}
DEFAULTS = TrainSettings()


def _problem(name: str, value) -> str | None:
    """Why `value` cannot be setting `name`, or None."""
    default = getattr(DEFAULTS, name)
    if name == "decay_epochs":
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                                                          for v in value):
            return f"train.decay_epochs must be a list of epochs (integers >= 1); got {value!r}"
        return None
    if isinstance(default, bool):
        return None if isinstance(value, bool) else f"train.{name} must be true or false; got {value!r}"
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            return f"train.{name} must be an integer; got {value!r}"
        low = {"embedding_size": 1, "batch_size": 1, "accumulate": 1, "epochs": 1, "checkpoint_every": 1,
               "log_every": 1, "keep_checkpoints": 1, "workers": 0, "seed": 0}.get(name, None)
        if low is not None and value < low:
            return f"train.{name} must be >= {low}; got {value}"
        return None
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"train.{name} must be a finite number; got {value!r}"
        bounds = {"dropout": (0.0, 0.999), "margin_scale": (1e-6, None), "margin": (0.0, math.pi),
                  "quality_weight": (0.0, None), "smooth_l1_beta": (0.0, None), "lr": (1e-12, None),
                  "momentum": (0.0, 0.999999), "weight_decay": (0.0, None), "decay_factor": (0.0, 1.0),
                  "clip_norm": (0.0, None)}.get(name)
        if bounds:
            low, high = bounds
            if value < low or (high is not None and value > high):
                shown = f"from {low} to {high}" if high is not None else f">= {low}"
                return f"train.{name} must be {shown}; got {value}"
        return None
    choices = {"head": HEADS, "target": TARGETS, "amp": AMP, "export": EXPORTS}.get(name)
    if not isinstance(value, str):
        return f"train.{name} must be a string; got {value!r}"
    if choices and value not in choices:
        return f"train.{name} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}"
    if name in ("network", "arch", "device") and not value.strip():
        return f"train.{name} must not be empty"
    return None


def _key(dotted: str) -> str:
    return dotted[len("train."):] if dotted.startswith("train.") else dotted


def load_settings(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                  values: dict | None = None) -> TrainSettings:
    """The defaults, then the file's `[train]` table, then each `train.KEY=VALUE` override
    (TOML values; the `train.` prefix may be left out), then `values` ({key: value} from
    typed CLI options, None = not given). Every problem is in one ConfigError."""
    from synfiqa.config import parse_override, read_config_file

    chosen: dict = {}
    problems: list[str] = []

    def put(key: str, value, where: str):
        if key not in FIELDS:
            import difflib

            close = difflib.get_close_matches(key, list(FIELDS), n=1)
            problems.append(f"unknown training setting {key!r} ({where})" +
                            (f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(FIELDS)}"))
            return
        problem = _problem(key, value)
        if problem:
            problems.append(f"{problem} ({where})")
            return
        chosen[key] = tuple(value) if key == "decay_epochs" else float(value) \
            if isinstance(getattr(DEFAULTS, key), float) else value

    if path is not None:
        table = read_config_file(path)
        train = table.get("train", table)
        if not isinstance(train, dict):
            problems.append(f"config file {str(path)!r}: [train] must be a table")
            train = {}
        for key, value in train.items():
            put(key, value, f"config file {path}")
    for text in overrides:
        try:
            dotted, value = parse_override(text)
        except ConfigError as error:
            problems.append(str(error))
            continue
        put(_key(dotted), value, f"--set {text}")
    for key, value in (values or {}).items():
        if value is not None:
            put(key, value, f"--{key.replace('_', '-')}")
    if problems:
        raise ConfigError("; ".join(problems))
    settings = TrainSettings(**chosen)
    if settings.batch_size % settings.accumulate:
        raise ConfigError(f"train.batch_size ({settings.batch_size}) must be a multiple of train.accumulate "
                          f"({settings.accumulate}): the per-process batch is split into equal micro-batches")
    return settings
