"""The compiled ops against their baselines, side by side in one process (the comparisons of
tests/benchmarks/baselines.py, which `python -m tests.benchmarks.baselines` prints as a table).

    pytest tests/benchmarks/test_bench_ops.py --benchmark-enable --benchmark-group-by=group

times the full sizes (blur 112/224 x B=64/256, ref_cosine N=1e6 x 512, greedy_unique 1e4 and
1e5 x 512, rasterize 512x512 x 10 on a FLAME-sized mesh: a few minutes). Without --benchmark-enable (the default) each contender runs once
on small sizes as a smoke test. Either way the native results are checked against their
references first, so a fast wrong answer fails."""
from __future__ import annotations

import gc
import json

import pytest
import torch

from tests.benchmarks import baselines as bench

BLUR = ["synfiqa native", "synfiqa reference (torch)", "kornia batched", "original per-image (scipy+PIL)",
        "OpenCV per image"]
COSINE = ["synfiqa native", "read the embeddings once", "synfiqa reference (torch)",
          "per-sample Python loop, torch as the original", "per-sample Python loop, numpy"]
GREEDY = ["synfiqa native", "plain greedy loop (torch)", "blocked reference (torch float64)"]
RASTERIZE = ["synfiqa native", "synfiqa reference (torch)"]

CASES = ([(f"blur {size} B={batch}", name) for size in (112, 224) for batch in (64, 256) for name in BLUR]
         + [("ref_cosine", name) for name in COSINE]
         + [("greedy small", name) for name in GREEDY]
         + [("greedy large", "synfiqa native")]
         + [("rasterize", name) for name in RASTERIZE])

_built: dict = {}


def comparison_for(case: str, full: bool) -> bench.Comparison:
    """Builds one case's data once and keeps only that case (ref_cosine holds 2 GB)."""
    key = (case, full)
    if key not in _built:
        _built.clear()
        gc.collect()
        if case.startswith("blur"):
            size, batch = (int(part) for part in case.removeprefix("blur ").split(" B="))
            comparisons = bench.blur_comparisons(sizes=(size,), batches=(batch if full else 8,), subset=16 if full else 4)
        elif case == "ref_cosine":
            comparisons = bench.ref_cosine_comparisons(n=1_000_000 if full else 20_000, loop_rows=20_000 if full else 500)
        elif case == "rasterize":
            comparisons = bench.rasterize_comparisons(size=512 if full else 96, batch=10 if full else 2)
        elif case == "greedy small":
            comparisons = bench.greedy_comparisons(n_loop=10_000 if full else 1_000, n_big=0)
        else:
            comparisons = bench.greedy_comparisons(n_loop=10, n_big=100_000 if full else 3_000)
            next(comparisons)
        _built[key] = next(comparisons)
        check_native(_built[key])
    return _built[key]


def check_native(comparison: bench.Comparison) -> None:
    """The contender being timed must be right: compare it with its reference on the same data."""
    native = next(c for c in comparison.contenders if c.name == "synfiqa native")
    out = native.fn()
    if comparison.op == "blur_resample":
        reference = next(c for c in comparison.contenders if c.name.startswith("synfiqa reference")).fn()
        assert int((out.int() - reference.int()).abs().max()) <= 1
    elif comparison.op == "rasterize":  # the twin: bit for bit
        reference = next(c for c in comparison.contenders if c.name.startswith("synfiqa reference")).fn()
        assert all(torch.equal(a, b) for a, b in zip(out, reference))
        assert 0.2 < float((out[0] >= 0).float().mean()) < 0.8
    elif comparison.op == "ref_cosine":
        assert out.shape == (native.units,) and not bool(out.isnan().any())
        assert bool((out.abs() <= 1.0001).all())
    elif any(c.name.startswith("blocked") for c in comparison.contenders):  # the op's twin: exactly
        assert torch.equal(out, next(c for c in comparison.contenders if c.name.startswith("blocked")).fn())
    else:  # the large greedy case: the duplicates (about 20%) go, the rest stay
        assert 0.7 * native.units < int(out.sum()) < 0.9 * native.units


@pytest.mark.parametrize("case, contender", CASES, ids=[f"{c}-{n}" for c, n in CASES])
def test_ops_against_baselines(benchmark, case, contender):
    comparison = comparison_for(case, full=not benchmark.disabled)
    chosen = next(c for c in comparison.contenders if c.name.startswith(contender))
    benchmark.group = comparison.title
    benchmark.extra_info.update({"units_per_call": chosen.units, "unit": comparison.unit, "contender": chosen.name})
    benchmark.pedantic(chosen.fn, rounds=chosen.rounds, iterations=1, warmup_rounds=1)
    if not benchmark.disabled and benchmark.stats is not None:
        benchmark.extra_info["throughput"] = chosen.units / benchmark.stats.stats.min


def test_benchmark_inputs_are_the_papers():
    """The blur comparisons use the plugin's own kernels and factors, not flat ones."""
    _, kernels, factors = bench.blur_batch(256, 32)
    assert float(factors.min()) >= 2.0 and float(factors.max()) <= 9.0
    delta = (kernels.flatten(1).max(dim=1).values == 1.0).float().mean()
    assert 0.1 < float(delta) < 0.3  # blur_level <= 1 for about 18% of samples
    assert torch.allclose(kernels.sum(dim=(1, 2)), torch.ones(256), atol=1e-5)


def test_the_comparison_table_prints_every_contender_and_its_ratio(capsys):
    """`python -m tests.benchmarks.baselines` (formerly `synfiqa ops bench`): JSON and table."""
    bench.main(["--quick", "--op", "greedy_unique", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["machine"]["cores"] >= 1
    rows = {row["contender"]: row for row in report["rows"]}
    assert set(rows) == set(GREEDY)
    assert rows["synfiqa native"]["speedup"] == 1.0
    assert all(row["throughput"] > 0 and row["unit"] == "rows" for row in rows.values())
    table = bench.format_table(report["rows"])
    assert "| greedy_unique N=3e+03 D=512 | plain greedy loop (torch) |" in table


def test_rasterize_benchmark_mesh_is_flame_sized():
    verts, faces = bench.flame_sized_mesh(2)
    assert verts.shape == (2, 5002, 3) and faces.shape == (10000, 3)
    assert int(faces.min()) == 0 and int(faces.max()) == 5001
