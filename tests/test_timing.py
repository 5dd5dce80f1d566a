"""The per-stage time table a build prints (synfiqa.timing)."""
from __future__ import annotations

from synfiqa.config import load_config
from synfiqa.stages.build import build
from synfiqa.timing import StageTimer


def test_stages_accumulate_in_first_run_order_with_the_rest_as_other():
    timer = StageTimer()
    timer.add("detect", 1.0, 1.5)
    timer.add("embed", 2.0, 3.0)
    timer.add("detect", 0.5, 0.5, calls=2)
    assert timer.as_dict() == {"detect": {"wall_s": 1.5, "cpu_s": 2.0, "calls": 3},
                               "embed": {"wall_s": 2.0, "cpu_s": 3.0, "calls": 1}}
    lines = timer.lines(total_wall=5.0)
    assert [line.split()[0] for line in lines] == ["stage", "detect", "embed", "other"]
    assert lines[1].split() == ["detect", "1.50", "30.0%", "2.00"]
    assert lines[3].split() == ["other", "1.50", "30.0%"]       # 5.0 - 1.5 - 2.0


def test_a_build_prints_where_its_time_went(tmp_path):
    printed = []
    build(load_config(None, ["run.degraded=2", 'annotate.chain=["fr"]']), tmp_path / "out", echo=printed.append)
    start = next(i for i, line in enumerate(printed) if line.startswith("where this run's time went"))
    stages = [line.split()[0] for line in printed[start + 2:]]
    for stage in ("load models", "detect+align", "degrade", "annotate", "write", "dataset-wide"):
        assert stage.split()[0] in stages, (stage, stages)
    assert not any("time" in path.name for path in (tmp_path / "out").rglob("*"))   # printed, never stored


def test_a_build_that_compiles_the_ops_names_that_row(tmp_path, monkeypatch):
    """The ops' JIT build happens at the chain's probe (their first call): a build that found no
    compiled ops for its sources says "compile ops" instead of leaving tens of seconds as "other"."""
    from pathlib import Path

    from synfiqa.ops import loader

    library = tmp_path / "ops.so"
    calls = []

    def cached_library(kind):   # absent until the probe has run once: as a first build on a machine
        calls.append(kind)
        return library if len(calls) > 1 else None

    library.write_bytes(b"")
    monkeypatch.setattr(loader, "cached_library", cached_library)

    def table(out: Path) -> list[str]:
        printed = []
        build(load_config(None, ["run.degraded=1", 'annotate.chain=["fr"]']), out, echo=printed.append)
        start = next(i for i, line in enumerate(printed) if line.startswith("where this run's time went"))
        return [line.split()[0] + (" " + line.split()[1] if line.split()[0] in ("compile", "check") else "")
                for line in printed[start + 2:]]

    first, second = table(tmp_path / "first"), table(tmp_path / "second")
    assert "compile ops" in first and "check chain" not in first
    assert "check chain" in second and "compile ops" not in second
