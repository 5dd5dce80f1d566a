"""Reading PyTorch checkpoints of released face models: tensors only, never arbitrary code,
and one clear error that names the asset, the file and how to get a good copy.

`torch.load(weights_only=True)` refuses any pickled Python object but tensors and plain
containers. PyTorch Lightning checkpoints (AdaFace's) also carry their training
hyper-parameters, sometimes as an `argparse.Namespace`; that class only holds attributes,
so it is allowed. Anything else stops with an error naming the class, rather than
unpickling it.
"""
from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import torch

from synfiqa.errors import CheckpointError

# classes a training script leaves in a checkpoint that hold data only
SAFE_GLOBALS = (argparse.Namespace,)


def _asset_hint(asset: str | None) -> str:
    if not asset:
        return ""
    from synfiqa.weights import asset_entry

    try:
        source = asset_entry(asset).source
    except Exception:   # an unknown asset name: no hint rather than a second error
        return ""
    return f" Model asset {asset!r}: get a good copy: {source}"


def read_payload(path: str | Path, asset: str | None = None):
    """The unpickled checkpoint (tensors and plain containers only)."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist.{_asset_hint(asset)}") from None
    except pickle.UnpicklingError as error:
        text = str(error)
        if "Unsupported global" in text or "not an allowed global" in text:
            blocked = text.split("GLOBAL", 1)[-1].split(" was not")[0].strip() if "GLOBAL" in text else "a Python object"
            raise CheckpointError(
                f"{path}: holds {blocked} besides tensors; synfiqa loads tensors only (torch.load "
                f"weights_only=True). If you trust the file, keep just its weights: "
                f"torch.save(torch.load(PATH, weights_only=False)['state_dict'], 'weights.pth')") from None
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({text.splitlines()[0] if text else 'unpickling failed'})."
                              f"{_asset_hint(asset)}") from None
    except Exception as error:  # torch raises many types for a truncated or foreign file
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({first}).{_asset_hint(asset)}") from None


def find_state_dict(payload, path: str | Path, wrappers=("state_dict", "model_state_dict", "model")) -> dict:
    """The parameter dict inside a checkpoint: the payload itself, or under one of the
    wrapper keys that training scripts use (tried in order)."""
    for wrapper in wrappers:
        if isinstance(payload, dict) and isinstance(payload.get(wrapper), dict):
            payload = payload[wrapper]
            break
    if not isinstance(payload, dict) or not payload:
        raise CheckpointError(f"{path}: expected a state dict (parameter name -> tensor), got {type(payload).__name__}")
    tensors = {k: v for k, v in payload.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: no tensors found (keys: {', '.join(list(map(str, payload))[:6])})")
    return tensors


def strip_prefix(state_dict: dict, prefix: str) -> dict:
    """Keys under `prefix` with it removed; the dict unchanged when no key has it."""
    if not any(key.startswith(prefix) for key in state_dict):
        return state_dict
    return {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}


def listing(items: list[str], limit: int = 8) -> str:
    """The first `limit` names, and how many more: error messages stay readable for a
    checkpoint of an entirely different network."""
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def load_state_dict_strictly(model: torch.nn.Module, state_dict: dict, source: str, ignore=(),
                             description: str | None = None) -> None:
    """Load with every missing, unexpected or mis-shaped key named in one CheckpointError.
    BatchNorm's num_batches_tracked counters may be absent (older checkpoints lack them;
    inference never reads them)."""
    state_dict = {k: v for k, v in state_dict.items() if k not in ignore}
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [f"{k} {tuple(state_dict[k].shape)} (expected {tuple(expected[k].shape)})"
                  for k in expected if k in state_dict and state_dict[k].shape != expected[k].shape]
    problems = [f"{what}: {listing(keys)}" for what, keys in
                (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", mismatched)) if keys]
    if problems:
        raise CheckpointError(f"{source} does not fit {description or type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict({k: state_dict.get(k, expected[k]) for k in expected}, strict=True)
