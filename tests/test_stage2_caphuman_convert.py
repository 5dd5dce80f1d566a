"""`synfiqa convert caphuman` (synfiqa_plugins.stage2.caphuman.convert) on randomly initialised
original-format files whose key names and shapes are generated from cldm.yaml's structure
(caphuman.ldm_layout), a tiny CLIP folder in the real layout (config + safetensors + vocab.json
+ merges.txt) and a text tower in the SD checkpoint under transformers-4 names."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from synfiqa.errors import CheckpointError
from synfiqa_plugins.stage2.caphuman import ldm_layout as L
from synfiqa_plugins.stage2.caphuman.convert import (back_to_original, build_modules, controlnet_config,
                                                     convert_state_dicts, unet_config, vae_config)
from synfiqa_plugins.stage2.caphuman.network import load_networks, save_networks

CONFIG = L.tiny_config()
TEXT_WIDTH, VISION_WIDTH = 32, 24      # the UNet's context and img_linear's input in CONFIG


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def byte_vocabulary() -> dict[str, int]:
    """GPT-2 / CLIP's byte-to-unicode alphabet, each symbol alone and as a word end: a BPE
    vocabulary without merges (every word is spelled out), plus CLIP's two special tokens."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    symbols = [chr(c) for c in cs]
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": 256 + i for i, s in enumerate(symbols)})
    vocab.update({"<|startoftext|>": 512, "<|endoftext|>": 513})
    return vocab


