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
