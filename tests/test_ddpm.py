"""The ddpm generator: guided-diffusion -> diffusers conversion, the respaced learned-range
sampler, determinism per seed and independence from the batch size (tiny random models)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ddpm_reference import ReferenceUNet, randomize, reference_sample
from synfiqa_plugins.generators.ddpm.unet import RespacedSchedule, ScheduleConfig, linear_betas, respaced_timesteps, to_uint8
from synfiqa_plugins.generators.ddpm.convert import (DCFACE_STAGE1, GuidedDiffusionArch, build_unet, convert_checkpoint,
                                       expected_shapes)
from synfiqa.errors import ConfigError

# DCFace's family (scale-shift norm, residual up/down-sampling, attention at 16x16, learned
# variance), shrunk: 32x32 images, 32 base channels, two levels.
TINY = GuidedDiffusionArch(image_size=32, model_channels=32, channel_mult=(1, 2), attention_resolutions=(16,),
                           num_head_channels=16)
# The other switches of the same family: conv resampling, new attention order, 2 blocks per level.
TINY_VARIANT = GuidedDiffusionArch(image_size=32, model_channels=32, channel_mult=(1, 2, 2),
                                   attention_resolutions=(16, 8), num_head_channels=32, num_res_blocks=2,
                                   resblock_updown=False, use_new_attention_order=True)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    reference = randomize(ReferenceUNet(TINY), seed=1)
    path = tmp_path_factory.mktemp("ckpt") / "Unc-Diff-Tiny.pth"
    torch.save(reference.state_dict(), path)
    return path, reference


@pytest.fixture(scope="module")
def tiny_model_dir(tiny_checkpoint, tmp_path_factory):
    path, _ = tiny_checkpoint
    return convert_checkpoint(path, tmp_path_factory.mktemp("model") / "tiny-ddpm", TINY)


# ---------------------------------------------------------------- respacing and schedule

def test_respacing_100_of_1000_takes_both_ends_and_even_steps():
    steps = respaced_timesteps(1000, "100")
    assert len(steps) == 100 and steps[0] == 0 and steps[-1] == 999
    assert steps == [round(i * 999 / 99) for i in range(100)]
    assert respaced_timesteps(1000, "ddim100") == list(range(0, 1000, 10))
    assert respaced_timesteps(100, "2,3") == [0, 49, 50, 74, 99]
    with pytest.raises(ConfigError, match="cannot take"):
        respaced_timesteps(10, "20")


def test_respaced_chain_keeps_cumulative_alphas_of_visited_steps():
    schedule = RespacedSchedule(ScheduleConfig(), "100")
    base = np.cumprod(1 - linear_betas(1000))
    assert np.allclose(schedule.alphas_cumprod, base[schedule.timesteps], rtol=1e-12)
    assert linear_betas(1000)[0] == pytest.approx(1e-4) and linear_betas(1000)[-1] == pytest.approx(0.02)
    # the learned range spans the posterior variance (clipped at step 0) to beta
    assert schedule.posterior_log_variance_clipped[0] == schedule.posterior_log_variance_clipped[1]
    assert np.all(schedule.posterior_log_variance_clipped[1:] < np.log(schedule.betas[1:]))


# ---------------------------------------------------------------- conversion

def test_dcface_stage1_expected_checkpoint_layout():
    shapes = expected_shapes(DCFACE_STAGE1)
    assert shapes["input_blocks.0.0.weight"] == (128, 3, 3, 3)
    assert shapes["time_embed.0.weight"] == (512, 128)
    # level 4 (16x16, 512 channels) holds the only attention of the encoder
    assert shapes["input_blocks.9.1.qkv.weight"] == (1536, 512, 1)
    assert shapes["input_blocks.10.0.in_layers.2.weight"] == (512, 512, 3, 3)   # residual downsampling
    assert shapes["middle_block.1.proj_out.weight"] == (512, 512, 1)
    assert shapes["output_blocks.3.1.qkv.weight"] == (1536, 512, 1)             # decoder attention at 16x16
    assert shapes["output_blocks.3.2.emb_layers.1.weight"] == (1024, 512)       # upsampling resblock, scale-shift
    assert shapes["out.2.weight"] == (6, 128, 3, 3)                             # eps + learned variance
    assert not any(key.startswith("input_blocks.12") for key in shapes)
    # the whole layout, key by key, equals the reference UNet's at full size
    with torch.device("meta"):
        reference = ReferenceUNet(DCFACE_STAGE1)
    assert {k: tuple(v.shape) for k, v in reference.state_dict().items()} == shapes
    assert sum(int(np.prod(s)) for s in shapes.values()) == 93_563_910


@pytest.mark.parametrize("arch", [TINY, TINY_VARIANT], ids=["dcface-family", "variant"])
def test_converted_model_computes_the_reference_unet(arch):
    reference = randomize(ReferenceUNet(arch), seed=3)
    state_dict = reference.state_dict()
    assert set(state_dict) == set(expected_shapes(arch))
    unet = build_unet(arch, state_dict)   # strict load inside
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    timesteps = torch.tensor([3, 871])
    with torch.no_grad():
        expected = reference(x, timesteps)
        got = unet(x, timesteps).sample
    assert expected.abs().mean() > 0.05
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)


def test_wrong_architecture_names_the_mismatched_keys():
    state_dict = randomize(ReferenceUNet(TINY)).state_dict()
    wider = GuidedDiffusionArch(**{**TINY.__dict__, "channel_mult": (1, 4)})
    with pytest.raises(ConfigError) as error:
        build_unet(wider, state_dict)
    message = str(error.value)
    assert "wrong shapes" in message and "input_blocks.3.0.in_layers.2.weight (64, 32, 3, 3) (expected (128, 32, 3, 3))" in message
    broken = dict(state_dict)
    del broken["out.2.bias"]
    broken["label_emb.weight"] = torch.zeros(10, 128)
    with pytest.raises(ConfigError) as error:
        build_unet(TINY, broken)
    assert "missing keys (1): out.2.bias." in str(error.value)
    assert "unexpected keys (1): label_emb.weight." in str(error.value)


def test_convert_command_writes_a_diffusers_folder(tiny_checkpoint, tmp_path):
    from diffusers import UNet2DModel

    from synfiqa_cli.main import cli

    path, reference = tiny_checkpoint
    out = tmp_path / "converted"
    arch = ["--arch", "image_size=32", "--arch", "model_channels=32", "--arch", "channel_mult=1,2",
            "--arch", "num_head_channels=16"]
    result = CliRunner().invoke(cli, ["convert", "guided-diffusion", str(path), "--out", str(out), *arch])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "model_index.json").read_text())["unet"] == ["diffusers", "UNet2DModel"]
    scheduler = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["variance_type"] == "learned_range" and scheduler["num_train_timesteps"] == 1000
    unet = UNet2DModel.from_pretrained(out / "unet")
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([500])
    with torch.no_grad():
        torch.testing.assert_close(unet(x, t).sample, reference(x, t), atol=2e-5, rtol=1e-4)
    # the default architecture is DCFace's: this tiny checkpoint does not fit it
    result = CliRunner().invoke(cli, ["convert", "guided-diffusion", str(path), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "missing keys" in result.output


# ---------------------------------------------------------------- sampling

def make_generator(model_dir, **params):
    from synfiqa.registry import get_registry

    return get_registry().create("generator", "ddpm", model=str(model_dir), device="cpu", **params)


def test_sampler_walks_guided_diffusions_respaced_chain(tiny_model_dir, tiny_checkpoint):
    _, reference = tiny_checkpoint
    generator = make_generator(tiny_model_dir, respacing="12", batch_size=2)
    images = generator.sample_indices([0, 1], seed=7)
    # the same per-image noise, walked by the oracle
    gens = [torch.Generator().manual_seed(generator.image_seed(7, i)) for i in (0, 1)]
    steps = generator.schedule.timesteps
    draws = [torch.cat([torch.randn((1, 3, 32, 32), generator=g) for g in gens]) for _ in range(len(steps))]
    initial, noises = draws[0], {k: draws[len(steps) - k] for k in range(1, len(steps))}
    x0 = reference_sample(reference, (2, 3, 32, 32), steps, initial, noises, linear_betas(1000))
    expected = to_uint8(x0.float())
    assert np.abs(images.astype(int) - expected.astype(int)).max() <= 1
    assert images.std() > 5   # not a constant image


def test_same_seed_same_images_whatever_the_batch_size(tiny_model_dir):
    one = make_generator(tiny_model_dir, respacing="20", batch_size=1)
    three = make_generator(tiny_model_dir, respacing="20", batch_size=3)
    a = one.generate(3, seed=11).images
    b = three.generate(3, seed=11).images
    assert a.shape == (3, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert np.array_equal(three.generate(2, seed=11, start=1).images, a[1:])
    assert not np.array_equal(three.generate(1, seed=12).images[0], a[0])
    assert not np.array_equal(a[0], a[1])


def test_identities_and_minmax_option(tiny_model_dir):
    generator = make_generator(tiny_model_dir, respacing="10", count=2, minmax_per_image=True)
    identities = generator.identities(None, seed=0)
    assert [i.name for i in identities] == ["000000", "000001"]
    for identity in identities:
        pixels = identity.images[0].load()
        assert pixels.min() == 0 and pixels.max() == 255   # each image stretched to its own range
        assert identity.metadata["image_seed"] == generator.image_seed(0, int(identity.name))
        assert identity.metadata["minmax_per_image"] is True


def test_uint8_conversion_clips_or_stretches_per_image():
    images = torch.tensor([[-0.5, 0.0, 0.5, 1.5]]).reshape(1, 1, 2, 2).repeat(2, 3, 1, 1)
    images[1] *= 0.1
    plain = to_uint8(images)
    assert plain.shape == (2, 2, 2, 3)
    assert plain[0, :, :, 0].tolist() == [[64, 128], [191, 255]]       # (x + 1) / 2 * 255, clipped
    stretched = to_uint8(images, minmax_per_image=True)
    assert stretched[0, :, :, 0].tolist() == [[0, 64], [128, 255]]     # each image to its own min..max
    assert np.array_equal(stretched[0], stretched[1])


def test_any_diffusers_unconditional_unet_folder(tmp_path):
    from diffusers import UNet2DModel

    unet = UNet2DModel(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(32, 32),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       layers_per_block=1, norm_num_groups=8)
    unet.save_pretrained(tmp_path / "plain")
    (tmp_path / "plain" / "scheduler_config.json").write_text(json.dumps({"variance_type": "fixed_small"}))
    generator = make_generator(tmp_path / "plain", respacing="5")
    assert generator.schedule.config.variance_type == "fixed_small"
    images = generator.generate(2, seed=0).images
    assert images.shape == (2, 16, 16, 3)
    with pytest.raises(ConfigError, match="not a diffusers model folder"):
        make_generator(tmp_path)


def test_missing_model_names_the_asset_and_the_converter(monkeypatch, tmp_path):
    from synfiqa.errors import WeightsNotFoundError

    monkeypatch.setenv("SYNFIQA_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match="synfiqa convert guided-diffusion"):
        make_generator("")


# ---------------------------------------------------------------- in a build

def ddpm_build_config(model_dir, count=3):
    from synfiqa.config import load_config

    return load_config(None, ["generate.generator=ddpm", f"generate.params.ddpm.model='{model_dir}'",
                              f"generate.params.ddpm.count={count}", "generate.params.ddpm.respacing='8'",
                              "generate.params.ddpm.batch_size=1", "generate.params.ddpm.device='cpu'",
                              "run.degraded=2"])


def test_a_killed_ddpm_build_keeps_its_images_and_samples_only_the_missing_ones(tiny_model_dir, tmp_path,
                                                                                 monkeypatch):
    from synfiqa.stages.build import build
    from synfiqa_plugins.generators.ddpm import DdpmGenerator

    config = ddpm_build_config(tiny_model_dir)
    whole = tmp_path / "whole"
    summary = build(config, whole, echo=lambda *_: None)
    # a random model draws no face: every identity is skipped with its reason
    assert summary["identities"] == 3 and summary["degraded"] == 0
    rows = [json.loads(line) for line in (whole / "manifest.jsonl").read_text().splitlines()]
    assert {row["identity"] for row in rows} == {"000000", "000001", "000002"}
    assert all(row["status"] == "skipped" and row["reason"] == "no-face" for row in rows)

    sampled = []
    original = DdpmGenerator.sample_indices

    def sample_then_die(self, indices, seed, on_step=None):
        if sampled:
            raise KeyboardInterrupt  # killed while sampling the second image
        sampled.extend(indices)
        return original(self, indices, seed, on_step)

    monkeypatch.setattr(DdpmGenerator, "sample_indices", sample_then_die)
    killed = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        build(config, killed, echo=lambda *_: None)
    assert (killed / "generated" / "000000" / "0.png").is_file()
    assert not (killed / "generated" / "000001").exists()

    def count_samples(self, indices, seed, on_step=None):
        sampled.extend(indices)
        return original(self, indices, seed, on_step)

    sampled.clear()
    monkeypatch.setattr(DdpmGenerator, "sample_indices", count_samples)
    build(config, killed, echo=lambda *_: None)
    assert sampled == [1, 2]   # the finished image is not sampled again
    for name in ("000000", "000001", "000002"):
        path = f"generated/{name}/0.png"
        assert (killed / path).read_bytes() == (whole / path).read_bytes()
    assert (killed / "manifest.jsonl").read_bytes() == (whole / "manifest.jsonl").read_bytes()