def write_clip_folder(folder: Path, seed: int = 4) -> Path:
    """A tiny openai/clip-vit-large-patch14-like folder: CLIPModel config + weights, vocab, merges."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    text = dict(vocab_size=514, hidden_size=TEXT_WIDTH, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=77, bos_token_id=512, eos_token_id=513, pad_token_id=513)
    vision = dict(hidden_size=VISION_WIDTH, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                  image_size=32, patch_size=8)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(folder)
    (folder / "vocab.json").write_text(json.dumps(byte_vocabulary()))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"crop_size": {"height": 32, "width": 32}, "image_mean": [0.48145466, 0.4578275, 0.40821073],
         "image_std": [0.26862954, 0.26130258, 0.27577711]}))
    return folder


def original_state_dicts(seed: int = 0, text_tower: bool = True):
    """(control dict, SD dict) with the original names: ControlFace + projections; UNet, VAE,
    the schedule buffers and (transformers-4 names) the CLIP text tower."""
    from transformers import CLIPTextConfig, CLIPTextModel

    control = L.random_state_dict(L.control_keys(CONFIG), seed)
    sd = {**L.random_state_dict(L.unet_keys(CONFIG), seed + 1), **L.random_state_dict(L.vae_keys(CONFIG), seed + 2)}
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    sd["betas"] = betas.float()
    sd["alphas_cumprod"] = torch.cumprod(1 - betas, 0).float()
    if text_tower:
        torch.manual_seed(seed + 3)
        text = CLIPTextModel(CLIPTextConfig(vocab_size=514, hidden_size=TEXT_WIDTH, intermediate_size=64,
                                            num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77))
        for key, value in text.state_dict().items():
            sd[f"cond_stage_model.transformer.text_model.{key}"] = value.clone()
        sd["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    return control, sd


def write_originals(folder: Path, seed: int = 0) -> tuple[Path, Path, Path]:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    control, sd = original_state_dicts(seed)
    torch.save({"state_dict": control}, folder / "Control-Module.pth")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "SDiff-Stage2.safetensors"))
    return folder / "Control-Module.pth", folder / "SDiff-Stage2.safetensors", write_clip_folder(folder / "clip-vit-large-patch14")


@pytest.fixture(scope="module")
def originals():
    return original_state_dicts(0)


@pytest.fixture(scope="module")
def converted(originals):
    return convert_state_dicts(*originals, CONFIG)


@pytest.fixture(scope="module")
def modules(converted, tmp_path_factory):
    clip = write_clip_folder(tmp_path_factory.mktemp("clip"))
    return build_modules(converted, CONFIG, clip), clip


# ------------------------------------------------------------------ the mapping, by hand

@pytest.mark.parametrize("original, component, converted_key", [
    ("control_model.input_hint_block.0.weight", "controlnet", "controlnet_cond_embedding.conv_in.weight"),
    ("control_model.input_hint_block.12.bias", "controlnet", "controlnet_cond_embedding.blocks.5.bias"),
    ("control_model.input_hint_block.14.weight", "controlnet", "controlnet_cond_embedding.conv_out.weight"),
    ("control_model.zero_convs.3.0.weight", "controlnet", "controlnet_down_blocks.3.weight"),
    ("control_model.middle_block_out.0.bias", "controlnet", "controlnet_mid_block.bias"),
    ("control_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", "controlnet",
     "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"),
    ("control_model.input_blocks.2.0.op.weight", "controlnet", "down_blocks.0.downsamplers.0.conv.weight"),
    ("control_model.time_embed.2.weight", "controlnet", "time_embedding.linear_2.weight"),
    ("control_model.mask_predict.0.weight", "extra", "mask_head.0.weight"),
    ("id_linear.weight", "extra", "id_linear.weight"),
    ("img_linear.bias", "extra", "img_linear.bias"),
    ("model.diffusion_model.output_blocks.1.1.conv.weight", "unet", "up_blocks.0.upsamplers.0.conv.weight"),
    ("model.diffusion_model.input_blocks.3.0.skip_connection.weight", "unet", "down_blocks.1.resnets.0.conv_shortcut.weight"),
    ("model.diffusion_model.out.2.bias", "unet", "conv_out.bias"),
    ("first_stage_model.decoder.up.3.upsample.conv.weight", "vae", "decoder.up_blocks.0.upsamplers.0.conv.weight"),
    ("cond_stage_model.transformer.text_model.final_layer_norm.weight", "text", "final_layer_norm.weight"),
])
def test_known_keys_land_where_they_belong(originals, converted, original, component, converted_key):
    merged = {**originals[0], **originals[1]}
    assert torch.equal(getattr(converted, component)[converted_key], merged[original])


def test_every_key_is_converted_or_a_known_buffer(originals, converted):
    merged = {**originals[0], **originals[1]}
    traced = {original for original, _ in converted.origin.values()}
    assert traced | set(converted.ignored) == set(merged)
    assert set(converted.ignored) == {"betas", "alphas_cumprod", "cond_stage_model.transformer.text_model.embeddings.position_ids"}


def test_the_converted_hint_block_mask_and_context_compute_what_the_original_layers_do(originals, modules):
    (unet, face, vae, text, tokenizer, vision), _ = modules
    control = originals[0]
    torch.manual_seed(0)
    hint = torch.rand(2, 9, 64, 64)
    x = hint
    strides = [1, 1, 2, 1, 2, 1, 2, 1]
    for i, stride in enumerate(strides):          # input_hint_block: conv, SiLU, ..., zero conv (index 14)
        x = F.conv2d(x, control[f"control_model.input_hint_block.{2 * i}.weight"],
                     control[f"control_model.input_hint_block.{2 * i}.bias"], stride=stride, padding=1)
        if i < len(strides) - 1:
            x = F.silu(x)
    with torch.no_grad():
        assert torch.allclose(face.controlnet.controlnet_cond_embedding(hint), x, atol=1e-5)
        mask = torch.sigmoid(F.conv2d(x, control["control_model.mask_predict.0.weight"],
                                      control["control_model.mask_predict.0.bias"], padding=1))
        assert torch.allclose(face.mask(hint), mask, atol=1e-5)
        tokens, identity = torch.randn(2, 5, VISION_WIDTH), torch.randn(2, 512)
        expected = torch.cat([tokens @ control["img_linear.weight"].T + control["img_linear.bias"],
                              (identity @ control["id_linear.weight"].T + control["id_linear.bias"])[:, None]], 1)
        assert torch.allclose(face.context(tokens, identity), expected, atol=1e-5)


def test_the_folder_round_trips_to_the_original_names_and_values(originals, converted, modules, tmp_path):
    (unet, face, vae, text, tokenizer, vision), clip = modules
    folder = save_networks(tmp_path / "model", unet, face, vae, text, tokenizer, vision)
    networks, text_encoder, image_encoder, meta = load_networks(folder)
    states = {"controlnet": networks.controlface.controlnet.state_dict(), "extra": networks.controlface.extra_state_dict(),
              "unet": networks.unet.state_dict(), "vae": networks.vae.state_dict(),
              "text": text_encoder.model.state_dict(), "vision": image_encoder.state_dict()}
    back = back_to_original(converted, states)
    merged = {**originals[0], **originals[1]}
    assert set(back) == set(merged) - set(converted.ignored)
    for key, value in back.items():
        assert value.shape == merged[key].shape and torch.equal(value, merged[key]), key
    # the vision tower came from the CLIP folder (the checkpoints have none)
    from transformers import CLIPVisionModel

    reference = CLIPVisionModel.from_pretrained(str(clip), local_files_only=True).state_dict()
    assert all(torch.equal(image_encoder.state_dict()[k], reference[k]) for k in reference)


# ------------------------------------------------------------------ what is refused

def test_a_leftover_key_is_named(originals):
    control, sd = originals
    with pytest.raises(CheckpointError, match=r"not converted: control_model\.extra_head\.weight") as error:
        convert_state_dicts({**control, "control_model.extra_head.weight": torch.zeros(1)}, sd, CONFIG)
    assert "\n" not in str(error.value)


def test_a_missing_key_is_named(originals):
    control, sd = originals
    partial = {k: v for k, v in control.items() if k != "control_model.zero_convs.0.0.weight"}
    with pytest.raises(CheckpointError, match=r"controlnet_down_blocks\.0\.weight"):
        build_modules(convert_state_dicts(partial, sd, CONFIG), CONFIG, None)


def test_another_schedule_is_refused(originals):
    control, sd = originals
    with pytest.raises(CheckpointError, match="schedule"):
        convert_state_dicts(control, {**sd, "betas": torch.linspace(1e-4, 0.02, 1000)}, CONFIG)


def test_the_full_size_layout_maps_onto_diffusers_sd15_modules():
    """cldm.yaml's real widths: names only (1-element tensors of the right rank), against
    diffusers' SD1.5 ControlNet / UNet / VAE built on the meta device."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel

    def tiny_tensors(keys):
        return {k: torch.zeros((1,) * len(shape)) for k, shape in keys.items()}

    converted = convert_state_dicts(tiny_tensors(L.control_keys()),
                                    {**tiny_tensors(L.unet_keys()), **tiny_tensors(L.vae_keys())})
    with torch.device("meta"):
        controlnet = ControlNetModel(**controlnet_config(L.CLDM_CONFIG))
        unet = UNet2DConditionModel(**unet_config(L.CLDM_CONFIG))
        vae = AutoencoderKL(**vae_config(L.CLDM_CONFIG))
    assert set(converted.controlnet) == set(controlnet.state_dict())
    assert set(converted.unet) == set(unet.state_dict())
    assert set(converted.vae) == set(vae.state_dict())
    assert sum(p.numel() for p in controlnet.parameters()) == sum(torch.Size(s).numel() for k, s in L.control_keys().items()
                                                                   if k.startswith("control_model.") and "mask_predict" not in k)
    assert controlnet.config.conditioning_channels == 9 and unet.config.cross_attention_dim == 768


