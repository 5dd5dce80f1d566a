"""`synfiqa build --engine ray` on a local Ray cluster (tests/conftest.py's `ray_cluster`: 2 CPUs,
2 logical GPUs): the Ray build writes the same files as the local one, each worker gets its own
GPU, and a worker lost mid-identity (restarted by Ray, or past its restarts and replaced by
another), or an interrupted build resumed, still ends identical.

The builds are small (the four test identities, 4 samples each) and every one runs with one
torch thread, on the driver and in the workers (a build's bytes depend on the count)."""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from synfiqa.config import load_config
from synfiqa.errors import ConfigError
from synfiqa.stages.build import build
from synfiqa.stages.engines import LocalEngine, make_engine

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = ["run.degraded=4"]
IDENTITIES = ["ardern", "macron", "obama", "sunak"]


def quiet(*_):
    pass


def file_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file of a build (images, Quality-Scores.txt, manifest, records, ...),
    less the lock file, which only says which process held the folder."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "lock"}


@pytest.fixture(scope="module")
def local_build(tmp_path_factory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("local") / "out"
    result = build(load_config(None, SMALL), out, echo=quiet, engine=LocalEngine())
    assert result["engine"]["identities"] == 4
    return file_hashes(out)


def ray_engine(**options):
    from synfiqa.stages.engines import RayEngine

    return RayEngine(echo=quiet, **options)


@pytest.mark.ray
def test_ray_build_equals_the_local_build_each_worker_its_own_gpu_a_lost_worker_restarted(ray_cluster, local_build,
                                                                                          tmp_path):
    out = tmp_path / "ray"
    # the first worker to build obama exits after writing its files, before returning its
    # record: Ray restarts it and builds obama again from scratch
    engine = ray_engine(testing_exit_once=("obama", str(tmp_path / "exited")))
    result = build(load_config(None, SMALL), out, echo=quiet, engine=engine)
    assert (tmp_path / "exited").is_file()
    hashes = file_hashes(out)
    assert {"Quality-Scores.txt", "manifest.jsonl", "summary.json", "data/obama/0.jpg"} <= set(hashes)
    assert hashes == local_build
    workers = result["engine"]["workers"]
    assert len(workers) == 2                                                    # one per logical GPU
    assert sorted(gpu for w in workers for gpu in w["gpu_ids"]) == ["0", "1"]   # each its own
    assert sum(w["identities"] for w in workers) == 4
    restarted = [w for w in workers if len(w["pids"]) == 2]                     # a new process, same worker
    assert len(restarted) == 1 and not restarted[0]["lost"] and result["engine"]["retried"] == []
    assert "engine" not in (out / "summary.json").read_text()    # the report is printed, never stored


@pytest.mark.ray
def test_an_interrupted_ray_build_resumes_and_a_worker_past_its_restarts_hands_over(ray_cluster, local_build,
                                                                                     tmp_path):
    out = tmp_path / "ray"
    config = load_config(None, SMALL)
    first = build(config, out, echo=quiet, engine=ray_engine(), stop_after=1)
    assert first["stopped_after"] == 1
    built = sorted(p.stem for p in (out / ".synfiqa" / "identities").glob("*.json"))
    assert len(built) == 1   # the other worker was stopped in the middle of its identity, before its record
    target = next(name for name in IDENTITIES if name not in built)
    lines = []
    # no restart allowed: the worker that exits is lost, and its identity goes to the other one
    engine = ray_engine(max_restarts=0, max_task_retries=0, testing_exit_once=(target, str(tmp_path / "exited")))
    result = build(config, out, echo=lines.append, engine=engine)
    assert "identities: 4 (1 already built)" in lines
    assert file_hashes(out) == local_build
    assert result["engine"]["retried"] == [target]
    assert [w["lost"] for w in result["engine"]["workers"]].count(True) == 1
    assert sum(w["identities"] for w in result["engine"]["workers"]) == 3


def test_ray_options_are_refused_with_the_local_engine():
    with pytest.raises(ConfigError, match="--ray-address is for --engine ray only"):
        make_engine("local", address="auto")
    assert make_engine("local").name == "local"


def test_a_ray_address_where_nothing_listens_is_one_line_not_a_hang():
    from synfiqa.stages.engines import EngineError, _check_reachable

    with pytest.raises(EngineError, match="cannot reach a Ray cluster at '127.0.0.1:1'"):
        _check_reachable("127.0.0.1:1")
    with pytest.raises(EngineError, match="must be auto or HOST:PORT"):
        _check_reachable("headnode:http")
    _check_reachable("auto")   # left to Ray, which fails fast when no cluster runs here


def test_engine_ray_without_ray_installed_is_one_line(monkeypatch, tmp_path):
    from synfiqa_cli.main import cli

    monkeypatch.setitem(sys.modules, "ray", None)   # `import ray` raises ImportError
    result = CliRunner().invoke(cli, ["build", "--out", str(tmp_path / "out"), "--engine", "ray"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        'Error: the ray engine needs Ray, which is not installed: pip install "synfiqa[ray]"']
    assert not (tmp_path / "out").exists()
