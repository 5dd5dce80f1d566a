"""Reading PyTorch checkpoints of released face models: tensors only, never arbitrary code,
and one clear error that names the asset, the file and how to get a good copy.

`torch.load(weights_only=True)` refuses any pickled Python object but tensors and plain
containers. PyTorch Lightning checkpoints (AdaFace's) also carry their training
hyper-parameters, sometimes as an `argparse.Namespace`; that class only holds attributes,
so it is allowed. Anything else stops with an error naming the class, rather than
unpickling it.

Every CheckpointError here is one line that names the file: an empty, truncated, foreign
or text file says what it is; a refused pickle says which object it holds and why synfiqa
will not unpickle it (torch's own advice to switch the check off is never repeated).
"""
from __future__ import annotations

import argparse
import io
import pickle
import pickletools
import re
import warnings
import zipfile
from pathlib import Path

import torch

from synfiqa.errors import CheckpointError

# classes a training script leaves in a checkpoint that hold data only
SAFE_GLOBALS = (argparse.Namespace,)

# how much of a pickle the refusal diagnosis reads at most (it parses, never unpickles)
_SCAN_LIMIT = 64 << 20


def one_line(text: str) -> str:
    """The message with every line break (a key or a path may hold one) made a space."""
    return re.sub(r"\s*[\r\n]+\s*", " ", text).strip()


def _error(message: str) -> CheckpointError:
    return CheckpointError(one_line(message))


def _shown(path: Path) -> str:
    """The file's name as the messages print it: as is, or quoted with anything unprintable
    escaped (a line break in a name must not break the message)."""
    text = str(path)
    return text if text.isprintable() else repr(text)


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
    hint = _asset_hint(asset)
    try:
        with open(path, "rb") as handle:
            head = handle.read(64)
    except FileNotFoundError:
        raise _error(f"checkpoint {str(path)!r} does not exist.{hint}") from None
    except IsADirectoryError:
        raise _error(f"{_shown(path)}: a folder, not a checkpoint file.{hint}") from None
    except OSError as error:
        raise _error(f"{_shown(path)}: cannot be read ({error.strerror or type(error).__name__}).{hint}") from None
    if not head:
        raise _error(f"{_shown(path)}: not a readable PyTorch checkpoint: the file is empty (0 bytes), "
                     f"as an interrupted download or copy leaves it.{hint}")
    try:
        with warnings.catch_warnings():
            # torch warns that a protocol-4 pickle may hold what its loader cannot read:
            # the error below says so on one line
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
                return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a truncated or foreign file
        raise _error(f"{_shown(path)}: {_diagnosis(path, head, error)}.{hint}") from None


def _diagnosis(path: Path, head: bytes, error: Exception) -> str:
    """What the file is, when torch's weights-only loader refused or failed to read it."""
    blocked = _blocked_global(path, head, error)
    if blocked:
        return (f"refused: it holds a Python object of class {blocked} that could run code when unpickled; "
                f"synfiqa loads tensors only, so the file was not unpickled. Use a copy that holds the "
                f"weights alone (a state dict of tensors)")
    reason = _reason(error)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return f"not a readable PyTorch checkpoint: a damaged or truncated zip archive ({reason})"
    if len(head) >= 9 and int.from_bytes(head[:8], "little") < (100 << 20) and head[8:9] == b"{":
        return "not a readable PyTorch checkpoint: a safetensors file, and this loader reads torch.save files only"
    if head[:1] == b"\x80":
        return f"not a readable PyTorch checkpoint: a pickle that torch cannot read as one ({reason})"
    if _looks_like_text(head):
        return f"not a readable PyTorch checkpoint: a text file (it begins {head[:24].decode('utf-8', 'replace')!r})"
    return f"not a readable PyTorch checkpoint: unrecognised content ({reason})"