# ------------------------------------------------------------------ the command

def convert_cli():
    import click

    from synfiqa_plugins.stage2 import caphuman

    @click.group()
    def cli():
        pass

    @cli.group()
    def convert():
        pass

    caphuman.register_commands(cli)
    return cli


def test_the_command_converts_the_located_files(tmp_path, monkeypatch):
    weights = tmp_path / "weights"
    control, sd, clip = write_originals(tmp_path / "originals")
    for asset, path in (("caphuman-control-module", control), ("caphuman-sd", sd)):
        (weights / asset).mkdir(parents=True)
        os.symlink(path, weights / asset / path.name)
    (weights / "clip-vit-large-patch14").symlink_to(clip, target_is_directory=True)
    monkeypatch.setenv("SYNFIQA_WEIGHTS", str(weights))
    result = CliRunner().invoke(convert_cli(), ["convert", "caphuman", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    networks, text_encoder, image_encoder, meta = load_networks(tmp_path / "out")
    assert meta["source"]["control"] == "Control-Module.pth" and meta["image_processor"]["size"] == 32
    assert networks.controlface.controlnet.config.conditioning_channels == 9


def test_the_command_names_every_missing_file_on_one_line(tmp_path, monkeypatch):
    for variable in ("HOME", "SYNFIQA_WEIGHTS", "TORCH_HOME", "HF_HOME"):
        monkeypatch.setenv(variable, str(tmp_path))
    result = CliRunner().invoke(convert_cli(), ["convert", "caphuman", "--out", str(tmp_path / "out")])
    assert result.exit_code != 0
    message = str(result.exception) if result.exception else result.output
    assert "\n" not in message.strip()
    for name in ("Control-Module.pth", "SDiff-Stage2.safetensors", "clip-vit-large-patch14"):
        assert name in message


REAL = os.environ.get("SYNFIQA_CAPHUMAN_CONTROL_MODULE", "")


@pytest.mark.skipif(not (REAL and Path(REAL).is_file()), reason="set SYNFIQA_CAPHUMAN_CONTROL_MODULE to the real "
                    "Control-Module.pth to check that every one of its keys is converted")
def test_every_key_of_the_real_control_module_is_consumed():
    from synfiqa_plugins.stage2.caphuman.convert import read_original

    control = read_original(Path(REAL))
    converted = convert_state_dicts(control, None)
    traced = {original for original, _ in converted.origin.values()}
    assert traced | set(converted.ignored) == set(control)


@pytest.mark.parametrize("config", [L.CLDM_CONFIG, CONFIG], ids=["sd15", "tiny"])
def test_the_architecture_is_read_off_the_shapes(config):
    keys = {**L.control_keys(config), **L.unet_keys(config), **L.vae_keys(config)}
    read = L.config_from_state_dict({k: torch.empty(s, device="meta") for k, s in keys.items()})
    for part in ("control_stage_config", "unet_config", "first_stage_config"):
        assert read["model"]["params"][part]["params"] == config["model"]["params"][part]["params"]
    assert read["model"]["params"]["img_linear_dim"] == config["model"]["params"]["img_linear_dim"]
