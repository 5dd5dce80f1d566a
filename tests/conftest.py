"""Shared fixtures. The plugin manager is isolated from third-party plugins installed on
the machine: SYNFIQA_DISABLE_PLUGINS=1 keeps only synfiqa's own built-ins unless a test
opts in."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
FACES = TESTS / "data" / "faces"


@pytest.fixture(autouse=True)
def isolate_plugins(monkeypatch):
    monkeypatch.setenv("SYNFIQA_DISABLE_PLUGINS", "1")
    import synfiqa.registry

    monkeypatch.setattr(synfiqa.registry, "_default_registry", None)
    yield


@pytest.fixture
def isolated(monkeypatch, tmp_path) -> Path:
    """No real weights anywhere: every place a model loader searches (SYNFIQA_WEIGHTS, the
    synfiqa, torch and Hugging Face caches under HOME) points into tmp_path, offline."""
    monkeypatch.setenv("SYNFIQA_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


@pytest.fixture
def faces_dir() -> Path:
    return FACES


@pytest.fixture
def faces_copy(tmp_path) -> Path:
    """A writable copy of the licensed test photos."""
    target = tmp_path / "faces"
    shutil.copytree(FACES, target)
    return target


@pytest.fixture(scope="session")
def registry_session():
    import os

    os.environ.setdefault("SYNFIQA_DISABLE_PLUGINS", "1")
    from synfiqa.registry import Registry

    return Registry()


@pytest.fixture(scope="module")
def one_torch_thread():
    """For modules of tiny networks: on a shared 2-core machine two OpenMP threads are about
    100x slower than one. Use it per module (``pytestmark = pytest.mark.usefixtures(
    "one_torch_thread")``), never by setting the thread count at import: that would change it
    for the whole session, and a build's bytes depend on it (test_build_outputs_unchanged)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the tests of marker `ray` (Ray allows one per process): 2 CPUs
    and 2 logical GPUs (Ray hands out GPU ids without any hardware), no dashboard, a small
    object store, no usage report; shut down at the end of the session. Ray 2.60 resolves
    127.0.0.1 to the machine's own address and cannot be held to the loopback interface: its
    token authentication (on by default) is what keeps others out."""
    import os

    ray = pytest.importorskip("ray", reason='ray is not installed (pip install "synfiqa[ray]")')
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=100 * 2**20, logging_level="error")
    yield ray
    ray.shutdown()
