"""The MR-FIQA score's arithmetic and the annotators on a built dataset."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from synfiqa.config import load_config
from synfiqa.stages.build import build
from synfiqa.mr_label import combine_mr, min_max, rank_score, reference_cosine, spatial_score
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


# ---------------------------------------------------------------- the annotators one by one


class FakeEmbedder:
    """Embeds a crop as (mean of channel 0, mean of channel 1) scaled by its channel-2 mean,
    so two crops can point the same way with different norms; records the batch sizes."""

    def __init__(self):
        self.batches = []

    def embed(self, crops):
        self.batches.append(len(crops))
        x = crops.to(torch.float64).mean(dim=(2, 3))
        return x[:, :2] * x[:, 2:3]


def fake_context(embedder=None, batch_size=64, vision_language=None):
    from types import SimpleNamespace

    models = {"embedder": embedder, "vision-language": vision_language}
    return SimpleNamespace(config={"run": {"batch_size": batch_size}}, model=lambda kind: models[kind])


def crops_from(rows):
    """uint8 [N, 3, 4, 4] crops with the given per-channel values."""
    return torch.tensor(rows, dtype=torch.uint8)[:, :, None, None].expand(-1, -1, 4, 4).contiguous()


def test_fr_is_the_cosine_to_the_mean_of_unit_reference_embeddings():
    from synfiqa_plugins.annotators.recognition import RecognitionAnnotator

    # references embed to (1, 0) * 100 and (0, 1) * 1: the mean of the unit vectors is
    # (0.5, 0.5), 45 degrees; the mean of the raw vectors would point almost along x.
    references = crops_from([[10, 0, 10], [0, 1, 1]])
    samples = crops_from([[1, 1, 1], [1, 0, 1], [3, 1, 2]])
    embedder = FakeEmbedder()
    fr = RecognitionAnnotator().annotate_identity(samples, references, fake_context(embedder, batch_size=2))["fr"]
    expected = torch.tensor([1.0, np.cos(np.pi / 4), (3 + 1) / (np.sqrt(10) * np.sqrt(2))], dtype=torch.float64)
    assert fr.dtype == torch.float64
    assert torch.allclose(fr, expected, atol=1e-12)
    assert max(embedder.batches) <= 2  # embedded run.batch_size crops at a time


def test_fr_goes_through_the_ref_cosine_op(monkeypatch):
    import synfiqa.ops
    from synfiqa_plugins.annotators.recognition import RecognitionAnnotator

    calls = []
    real = synfiqa.ops.ref_cosine

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(synfiqa.ops, "ref_cosine", spy)
    samples = crops_from([[1, 2, 3], [4, 5, 6]])
    fr = RecognitionAnnotator().annotate_identity(samples, samples, fake_context(FakeEmbedder()))["fr"]
    assert len(calls) == 1 and fr.shape == (2,)


def sample_table(params, severity_axes, scores=None):
    from synfiqa.annotation import SampleTable

    return SampleTable(paths=[f"/id/{i}.jpg" for i in range(len(params))], params=params,
                       scores=dict(scores or {}), severity_axes=severity_axes)


def test_sd_ranks_yaw_and_every_declared_axis_over_the_whole_table():
    from synfiqa_plugins.annotators.spatial import SpatialAnnotator

    params = [{"pose.abs_yaw": 5.0, "a.blur": 1.0, "b.noise": 0.3, "a.theta": 9.0},
              {"pose.abs_yaw": 1.0, "a.blur": 4.0, "b.noise": 0.1, "a.theta": 0.0},
              {"pose.abs_yaw": 1.0, "a.blur": 1.0, "b.noise": 0.2, "a.theta": 5.0},
              {"pose.abs_yaw": 2.0, "a.blur": 2.0, "b.noise": 0.0, "a.theta": 1.0}]
    table = sample_table(params, ["a.blur", "b.noise", "pose.abs_yaw"])
    sd = SpatialAnnotator().annotate_dataset(table, None)["sd"]
    # yaw ranks [4, 1.5, 1.5, 3], blur [1.5, 4, 1.5, 3], noise [4, 2, 3, 1]; r = (4 - rank) / 4;
    # theta is recorded but not a severity axis, so it is not ranked.
    assert np.allclose(sd, [0.0, 0.0, 0.25, 0.25])
    no_yaw = SpatialAnnotator(include_yaw=False).annotate_dataset(sample_table(params, ["a.blur"]), None)["sd"]
    assert np.allclose(no_yaw, [0.625, 0.0, 0.625, 0.25])


def test_sd_names_a_missing_axis():
    from synfiqa.errors import ConfigError
    from synfiqa_plugins.annotators.spatial import SpatialAnnotator

    table = sample_table([{"pose.abs_yaw": 1.0}, {"pose.abs_yaw": 2.0, "a.blur": 1.0}], ["a.blur"])
    with pytest.raises(ConfigError, match="'a.blur' is missing for 1 samples, e.g. /id/0.jpg"):
        SpatialAnnotator().annotate_dataset(table, None)
    with pytest.raises(ConfigError, match="no severity axis"):
        SpatialAnnotator(include_yaw=False).annotate_dataset(sample_table([{}], []), None)


def test_vl_scores_each_sample_against_the_reference_prompt():
    from synfiqa_plugins.annotators.vision_language import REFERENCE_PROMPT, VisionLanguageAnnotator

    seen = []

    class Model:
        def image_text_similarity(self, crops, texts):
            seen.append(list(texts))
            return crops.to(torch.float64).mean(dim=(1, 2, 3)) / 255

    samples = crops_from([[255, 255, 255], [0, 0, 51]])
    vl = VisionLanguageAnnotator().annotate_identity(samples, samples, fake_context(vision_language=Model()))["vl"]
    assert torch.allclose(vl, torch.tensor([1.0, 1 / 15], dtype=torch.float64))
    assert seen == [[REFERENCE_PROMPT] * 2]
    assert REFERENCE_PROMPT == ("a high-resolution clear frontal face image with natural expression under good "
                                "lighting condition without any occlusion")


def test_mr_says_which_domain_it_lacked_and_refuses_an_undefined_score():
    from synfiqa.stages.s5_annotate import score_dataset
    from synfiqa.errors import ConfigError
    from synfiqa_plugins.annotators.combined import MultiReferenceAnnotator
    from synfiqa_plugins.annotators.spatial import SpatialAnnotator

    params = [{"pose.abs_yaw": float(i)} for i in range(3)]
    fr = np.array([0.9, 0.2, 0.5])
    chain = [("sd", SpatialAnnotator()), ("mr", MultiReferenceAnnotator(lam=2.0))]
    result = score_dataset(chain, {}, sample_table(params, [], {"fr": fr}), None)
    raw = fr + 2.0 * np.array([2 / 3, 1 / 3, 0.0])
    assert np.allclose(result.scores["mr"], (raw - raw.min()) / (raw.max() - raw.min()))
    assert result.label == "mr"
    assert result.missing == {"vl": "not in annotate.chain"} and result.partial == ["computed without vl"]
    unavailable = score_dataset(chain, {"vl": "model asset 'blip' not found"},
                                sample_table(params, [], {"fr": fr}), None)
    assert unavailable.missing == {"vl": "model asset 'blip' not found"}
    complete = score_dataset(chain, {}, sample_table(params, [], {"fr": fr, "vl": np.array([0.1, 0.2, 0.3])}), None)
    assert complete.missing == {} and complete.partial == []
    with pytest.raises(ConfigError, match="undefined at vl >= 1"):
        score_dataset(chain, {}, sample_table(params, [], {"fr": fr, "vl": np.array([0.1, 1.0, 0.3])}), None)
    for lam in (-1, float("nan"), "0.5", True):
        with pytest.raises(ConfigError, match="lam"):
            MultiReferenceAnnotator(lam=lam)


def test_an_mr_chain_without_fr_fails_before_any_sample(tmp_path):
    from click.testing import CliRunner

    from synfiqa_cli.main import cli

    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["build", "--out", str(out), "--set", 'annotate.chain=["sd", "mr"]'])
    assert result.exit_code == 2
    assert "annotator 'mr' needs the 'fr' score" in result.output
    assert not (out / "data").exists()
