"""The user-supplied FLAME / DECA files: where they are looked for and how they are read.

None of them ships with synfiqa (licences: registry.toml and docs/headmodel.md). Each is a
model asset found by synfiqa.weights.locate (an explicit path, $SYNFIQA_WEIGHTS/<asset>/,
~/.cache/synfiqa/weights/<asset>/); a missing one is the usual WeightsNotFoundError naming
the file and where to get it.

* ``flame-generic-model``: ``generic_model.pkl`` (FLAME 2020), a Python 2 pickle with chumpy
  and scipy.sparse objects, read by the restricted unpickler of :mod:`.safe_pickle`.
* ``flame-landmark-embedding``: DECA's ``landmark_embedding.npy``, a 0-d object array (so a
  pickle) holding a dict of numpy arrays and torch tensors. ``np.load(allow_pickle=True)``
  would run any code a replaced file names, so the header is parsed with numpy's public
  format readers and the pickle payload goes through the same restricted unpickler (torch
  tensors allowed, their storage bytes read with ``torch.load(weights_only=True)``).
* ``flame-texture`` (``FLAME_texture.npz``: ``mean``, ``tex_dir``, 0..255) and
  ``flame-albedo-bfm`` (``FLAME_albedo_from_BFM.npz``: ``MU``, ``PC``, 0..1, DECA's default):
  plain npz files, read with ``allow_pickle=False``.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from synfiqa.errors import CheckpointError

from .safe_pickle import load_pickle_file, plain_array, restricted_load

GENERIC_MODEL_KEYS = ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "kintree_table", "weights")
LANDMARK_KEYS = ("static_lmk_faces_idx", "static_lmk_bary_coords", "dynamic_lmk_faces_idx", "dynamic_lmk_bary_coords")
ASSETS = {
    "generic_model": "flame-generic-model",
    "landmark_embedding": "flame-landmark-embedding",
    "texture": "flame-texture",
    "albedo_bfm": "flame-albedo-bfm",
    "deca": "deca-model",
}


def locate_file(asset: str, path: str | Path | None = None) -> Path:
    """The one file of a declared asset (or ``path`` itself when it names a file)."""
    from synfiqa.weights import locate

    return Path(next(iter(locate(asset, explicit=path or None).files.values())))


def load_generic_model(path: str | Path) -> dict[str, np.ndarray]:
    """FLAME's generic_model.pkl as plain numpy arrays (chumpy and sparse made plain):
    v_template (V,3), f (F,3), shapedirs (V,3,400), posedirs (V,3,36), J_regressor (5,V)
    dense, kintree_table (2,5), weights (V,5), and whatever else the file holds."""
    where = str(path)
    raw = load_pickle_file(path, what="a FLAME generic_model.pkl")
    if not isinstance(raw, dict):
        raise CheckpointError(f"{where}: expected a dict of FLAME arrays, got {type(raw).__name__}")
    missing = [key for key in GENERIC_MODEL_KEYS if key not in raw]
    if missing:
        raise CheckpointError(f"{where}: not a FLAME model: missing {', '.join(missing)}")
    model = {}
    for key, value in raw.items():
        key = key.decode("latin1") if isinstance(key, bytes) else key
        if isinstance(value, (str, bytes)):
            model[key] = value
        else:
            model[key] = plain_array(value, f"{where} [{key}]")
    return model


def load_landmark_embedding(path: str | Path) -> dict[str, np.ndarray]:
    """DECA's landmark_embedding.npy as a dict of numpy arrays (static_*, dynamic_*, full_*)."""
    path = Path(path)
    where = str(path)
    try:
        with open(path, "rb") as handle:
            try:
                version = np.lib.format.read_magic(handle)
                read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                               (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                if read_header is None:
                    raise ValueError(f"npy format version {version}")
                shape, _, dtype = read_header(handle)
            except ValueError as error:
                raise CheckpointError(f"{where}: not a readable .npy file ({error})") from None
            if dtype.hasobject:
                array = restricted_load(handle, where, allow_torch=True, what="a FLAME landmark embedding")
            else:
                raise CheckpointError(f"{where}: a plain {dtype} array of shape {shape}, not the dict of "
                                      f"landmark arrays DECA's landmark_embedding.npy holds")
    except OSError as error:
        raise CheckpointError(f"{where}: cannot be read ({error.strerror or type(error).__name__})") from None
    embedding = array[()] if isinstance(array, np.ndarray) else array
    if not isinstance(embedding, dict):
        raise CheckpointError(f"{where}: expected a dict of landmark arrays, got {type(embedding).__name__}")
    missing = [key for key in LANDMARK_KEYS if key not in embedding]
    if missing:
        raise CheckpointError(f"{where}: not a FLAME landmark embedding: missing {', '.join(missing)}")
    return {key: plain_array(value, f"{where} [{key}]") for key, value in embedding.items()}


def load_texture_space(path: str | Path) -> dict:
    """A FLAME texture space as {"mean": (1, H*W*3), "basis": (H*W*3, K), "kind"}, scaled to 0..1:
    FLAME_texture.npz (mean, tex_dir; 0..255, divided by 255 as DECA does) or
    FLAME_albedo_from_BFM.npz (MU, PC; already 0..1)."""
    where = str(path)
    try:
        with np.load(path, allow_pickle=False) as space:
            keys = set(space.files)
            if {"MU", "PC"} <= keys:
                mean, basis, kind, scale = space["MU"], space["PC"], "BFM", 1.0
            elif {"mean", "tex_dir"} <= keys:
                mean, basis, kind, scale = space["mean"], space["tex_dir"], "FLAME", 1 / 255.0
            else:
                raise CheckpointError(f"{where}: not a FLAME texture space: expected MU and PC "
                                      f"(FLAME_albedo_from_BFM.npz) or mean and tex_dir (FLAME_texture.npz); "
                                      f"found {', '.join(sorted(keys)) or 'nothing'}")
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise CheckpointError(f"{where}: not a readable npz texture space ({type(error).__name__}: "
                              f"{str(error).splitlines()[0][:160] if str(error) else ''})") from None
    mean = np.asarray(mean, dtype=np.float32).reshape(1, -1) * scale
    basis = np.asarray(basis, dtype=np.float32).reshape(mean.shape[1], -1) * scale
    return {"mean": mean, "basis": basis, "kind": kind}


def flame_from_assets(generic_model: str | Path | None = None, landmark_embedding: str | Path | None = None,
                      **options):
    """A :class:`~.flame.Flame` from the located (or given) generic_model.pkl and
    landmark_embedding.npy."""
    from .flame import Flame

    model = load_generic_model(locate_file(ASSETS["generic_model"], generic_model))
    landmarks = load_landmark_embedding(locate_file(ASSETS["landmark_embedding"], landmark_embedding))
    return Flame(model, landmarks, **options)


def texture_from_assets(path: str | Path | None = None, n_tex: int = 50, uv_size: int = 256):
    """A :class:`~.shading.FlameTexture` from ``path``, else the located FLAME_albedo_from_BFM.npz
    (DECA's default), else FLAME_texture.npz."""
    from synfiqa.errors import WeightsNotFoundError

    from .shading import FlameTexture

    if path is None:
        try:
            path = locate_file(ASSETS["albedo_bfm"])
        except WeightsNotFoundError:
            path = locate_file(ASSETS["texture"])
    return FlameTexture(load_texture_space(path), n_tex=n_tex, uv_size=uv_size)
