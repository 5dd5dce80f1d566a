"""End-to-end builds on the licensed test photos: layout, scores, bad input, resume."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from synfiqa.config import load_config
from synfiqa.layout import read_quality_scores
from synfiqa.stages.build import build
from synfiqa_cli.main import cli

SMALL = ["run.degraded=6"]


def read_manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    summary = build(load_config(None, SMALL), out, echo=lambda *_: None)
    return out, summary


def test_layout_and_one_score_per_degraded_image(demo_build):
    out, summary = demo_build
    identities = sorted(p.name for p in (out / "data").iterdir())
    assert identities == ["ardern", "macron", "obama", "sunak"]
    assert sorted(p.name for p in (out / "data" / "ardern").iterdir()) == \
        sorted(["Ref-0.jpg"] + [f"{k}.jpg" for k in range(6)])   # two photos: one reference, one sample source
    scores = read_quality_scores(out / "Quality-Scores.txt")
    degraded = sorted(f"/{p.parent.name}/{p.name}" for p in (out / "data").glob("*/[0-9]*.jpg"))
    assert sorted(scores) == degraded
    values = np.array(list(scores.values()))
    assert values.min() == 0.0 and values.max() == 1.0
    assert summary["degraded"] == 24 and summary["references"] == 4
    for path in (out / "data").rglob("*.jpg"):
        with Image.open(path) as image:
            assert image.size == (112, 112) and image.mode == "RGB"


def test_manifest_rows_carry_params_scores_and_owners(demo_build):
    out, _ = demo_build
    rows = read_manifest(out)
    scores = read_quality_scores(out / "Quality-Scores.txt")
    degraded = [r for r in rows if r["role"] == "degraded"]
    assert len(degraded) == 24
    for row in degraded:
        assert {"blur-downscale.low_scale", "blur-downscale.blur_level", "pose.abs_yaw"} <= set(row["params"])
        assert set(row["scores"]) == {"fr", "sd", "mr"}
        assert row["partial"] == ["computed without vl"]
        assert row["plugins"]["embedder"].startswith("sface (synfiqa")
        key = "/" + row["path"].removeprefix("data/")
        assert scores[key] == pytest.approx(row["scores"]["mr"], abs=1e-6)
    summary = json.loads((out / "summary.json").read_text())
    assert "vl" in summary["unavailable_annotators"]


def test_mr_score_recomputes_from_the_manifest(demo_build):
    from scipy.stats import rankdata

    out, _ = demo_build
    degraded = [r for r in read_manifest(out) if r["role"] == "degraded"]
    n = len(degraded)
    axes = ["pose.abs_yaw", "blur-downscale.low_scale", "blur-downscale.blur_level"]
    ranks = [(n - rankdata([r["params"][a] for r in degraded])) / n for a in axes]
    sd = np.min(ranks, axis=0)
    raw = np.array([r["scores"]["fr"] for r in degraded]) + 0.5 * sd
    expected = (raw - raw.min()) / (raw.max() - raw.min())
    assert np.allclose([r["scores"]["sd"] for r in degraded], sd)
    assert np.allclose([r["scores"]["mr"] for r in degraded], expected)


def test_same_seed_same_dataset_other_seed_other_samples(demo_build, tmp_path):
    out, _ = demo_build
    again = tmp_path / "again"
    build(load_config(None, SMALL), again, echo=lambda *_: None)
    assert tree_bytes(again) == tree_bytes(out)
    other = tmp_path / "other"
    build(load_config(None, SMALL + ["run.seed=1"]), other, echo=lambda *_: None)
    assert (other / "data/obama/0.jpg").read_bytes() != (out / "data/obama/0.jpg").read_bytes()
    assert (other / "data/obama/Ref-0.jpg").read_bytes() == (out / "data/obama/Ref-0.jpg").read_bytes()


def test_shards_merge_into_the_same_dataset(demo_build, tmp_path):
    out, _ = demo_build
    sharded = tmp_path / "sharded"
    config = load_config(None, SMALL)
    for index in range(2):
        result = build(config, sharded, shard=(index, 2), echo=lambda *_: None)
        assert result["shard"] == [index, 2]
    assert not (sharded / "Quality-Scores.txt").exists()
    build(config, sharded, echo=lambda *_: None)
    assert tree_bytes(sharded) == tree_bytes(out)


def test_killed_build_resumes_byte_identical(demo_build, tmp_path):
    out, _ = demo_build
    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "synfiqa_cli", "build", "--out", str(killed), "--no-progress",
               *[arg for item in SMALL for arg in ("--set", item)]]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    records = killed / ".synfiqa" / "identities"
    deadline = time.time() + 120
    while time.time() < deadline and not (records.is_dir() and any(records.glob("*.json"))):
        if process.poll() is not None:
            pytest.fail(f"build ended before it could be killed: {process.stderr.read().decode()}")
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = len(list(records.glob("*.json")))
    assert 1 <= done < 4, "the kill should land mid-build"
    assert not (killed / "Quality-Scores.txt").exists()
    result = CliRunner().invoke(cli, ["build", "--out", str(killed), *[a for i in SMALL for a in ("--set", i)]])
    assert result.exit_code == 0, result.output
    assert "resuming" in result.output and f"({done} already built)" in result.output
    assert not list(killed.rglob(".*.tmp-*"))
    assert tree_bytes(killed) == tree_bytes(out)


def make_bad_input_folder(root: Path, faces: Path) -> Path:
    root.mkdir()
    for name in ("ardern", "corrupt", "noface", "gray", "rgba", "exif", "mixed"):
        (root / name).mkdir()
    shutil.copy(faces / "ardern_1.jpg", root / "ardern" / "a.jpg")
    data = (faces / "sunak_1.jpg").read_bytes()
    (root / "corrupt" / "half.jpg").write_bytes(data[: len(data) // 3])
    gradient = np.tile(np.linspace(0, 255, 200, dtype=np.uint8), (200, 1))
    Image.fromarray(np.stack([gradient] * 3, axis=2)).save(root / "noface" / "wall.png")
    Image.open(faces / "obama_1.jpg").convert("L").save(root / "gray" / "g.jpg")
    rgba = Image.open(faces / "sunak_1.jpg").convert("RGBA")
    rgba.putalpha(200)
    rgba.save(root / "rgba" / "r.png")
    # pixels stored rotated, with the EXIF orientation that turns them upright again
    upright = Image.open(faces / "macron_2.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    upright.transpose(Image.Transpose.ROTATE_90).save(root / "exif" / "e.jpg", exif=exif)
    shutil.copy(faces / "obama_1.jpg", root / "mixed" / "ok.jpg")
    (root / "mixed" / "notes.txt").write_text("not an image")
    (root / "mixed" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (root / "mixed" / "noise.jpg").write_bytes(bytes(range(256)) * 4)
    Image.open(faces / "obama_1.jpg").resize((12, 10)).save(root / "mixed" / "tiny.png")
    return root


def test_bad_inputs_are_skipped_with_reasons(faces_dir, tmp_path):
    source = make_bad_input_folder(tmp_path / "input", faces_dir)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["build", "--out", str(out), "--input", str(source), "--set", "run.degraded=2"])
    assert result.exit_code == 0, result.output
    rows = read_manifest(out)
    skipped = sorted((r["identity"], r["source"], r["reason"]) for r in rows if r["status"] == "skipped")
    assert skipped == [("corrupt", "half.jpg", "corrupt-image"), ("mixed", "broken.png", "corrupt-image"),
                       ("mixed", "noise.jpg", "unreadable-image"), ("mixed", "tiny.png", "image-too-small"),
                       ("noface", "wall.png", "no-face")]
    built = {r["identity"] for r in rows if r["role"] == "reference"}
    assert built == {"ardern", "gray", "rgba", "exif", "mixed"}
    assert "5 photos skipped (2 corrupt-image, 1 image-too-small, 1 no-face, 1 unreadable-image)" in result.output
    assert "1 non-image files ignored" in result.output
    exif_eyes = [r for r in rows if r["identity"] == "exif" and r["role"] == "reference"][0]
    assert exif_eyes["params"]["pose.abs_yaw"] < 20  # upright after EXIF rotation, so a sane pose
    scores = read_quality_scores(out / "Quality-Scores.txt")
    assert len(scores) == 5 * 2


def test_missing_input_and_bad_key_write_nothing(tmp_path):
    runner = CliRunner()
    out = tmp_path / "out"
    missing = runner.invoke(cli, ["build", "--out", str(out), "--input", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    bad_key = runner.invoke(cli, ["build", "--out", str(out), "--set", "run.degarded=3"])
    assert bad_key.exit_code == 2 and "did you mean 'degraded'" in bad_key.output
    unknown = runner.invoke(cli, ["build", "--out", str(out), "--set", 'degrade.chain=["blurr-downscale"]'])
    assert unknown.exit_code == 2 and "Did you mean 'blur-downscale'" in unknown.output
    assert not out.exists()


def test_output_with_another_build_is_refused(demo_build, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(demo_build[0], out)
    before = tree_bytes(out)
    result = CliRunner().invoke(cli, ["build", "--out", str(out), "--set", "run.degraded=7"])
    assert result.exit_code == 2
    assert "another config" in result.output and "--overwrite" in result.output and "--config" in result.output
    assert tree_bytes(out) == before
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    refused = CliRunner().invoke(cli, ["build", "--out", str(foreign)])
    assert refused.exit_code == 2 and "holds no synfiqa build" in refused.output
    assert (foreign / "thesis.tex").read_text() == "precious"


def test_example_plugin_used_in_a_build(tmp_path, monkeypatch, faces_dir):
    from tests.distributions import pip_install_example

    site = tmp_path / "site"
    pip_install_example(site)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("SYNFIQA_DISABLE_PLUGINS")
    single = tmp_path / "one"
    single.mkdir()
    shutil.copy(faces_dir / "obama_1.jpg", single / "obama.jpg")
    shutil.copy(faces_dir / "sunak_1.jpg", single / "sunak.jpg")
    out = tmp_path / "out"
    config = load_config(None, ["run.degraded=4", 'degrade.chain=["blur-downscale","vignette"]',
                                f'generate.params.folder.path="{single}"'])
    summary = build(config, out, echo=lambda *_: None)
    assert "vignette.strength" in summary["severity_axes"]
    rows = [r for r in read_manifest(out) if r["role"] == "degraded"]
    assert all("vignette.strength" in r["params"] for r in rows)
    assert "vignette (synfiqa-vignette 0.1.0)" in rows[0]["plugins"]["degradations"]
    # the vignette's axis takes part in the spatial score: sd is the min over axes, so it never
    # exceeds the vignette's own rank score, and the strongest vignette gets sd = 0
    from scipy.stats import rankdata

    strengths = np.array([r["params"]["vignette.strength"] for r in rows])
    sd = np.array([r["scores"]["sd"] for r in rows])
    vignette_rank_score = (len(rows) - rankdata(strengths)) / len(rows)
    assert np.all(sd <= vignette_rank_score + 1e-12)
    assert sd[strengths.argmax()] == 0.0


FAILS_ON_SECOND_IDENTITY = """
    import torch
    from synfiqa import hookimpl

    class Flaky:
        severity_axes = ("dummy",)
        calls = 0
        def sample_params(self, n, generator):
            return {"dummy": torch.zeros(n, dtype=torch.float64)}
        def apply(self, images, params, landmarks=None):
            if images.shape[0] == 2:  # the build's batches (the probe's hold 3 and 1 images)
                Flaky.calls += 1
                if Flaky.calls == 2:
                    raise RuntimeError("disk on fire")
            return images

    @hookimpl
    def register_degradations(register):
        register("flaky", Flaky)
"""


def test_failed_build_keeps_its_work_and_prints_the_resume_command(tmp_path, monkeypatch):
    from tests.distributions import write_distribution

    write_distribution(tmp_path / "site", "flaky-plugin", "flaky_plugin", FAILS_ON_SECOND_IDENTITY)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delenv("SYNFIQA_DISABLE_PLUGINS")
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["build", "--out", str(out), "--set", "run.degraded=2",
                                      "--set", 'degrade.chain=["flaky"]'])
    assert result.exit_code == 1
    assert "disk on fire" in result.output
    assert f"synfiqa build --out {out} --config {out / 'config.toml'}" in result.output
    assert [p.name for p in (out / ".synfiqa" / "identities").glob("*.json")] == ["ardern.json"]
    assert (out / "data" / "ardern" / "1.jpg").is_file()
    resumed = CliRunner().invoke(cli, ["build", "--out", str(out), "--config", str(out / "config.toml")])
    assert resumed.exit_code == 0, resumed.output  # Flaky.calls is past 2 in this process
    assert "(1 already built)" in resumed.output
