"""The MR-FIQA score's arithmetic and the annotators on a built dataset."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from synfiqa.config import load_config
from synfiqa.pipeline import build
from synfiqa.scoring import combine_mr, min_max, rank_score, reference_cosine, spatial_score
from tests.distributions import write_distribution


def test_rank_score_uses_average_ranks_for_ties():
    # ascending 1-based average ranks of [3, 1, 3, 2] are [3.5, 1, 3.5, 2]; r = (N - rank) / N
    assert np.allclose(rank_score([3.0, 1.0, 3.0, 2.0]), [0.125, 0.75, 0.125, 0.5])


def test_spatial_score_is_the_minimum_over_axes():
    yaw = np.array([0.0, 10.0, 20.0])
    blur = np.array([5.0, 1.0, 2.0])
    assert np.allclose(spatial_score([yaw, blur]), np.minimum(rank_score(yaw), rank_score(blur)))
    with pytest.raises(ValueError):
        spatial_score([])


def test_mr_combination_and_normalisation():
    fr, sd, vl = np.array([0.9, 0.5, 0.2]), np.array([0.6, 0.2, 0.0]), np.array([0.3, 0.1, 0.0])
    raw = combine_mr(fr, sd, vl, lam=0.5)
    assert np.allclose(raw, (fr + 0.5 * sd) / (1 - vl))
    assert np.allclose(combine_mr(fr, sd, None, 0.5), fr + 0.5 * sd)
    assert np.allclose(min_max(raw), (raw - raw.min()) / (raw.max() - raw.min()))


def test_reference_cosine_uses_the_plain_mean():
    references = torch.tensor([[1.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    samples = torch.tensor([[1.0, 3.0], [1.0, 0.0]], dtype=torch.float64)
    mean = torch.tensor([0.5, 1.5], dtype=torch.float64)  # not re-normalised, not the mean of unit vectors
    expected = samples @ mean / (samples.norm(dim=1) * mean.norm())
    assert torch.allclose(reference_cosine(samples, references), expected)


FAKE_VISION_LANGUAGE = """
    import torch
    from synfiqa import hookimpl

    class BrightnessText:
        '''a stand-in vision-language model: similarity = mean brightness / 512'''
        kind = "vision-language"

        def image_text_similarity(self, crops, texts):
            assert len(texts) == len(crops) and "frontal face" in texts[0]
            return crops.to(torch.float64).mean(dim=(1, 2, 3)) / 512.0

    @hookimpl
    def register_models(register):
        register("brightness-text", BrightnessText)
"""


def test_vl_domain_enters_the_mr_score(tmp_path, monkeypatch, faces_dir):
    write_distribution(tmp_path / "site", "fake-vl", "fake_vl", FAKE_VISION_LANGUAGE)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delenv("SYNFIQA_DISABLE_PLUGINS")
    out = tmp_path / "out"
    summary = build(load_config(None, ["run.degraded=4", "models.vision_language=brightness-text"]), out,
                    echo=lambda *_: None)
    assert summary["unavailable_annotators"] == {}
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    degraded = [r for r in rows if r["role"] == "degraded"]
    assert all("partial" not in r for r in degraded)
    fr, sd, vl = (np.array([r["scores"][k] for r in degraded]) for k in ("fr", "sd", "vl"))
    assert np.all((vl > 0) & (vl < 0.5))
    raw = (fr + 0.5 * sd) / (1 - vl)
    assert np.allclose([r["scores"]["mr"] for r in degraded], (raw - raw.min()) / (raw.max() - raw.min()))


def test_a_required_domain_with_missing_weights_stops_before_any_sample(tmp_path):
    from click.testing import CliRunner

    from synfiqa_cli.main import cli

    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["build", "--out", str(out), "--set", "annotate.optional=[]"])
    assert result.exit_code == 2
    assert "blip-itm-base-coco" in result.output and "Searched" in result.output
    assert not out.exists()
