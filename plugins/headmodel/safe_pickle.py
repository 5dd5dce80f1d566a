"""Restricted unpickling of the FLAME assets: arrays only, never arbitrary code.

FLAME's ``generic_model.pkl`` was written by Python 2 with chumpy installed: some of its
arrays (``shapedirs``, at times ``v_template``) are ``chumpy.ch.Ch`` objects, and its
``J_regressor`` is a ``scipy.sparse.csc_matrix``. DECA reads it with a plain
``pickle.load``, which needs chumpy (broken on modern numpy) and would run whatever code a
tampered file names. Here every global the pickle names is looked up in a short list:

* numpy's array and scalar reconstruction (``_reconstruct``, ``ndarray``, ``dtype``, ``scalar``);
* any ``chumpy`` class -> :class:`ChumpyStub`, which keeps the pickled state (a chumpy ``Ch``
  keeps its value in ``__dict__['x']``) and runs no chumpy code;
* scipy's compressed/coordinate sparse matrices -> :class:`SparseStub`, which keeps the
  arrays and turns them dense itself (scipy is not imported);
* ``copy_reg._reconstructor`` (Python 2 protocols 0/1), for those stubs only;
* ``set``/``frozenset``/``object`` (chumpy's bookkeeping), ``_codecs.encode`` for latin-1
  text only (how Python 3 writes bytes at protocol 2, should the file have been re-saved) and, where asked for (the landmark
  embedding, which holds torch tensors), torch's tensor rebuild with the storage bytes read
  by ``torch.load(weights_only=True)``.

Anything else stops with a one-line :class:`~synfiqa.errors.CheckpointError` naming the
global, before it is imported.
"""
from __future__ import annotations

import _compat_pickle
import collections
import io
import pickle
from pathlib import Path

import numpy as np

from synfiqa.errors import CheckpointError


def _numpy_multiarray():
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray
    return multiarray


class ChumpyStub:
    """What a pickled chumpy object becomes: its class name and its pickled state."""

    state: dict = {}  # replaced (never mutated) by __setstate__; NEWOBJ runs no __init__

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        self.state = dict(state) if isinstance(state, dict) else {"x": state}

    def array(self, where: str) -> np.ndarray:
        value = self.state.get("x")
        if isinstance(value, ChumpyStub):
            return value.array(where)
        if value is None or not isinstance(value, (np.ndarray, np.generic, list, tuple, float, int)):
            raise CheckpointError(
                f"{where}: a chumpy {self.chumpy_class} object without a stored array (state keys: "
                f"{', '.join(sorted(map(str, self.state))) or 'none'}); re-save the model with plain numpy arrays")
        return np.asarray(value)

    chumpy_class = "chumpy.ch.Ch"


class SparseStub:
    """What a pickled scipy.sparse matrix becomes: its arrays, made dense by :meth:`dense`."""

    sparse_format = "csc"
    state: dict = {}

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:
            state = {**(state[0] or {}), **(state[1] or {})}
        self.state = dict(state)

    def dense(self, where: str) -> np.ndarray:
        state = self.state
        shape = tuple(int(n) for n in (state.get("_shape") or state.get("shape") or ()))
        if len(shape) != 2:
            raise CheckpointError(f"{where}: a sparse matrix without a 2-D shape")
        out = np.zeros(shape, dtype=np.float64)
        data = np.asarray(state.get("data"), dtype=np.float64)
        if self.sparse_format in ("csc", "csr"):
            indices = np.asarray(state["indices"], dtype=np.int64)
            indptr = np.asarray(state["indptr"], dtype=np.int64)
            outer = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
            rows, cols = (indices, outer) if self.sparse_format == "csc" else (outer, indices)
        else:  # coo: row/col (old scipy) or coords (new scipy)
            if "coords" in state:
                rows, cols = (np.asarray(c, dtype=np.int64) for c in state["coords"])
            else:
                rows, cols = np.asarray(state["row"], dtype=np.int64), np.asarray(state["col"], dtype=np.int64)
        np.add.at(out, (rows, cols), data)  # duplicates add up, as scipy's todense does
        return out


_SPARSE_CLASSES = {f"{fmt}_{kind}": fmt for fmt in ("csc", "csr", "coo") for kind in ("matrix", "array")}
_stub_cache: dict[tuple[str, str], type] = {}


