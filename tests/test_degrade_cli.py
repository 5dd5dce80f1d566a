"""`synfiqa degrade`: the degradation chain over a folder, outside a build: seeding by
(seed, image name, copy index), recorded parameters, resume after a kill, bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from synfiqa.align import ARCFACE_TEMPLATE_112
from synfiqa.config import load_config
from synfiqa.degradation import DegradationChain
from synfiqa.registry import Registry
from synfiqa_cli.main import cli

CHAIN = 'degrade.chain=["blur-downscale","occlusion","jpeg"]'


def run(args):
    return CliRunner().invoke(cli, args)


def rows_of(out):
    return [json.loads(line) for line in (out / "degraded.jsonl").read_text().splitlines()]


def tree(out):
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.png"))}


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    from evaluation_faces import aligned_test_faces

    folder = tmp_path_factory.mktemp("crops")
    for name, crop in list(aligned_test_faces().items())[:3]:
        Image.fromarray(crop).save(folder / name.replace(".jpg", ".png"))
    return folder


def test_copies_follow_the_seeded_chain_on_the_aligned_crop(crops, tmp_path):
    out = tmp_path / "out"
    result = run(["degrade", str(crops), "--aligned", "-n", "4", "--out", str(out), "--set", CHAIN])
    assert result.exit_code == 0, result.output
    assert "12 copies made now" in result.output
    rows = rows_of(out)
    assert len(rows) == 12 and {row["status"] for row in rows} == {"ok"}
    config = load_config(None, [CHAIN])
    chain = DegradationChain.from_config(config, Registry())
    crop = np.asarray(Image.open(crops / "ardern_1.png"))
    landmarks = torch.from_numpy(ARCFACE_TEMPLATE_112).float()[None]
    for k in range(4):
        sampled = chain.sample(0, "ardern_1.png", [k])
        expected = chain.apply(torch.from_numpy(crop.copy()).permute(2, 0, 1)[None].contiguous(), sampled, landmarks=landmarks)
        written = np.asarray(Image.open(out / "ardern_1" / f"{k}.png"))
        assert np.array_equal(written, expected[0].permute(1, 2, 0).numpy())
        row = next(r for r in rows if r["source"] == "ardern_1.png" and r["index"] == k)
        assert row["params"] == chain.records(sampled, 1)[0]
        assert {"blur-downscale.low_scale", "occlusion.coverage", "jpeg.jpeg_loss"} <= set(row["params"])


def test_a_copy_depends_on_its_image_and_index_only(crops, tmp_path):
    together = tmp_path / "together"
    alone = tmp_path / "alone"
    assert run(["degrade", str(crops), "--aligned", "-n", "2", "--out", str(together), "--set", CHAIN]).exit_code == 0
    assert run(["degrade", str(crops / "macron_1.png"), "--aligned", "-n", "2", "--out", str(alone),
                "--set", CHAIN]).exit_code == 0
    assert tree(alone) == {k: v for k, v in tree(together).items() if k.startswith("macron_1/")}
    other = tmp_path / "other"
    assert run(["degrade", str(crops), "--aligned", "-n", "2", "--out", str(other), "--seed", "5",
                "--set", CHAIN]).exit_code == 0
    assert tree(other) != tree(together)


def test_a_killed_run_resumes_without_redoing_finished_images(crops, tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    assert run(["degrade", str(crops), "--aligned", "-n", "3", "--out", str(whole), "--set", CHAIN]).exit_code == 0

    applied = []
    original = DegradationChain.apply

    def apply_then_die(self, images, sampled, landmarks=None):
        if applied:
            raise KeyboardInterrupt
        applied.append(len(images))
        return original(self, images, sampled, landmarks)

    monkeypatch.setattr(DegradationChain, "apply", apply_then_die)
    killed = tmp_path / "killed"
    run(["degrade", str(crops), "--aligned", "-n", "3", "--out", str(killed), "--set", CHAIN])
    assert len(rows_of(killed)) == 3

    def count(self, images, sampled, landmarks=None):
        applied.append(len(images))
        return original(self, images, sampled, landmarks)

    applied.clear()
    monkeypatch.setattr(DegradationChain, "apply", count)
    resumed = run(["degrade", str(crops), "--aligned", "-n", "3", "--out", str(killed), "--set", CHAIN])
    assert resumed.exit_code == 0 and "resuming" in resumed.output
    assert applied == [3, 3]                      # two images left, three copies each
    assert tree(killed) == tree(whole)
    key = lambda r: r["key"]  # noqa: E731
    assert sorted(rows_of(killed), key=key) == sorted(rows_of(whole), key=key)

    changed = run(["degrade", str(crops), "--aligned", "-n", "4", "--out", str(killed), "--set", CHAIN])
    assert changed.exit_code == 2 and "other settings" in changed.output


def test_photos_are_aligned_and_unusable_ones_skipped_with_reasons(faces_dir, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "obama_1.jpg").write_bytes((faces_dir / "obama_1.jpg").read_bytes())
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), np.uint8)).save(photos / "noise.png")
    (photos / "truncated.jpg").write_bytes((faces_dir / "sunak_1.jpg").read_bytes()[:300])
    out = tmp_path / "out"
    result = run(["degrade", str(photos), "-n", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = {row["key"]: row for row in rows_of(out)}
    assert rows["noise.png#skipped"]["reason"] == "no-face"
    assert rows["truncated.jpg#skipped"]["status"] == "skipped"
    assert Image.open(out / "obama_1" / "1.png").size == (112, 112)
    assert "inputs skipped" in result.output and "no-face (1)" in result.output


def test_files_given_by_absolute_path_stay_inside_out_and_name_clashes_are_refused(crops, tmp_path):
    out = tmp_path / "out"
    result = run(["degrade", str(crops / "macron_1.png"), "--aligned", "--out", str(out)])
    assert result.exit_code == 0, result.output
    written = [p for p in out.rglob("*.png")]
    assert written and all(out in p.parents for p in written)

    clash = tmp_path / "clash"
    clash.mkdir()
    for suffix in (".png", ".jpg"):
        Image.open(crops / "macron_1.png").convert("RGB").save(clash / f"face{suffix}")
    refused = run(["degrade", str(clash), "--aligned", "--out", str(tmp_path / "clash-out")])
    assert refused.exit_code == 2 and "would write the same copies" in refused.output
