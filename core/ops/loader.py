"""Just-in-time build and loading of the compiled ops (csrc/, shipped as `synfiqa_csrc`).

The CPU library holds the op schemas (TORCH_LIBRARY) and the CPU kernels; the CUDA
library adds CUDA kernels and is built only when a GPU is in use (or on request, to check
that the CUDA sources compile). Each build goes into its own folder of the cache, named by
a hash of the sources, the torch version, the compiler flags and the target (CPU features,
CUDA architectures), so a stale library is never loaded and a cached one loads in
milliseconds. A failed build warns once and leaves the ops on their pure-torch reference;
it never breaks `import synfiqa`.
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import sys
import threading
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

OPS = ("blur_resample", "ref_cosine", "greedy_unique", "rasterize")
CPU_FLAGS = ["-O3", "-march=native", "-fopenmp"]
CPU_LDFLAGS = ["-fopenmp"]
CUDA_FLAGS = ["-O3"]
DEFAULT_COMPILE_ONLY_ARCHS = "8.0;9.0"
DISABLE_ENV = "SYNFIQA_NO_NATIVE_OPS"
CACHE_ENV = "SYNFIQA_OPS_CACHE"


@dataclass
class BuildState:
    """What happened to one library (cpu or cuda) in this process."""
    loaded: bool = False
    error: str | None = None
    path: str | None = None
    warned: bool = False
    attempted: bool = False
    log: list[str] = field(default_factory=list)


_lock = threading.RLock()
_states = {"cpu": BuildState(), "cuda": BuildState()}


def source_dir() -> Path:
    import synfiqa_csrc

    return Path(synfiqa_csrc.__file__).resolve().parent


def cache_root() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser()
    return base / "synfiqa" / "ops"


def cpu_sources() -> list[Path]:
    root = source_dir()
    return [root / "register.cpp", *sorted((root / "cpu").glob("*.cpp"))]


def cuda_sources() -> list[Path]:
    return sorted((source_dir() / "cuda").glob("*.cu")) + sorted((source_dir() / "cuda").glob("*.cpp"))


def _cpu_signature() -> str:
    """-march=native code runs only on CPUs with the same features: key the cache by them."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line
                break
    except OSError:
        pass
    return f"{platform.machine()}|{platform.processor()}|{flags}"


def _hash(paths: list[Path], *extra: str) -> str:
    digest = hashlib.sha256()
    root = source_dir()
    headers = sorted(root.rglob("*.h")) + sorted(root.rglob("*.cuh"))
    for path in sorted(set(paths) | set(headers)):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    for item in (torch.__version__, sys.version.split()[0], *extra):
        digest.update(item.encode())
    return digest.hexdigest()[:16]