def _reason(error: Exception) -> str:
    """torch's complaint, cut to its first sentence; never its advice on weights_only."""
    text = one_line(str(error))
    if isinstance(error, pickle.UnpicklingError):
        operand = re.search(r"Unsupported operand (\d+)", text)
        return f"unsupported pickle opcode {operand.group(1)}" if operand else "the pickle cannot be read"
    if isinstance(error, KeyError) or not text or "weights_only" in text:
        return f"{type(error).__name__} while reading it"
    first = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0].rstrip(".")
    return first if len(first) <= 160 else first[:157] + "..."


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(char.isprintable() or char in "\t\r\n" for char in text)


def _blocked_global(path: Path, head: bytes, error: Exception) -> str | None:
    """The "module.name" of the Python object that made torch's weights-only loader refuse
    the file: from torch's message, else from parsing (never running) the pickle."""
    if not isinstance(error, pickle.UnpicklingError):
        return None
    named = re.search(r"GLOBAL\s+([\w.]+)", str(error))
    if named:
        return named.group(1)
    try:
        for found in _pickle_globals(path, head):
            if not _allowed(found):
                return found
    except Exception:  # a diagnosis must never raise in place of the error it explains
        return None
    return None


def _pickle_globals(path: Path, head: bytes):
    """Every global a checkpoint's pickles name, read with pickletools (no code runs)."""
    if head.startswith(b"PK\x03\x04"):
        with zipfile.ZipFile(path) as archive:
            for member in archive.infolist():
                if member.filename.endswith(".pkl") and member.file_size <= _SCAN_LIMIT:
                    yield from _globals_in(io.BytesIO(archive.read(member)))
        return
    with open(path, "rb") as handle:
        stream = io.BytesIO(handle.read(_SCAN_LIMIT))
    for _ in range(4):  # torch's legacy format is a few pickles in a row, then raw storage bytes
        if stream.tell() >= len(stream.getbuffer()):
            return
        yield from _globals_in(stream)


def _globals_in(stream):
    """The globals one pickle names; STACK_GLOBAL's module and name are the last two strings
    pushed (directly or from the memo)."""
    pushed: list = []   # the strings pushed so far (None for anything else)
    memo: dict = {}
    for opcode, arg, _ in pickletools.genops(stream):
        name = opcode.name
        if name in ("GLOBAL", "INST"):
            yield ".".join(str(arg).split(" ", 1))
            pushed.append(None)
        elif name == "STACK_GLOBAL":
            module, attribute = pushed[-2:] if len(pushed) >= 2 else (None, None)
            yield (f"{module}.{attribute}" if isinstance(module, str) and isinstance(attribute, str)
                   else "an unnamed global")
            pushed.append(None)
        elif "UNICODE" in name or "STRING" in name:
            pushed.append(arg if isinstance(arg, str) else None)
        elif name == "MEMOIZE":
            memo[len(memo)] = pushed[-1] if pushed else None
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = pushed[-1] if pushed else None
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            pushed.append(memo.get(arg))
        elif opcode.stack_after:
            pushed.append(None)


def _allowed(dotted: str) -> bool:
    """Whether torch's weights-only loader (with SAFE_GLOBALS) accepts this global."""
    allowed = {f"{cls.__module__}.{cls.__qualname__}" for cls in SAFE_GLOBALS}
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        allowed |= set(_get_allowed_globals())
    except Exception:   # a private helper of torch's; without it, torch's and collections' names pass
        return dotted in allowed or dotted.startswith(("torch.", "collections.OrderedDict"))
    return dotted in allowed


def find_state_dict(payload, path: str | Path, wrappers=("state_dict", "model_state_dict", "model")) -> dict:
    """The parameter dict inside a checkpoint: the payload itself, or under one of the
    wrapper keys that training scripts use (tried in order)."""
    for wrapper in wrappers:
        if isinstance(payload, dict) and isinstance(payload.get(wrapper), dict):
            payload = payload[wrapper]
            break
    if not isinstance(payload, dict) or not payload:
        raise _error(f"{path}: expected a state dict (parameter name -> tensor), got {type(payload).__name__}")
    tensors = {k: v for k, v in payload.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise _error(f"{path}: no tensors found (keys: {', '.join(list(map(str, payload))[:6])})")
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
        raise _error(f"{source} does not fit {description or type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict({k: state_dict.get(k, expected[k]) for k in expected}, strict=True)