def _stub(base: type, module: str, name: str, **attributes) -> type:
    key = (module, name)
    if key not in _stub_cache:
        _stub_cache[key] = type(name, (base,), dict(attributes, __module__="synfiqa_plugins.headmodel.safe_pickle"))
    return _stub_cache[key]


def _reconstructor(cls, base, state):
    """copy_reg._reconstructor, for the stubs only (Python 2 pickles of new-style classes)."""
    if not (isinstance(cls, type) and issubclass(cls, (ChumpyStub, SparseStub)) and base is object and state is None):
        raise pickle.UnpicklingError("copy_reg._reconstructor is allowed only for chumpy and scipy.sparse objects")
    return cls.__new__(cls)


def _latin1_encode(text, encoding="latin1"):
    """_codecs.encode as Python 3 pickles bytes at protocols < 3: latin-1 only."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError("_codecs.encode is allowed only for latin-1 text")
    return text.encode("latin1")


def _storage_from_bytes(data: bytes):
    import torch

    return torch.load(io.BytesIO(data), weights_only=True)


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only the globals listed in the module docstring."""

    def __init__(self, file, *, allow_torch: bool = False, **kwargs):
        kwargs.setdefault("encoding", "latin1")  # Python 2 str -> numpy's raw bytes
        super().__init__(file, **kwargs)
        self.allow_torch = allow_torch
        self.refused: str | None = None

    def find_class(self, module: str, name: str):
        original = f"{module}.{name}"
        # Python 2 names (copy_reg, __builtin__) as pickle's own fix_imports maps them
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        found = self._resolve(module, name)
        if found is None:
            self.refused = original
            raise pickle.UnpicklingError(f"refused global {original}")
        return found

    def _resolve(self, module: str, name: str):
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in ("_reconstruct", "scalar"):
            return getattr(_numpy_multiarray(), name)
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if module in ("numpy.dtypes",) and name.endswith("DType"):
            return getattr(np.dtypes, name, None)
        if module == "chumpy" or module.startswith("chumpy."):
            return _stub(ChumpyStub, module, name, chumpy_class=f"{module}.{name}")
        if (module == "scipy.sparse" or module.startswith("scipy.sparse.")) and name in _SPARSE_CLASSES:
            return _stub(SparseStub, module, name, sparse_format=_SPARSE_CLASSES[name])
        if module == "copyreg" and name == "_reconstructor":
            return _reconstructor
        if module == "_codecs" and name == "encode":
            return _latin1_encode
        if module == "builtins" and name in ("set", "frozenset", "object"):
            return {"set": set, "frozenset": frozenset, "object": object}[name]
        if self.allow_torch:
            if module == "collections" and name == "OrderedDict":
                return collections.OrderedDict
            if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
                import torch._utils

                return getattr(torch._utils, name)
            if module == "torch.storage" and name == "_load_from_bytes":
                return _storage_from_bytes
        return None


def restricted_load(handle, where: str, *, allow_torch: bool = False, what: str = "a FLAME asset"):
    """Unpickle from an open binary file with :class:`RestrictedUnpickler`; any refusal or
    damage is one CheckpointError that names ``where``."""
    unpickler = RestrictedUnpickler(handle, allow_torch=allow_torch)
    try:
        return unpickler.load()
    except CheckpointError:
        raise
    except Exception as error:
        if unpickler.refused:
            allowed = "numpy arrays, scipy.sparse matrices and chumpy arrays" + (", torch tensors" if allow_torch else "")
            raise CheckpointError(
                f"{where}: refused to unpickle {unpickler.refused}: {what} holds only {allowed}, "
                f"and synfiqa runs no other pickled code (a damaged or tampered file?)") from None
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"{where}: not a readable pickle ({type(error).__name__}: {reason[:160]})") from None


def load_pickle_file(path: str | Path, *, allow_torch: bool = False, what: str = "a FLAME asset"):
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            return restricted_load(handle, str(path), allow_torch=allow_torch, what=what)
    except OSError as error:
        raise CheckpointError(f"{path}: cannot be read ({error.strerror or type(error).__name__})") from None


def plain_array(value, where: str) -> np.ndarray:
    """A value of an unpickled FLAME dict as a numpy array (chumpy and sparse made plain)."""
    if isinstance(value, ChumpyStub):
        return value.array(where)
    if isinstance(value, SparseStub):
        return value.dense(where)
    if hasattr(value, "detach"):  # a torch tensor
        return value.detach().cpu().numpy()
    return np.asarray(value)