def cuda_arch_list() -> str:
    """TORCH_CUDA_ARCH_LIST if set; else the visible GPUs' architectures; else a default
    for compile-only checks (unset, torch raises IndexError when no GPU is visible)."""
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return os.environ["TORCH_CUDA_ARCH_LIST"]
    if torch.cuda.is_available():
        archs = sorted({"%d.%d" % torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        return ";".join(archs)
    return DEFAULT_COMPILE_ONLY_ARCHS


def _cuda_environment() -> dict[str, str]:
    """The settings the CUDA build needs on a machine where torch guessed wrong: CUDA_HOME
    pointing at the toolkit (guessed from the nvcc wrapper, torch links against a folder
    without libcudart: "cannot find -lcudart"), and an explicit architecture list (unset, torch
    reads it from the visible GPUs and raises IndexError when there is none)."""
    env = {"TORCH_CUDA_ARCH_LIST": cuda_arch_list()}
    if not os.environ.get("CUDA_HOME"):
        for candidate in ("/usr/local/cuda", os.environ.get("CUDA_PATH", "")):
            if candidate and (Path(candidate) / "bin" / "nvcc").exists():
                env["CUDA_HOME"] = candidate
                break
    return env


def _build_spec(kind: str) -> tuple[str, list[Path], dict, dict[str, str]]:
    """(library name, sources, cpp_extension.load arguments, environment) of one library."""
    if kind == "cpu":
        sources = cpu_sources()
        key = _hash(sources, *CPU_FLAGS, _cpu_signature())
        extra = {"extra_cflags": CPU_FLAGS, "extra_ldflags": CPU_LDFLAGS}
        env = {}
    else:
        sources = cuda_sources()
        env = _cuda_environment()
        key = _hash(sources, *CUDA_FLAGS, env["TORCH_CUDA_ARCH_LIST"], str(torch.version.cuda))
        extra = {"extra_cflags": ["-O3"], "extra_cuda_cflags": CUDA_FLAGS, "with_cuda": True}
    return f"synfiqa_ops_{kind}_{key}", sources, extra, env


def cached_library(kind: str) -> Path | None:
    """The compiled library for the current sources and target, if the cache has it."""
    name = _build_spec(kind)[0]
    library = cache_root() / name / f"{name}.so"
    return library if library.exists() else None


def _cpp_extension():
    """torch.utils.cpp_extension, imported without its import-time warning about guessing
    CUDA_HOME on machines without a GPU (the CUDA build sets CUDA_HOME itself)."""
    import logging

    logger = logging.getLogger("torch.utils.cpp_extension")
    disabled, logger.disabled = logger.disabled, True
    try:
        from torch.utils import cpp_extension
    finally:
        logger.disabled = disabled
    return cpp_extension


def _compile(kind: str, verbose: bool, root: Path | None = None) -> Path:
    cpp_extension = _cpp_extension()

    name, sources, extra, env = _build_spec(kind)
    build_dir = (cache_root() if root is None else Path(root)) / name
    build_dir.mkdir(parents=True, exist_ok=True)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    # cpp_extension reads CUDA_HOME once, when it is first imported: set its copy too.
    saved_cuda_home = cpp_extension.CUDA_HOME
    if "CUDA_HOME" in env:
        cpp_extension.CUDA_HOME = env["CUDA_HOME"]
    try:
        cpp_extension.load(name=name, sources=[str(s) for s in sources], build_directory=str(build_dir),
                           is_python_module=False, verbose=verbose, **extra)
    finally:
        cpp_extension.CUDA_HOME = saved_cuda_home
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    library = build_dir / f"{name}.so"
    return library if library.exists() else build_dir


def _load(kind: str, verbose: bool = False, force: bool = False) -> bool:
    """Build (or find in the cache) and load one library; True when it is loaded."""
    state = _states[kind]
    with _lock:
        if state.loaded:
            return True
        if state.attempted and not force:
            return False
        state.attempted = True
        if kind == "cuda" and not _load("cpu", verbose, force):
            state.error = "the CPU library (which defines the op schemas) is not loaded"
            return False
        try:
            state.path = str(_compile(kind, verbose))
            state.loaded = True
            state.error = None
            if kind == "cpu":
                from synfiqa.ops import fake  # noqa: F401  (registers the fake kernels)
            return True
        except Exception as error:  # a compiler error, a missing toolchain, a link error...
            state.error = _summarise(error)
            state.log.append(traceback.format_exc())
            if not state.warned:
                state.warned = True
                warnings.warn(f"synfiqa ops: the native {kind.upper()} build failed ({state.error}); "
                              f"falling back to the pure-torch reference. `synfiqa ops build` shows "
                              f"the compiler output.", RuntimeWarning, stacklevel=4)
            return False


def _summarise(error: Exception) -> str:
    """One line for messages: the first compiler or linker error line when there is one."""
    text = str(error)
    lines = text.splitlines()
    for line in lines:
        if "error:" in line.lower() and not line.startswith("Error building extension"):
            return f"{type(error).__name__}: {line.strip()[:300]}"
    return f"{type(error).__name__}: {(lines[0] if lines else '')[:300]}"


def native_disabled() -> bool:
    return os.environ.get(DISABLE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def ensure_cpu(verbose: bool = False) -> bool:
    return _load("cpu", verbose)


def ensure_cuda(verbose: bool = False) -> bool:
    return _load("cuda", verbose)


def build(kinds: tuple[str, ...] = ("cpu",), verbose: bool = False) -> dict[str, BuildState]:
    """Compile ahead of time (retrying anything that failed earlier in this process)."""
    for kind in kinds:
        _load(kind, verbose, force=True)
    return {kind: _states[kind] for kind in kinds}


def build_into(kind: str, root: Path, verbose: bool = False) -> Path:
    """Compile and load one library under `root`, raising on failure (no fallback): the
    check that the sources compile, e.g. the CUDA ones on a machine without a GPU."""
    if kind == "cuda" and not ensure_cpu(verbose):
        raise RuntimeError(f"the CPU library is not loaded: {_states['cpu'].error}")
    with _lock:
        path = _compile(kind, verbose, root)
        _states[kind] = BuildState(loaded=True, path=str(path), attempted=True)
        return path


def state(kind: str) -> BuildState:
    return _states[kind]


def has_kernel(op: str, dispatch_key: str) -> bool:
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"synfiqa::{op}", dispatch_key)
    except RuntimeError:
        return False


def cached_builds() -> list[Path]:
    root = cache_root()
    return sorted(p for p in root.glob("synfiqa_ops_*") if p.is_dir()) if root.exists() else []


def clear_cache() -> int:
    removed = 0
    for path in cached_builds():
        shutil.rmtree(path, ignore_errors=True)
        removed += 1
    return removed
