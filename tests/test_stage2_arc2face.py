"""The arc2face Stage-2 backend on tiny random models saved in the real folder formats (a
diffusers UNet and ControlNet, a transformers CLIP text encoder and tokenizer with an "id"
token, an ArcFace ONNX graph, the tiny FLAME of the head-model tests): the id-token hook
against replacing the embedding row, seeding and batch independence, a build end to end,
the one-line error for missing files. Random networks draw no faces."""
from __future__ import annotations

import copy
import os
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from synfiqa.config import load_config
from synfiqa.errors import WeightsNotFoundError
from synfiqa.stages.build import build
from tests.test_headmodel import dump_with_fake_chumpy, tiny_landmarks
from tests.test_hints import head_model
from tests.test_stage2_caphuman_convert import byte_vocabulary

onnx = pytest.importorskip("onnx")
from tests.test_models_arcface_onnx import DIM, build_model  # noqa: E402

WIDTH = DIM          # the tiny ArcFace gives DIM numbers; the tiny text encoder is that wide
QUIET = dict(echo=lambda *_: None)
SETTINGS = ['stage2.backend="arc2face"', "run.references=2", "run.degraded=3", 'run.device="cpu"',
            "stage2.params.arc2face.size=128", "stage2.params.arc2face.steps=3",
            "stage2.params.arc2face.batch_size=4"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_tokenizer_files(folder):
    folder.mkdir(parents=True, exist_ok=True)
    vocab = byte_vocabulary()
    vocab["id</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\ni d</w>\n")
    return folder


def tiny_text_encoder(seed=3):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    return CLIPTextModel(CLIPTextConfig(vocab_size=515, hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, max_position_embeddings=77, bos_token_id=512,
                                        eos_token_id=513, pad_token_id=513)).eval()


def write_arc2face_folder(folder):
    from diffusers import ControlNetModel, DDIMScheduler

    from synfiqa_plugins.stage2.caphuman.network import SCHEDULER_CONFIG
    from synfiqa_plugins.stage2.caphuman.random_init import SIZES, random_vae

    options = dict(SIZES["tiny"], cross_attention_dim=WIDTH)
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    UNet2DConditionModel(in_channels=4, out_channels=4, sample_size=16, **options).save_pretrained(folder / "arc2face")
    torch.manual_seed(1)
    control = ControlNetModel(in_channels=4, conditioning_channels=3,
                              **{k: v for k, v in options.items() if k != "up_block_types"})
    with torch.no_grad():   # trained zero convolutions are no longer zero
        for module in [*control.controlnet_down_blocks, control.controlnet_mid_block]:
            module.weight.normal_(0, 0.05)
            module.bias.normal_(0, 0.05)
    control.save_pretrained(folder / "controlnet")
    random_vae("tiny").save_pretrained(folder / "vae")
    tiny_text_encoder().save_pretrained(folder / "encoder")
    tiny_tokenizer_files(folder / "tokenizer")   # SD1.5's tokenizer/ layout: vocab.json, merges.txt, config
    (folder / "tokenizer" / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77}))
    DDIMScheduler(**SCHEDULER_CONFIG).save_pretrained(folder / "scheduler")
    return folder


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    write_arc2face_folder(root / "arc2face")
    (root / "arcface-onnx").mkdir()
    build_model(root / "arcface-onnx" / "w600k_r50.onnx")
    raw = head_model()
    (root / "flame-generic-model").mkdir()
    (root / "flame-generic-model" / "generic_model.pkl").write_bytes(dump_with_fake_chumpy(raw))
    (root / "flame-landmark-embedding").mkdir()
    np.save(root / "flame-landmark-embedding" / "landmark_embedding.npy", tiny_landmarks(len(raw["f"])), allow_pickle=True)
    return root


@pytest.fixture
def weights_env(weights, monkeypatch, tmp_path):
    monkeypatch.setenv("SYNFIQA_WEIGHTS", str(weights))
    monkeypatch.setenv("HOME", str(tmp_path))
    return weights


def test_the_id_hook_gives_the_states_of_a_replaced_embedding_row(tmp_path):
    from transformers import CLIPTokenizer

    from synfiqa_plugins.stage2.arc2face import ID_PROMPT, IdTokenHook, encode_identity

    folder = tiny_tokenizer_files(tmp_path)
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    id_token = tokenizer.convert_tokens_to_ids("id</w>")
    ids = tokenizer([ID_PROMPT], padding="max_length", max_length=77, return_tensors="pt")["input_ids"][0]
    assert (ids == id_token).sum() == 1
    where = int((ids == id_token).nonzero()[0, 0])
    model = tiny_text_encoder()
    plain = model(input_ids=ids[None]).last_hidden_state[0]
    hook = IdTokenHook(model, id_token)
    rng = np.random.default_rng(0)
    embeddings = torch.from_numpy(rng.normal(size=(2, 40)).astype(np.float32))   # narrower than the encoder: padded
    hooked = encode_identity(tokenizer, model, hook, embeddings)
    for row in range(2):
        reference = copy.deepcopy(model)
        hook_free = reference.get_input_embeddings()
        hook_free._forward_hooks.clear()
        hook_free._forward_pre_hooks.clear()
        vector = np.zeros(WIDTH, np.float32)
        vector[:40] = embeddings[row].numpy() / np.linalg.norm(embeddings[row].numpy())
        with torch.no_grad():
            hook_free.weight[id_token] = torch.from_numpy(vector)
            expected = reference(input_ids=ids[None]).last_hidden_state[0]
        assert torch.allclose(hooked[row], expected, atol=1e-6)
        assert torch.equal(hooked[row, :where], plain[:where])           # causal: before the id token unchanged
        assert not torch.allclose(hooked[row, where:], plain[where:])
    # the hook is idle outside encode_identity
    assert torch.equal(model(input_ids=ids[None]).last_hidden_state[0], plain)


def backend(context):
    config = context.config
    return context.create("stage2-backend", "arc2face", config["stage2"]["params"]["arc2face"])


def test_images_are_seeded_and_do_not_depend_on_their_batch(weights_env):
    from synfiqa.context import RunContext
    from synfiqa.registry import get_registry
    from synfiqa.stages.s3_synthesize import draw_plan
    from synfiqa.stages.s3_synthesize.plan import SyntheticBank
    from synfiqa.synthesis import Plan

    config = load_config(None, SETTINGS)
    context = RunContext(config, get_registry())
    model = backend(context)
    assert model.hook.id_token == 514 == model.tokenizer.convert_tokens_to_ids("id</w>")   # not the unknown token
    image = np.asarray(Image.open("tests/data/faces/obama_1.jpg").convert("RGB"))
    photo = SimpleNamespace(key="x", image=image, face=context.model("detector").detect(image)[0])
    identity = SimpleNamespace(name="obama", photos=(photo,))
    plan = draw_plan(config, "obama", SyntheticBank())
    whole = {(r.role, r.index): r.image for r in model.render(identity, plan, context)}
    assert len(whole) == 5 and all(v.shape == (128, 128, 3) for v in whole.values())
    subset = Plan(references=(plan.references[1],), degraded=(plan.degraded[2], plan.degraded[0]))
    again = {(r.role, r.index): r.image for r in model.render(identity, subset, context)}
    assert set(again) == {("reference", 1), ("degraded", 2), ("degraded", 0)}
    for key, value in again.items():
        assert np.array_equal(value, whole[key]), key
    assert not np.array_equal(whole[("degraded", 0)], whole[("degraded", 1)])
    other = {(r.role, r.index): r.image for r in model.render(SimpleNamespace(name="other", photos=(photo,)),
                                                                  subset, context)}
    assert not np.array_equal(other[("degraded", 0)], whole[("degraded", 0)])   # seeded per identity


def test_an_arc2face_build_runs_end_to_end_and_records_the_faceless_images(weights_env, tmp_path):
    out = tmp_path / "out"
    build(load_config(None, SETTINGS), out, **QUIET)
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    made = [r for r in rows if r.get("role") in ("reference", "degraded")]
    assert len({r["identity"] for r in made}) == 4 and len(made) == 4 * (2 + 3)
    skipped = [r for r in made if r["status"] == "skipped"]
    assert len(skipped) >= len(made) - 2
    assert all(r["reason"] in ("no-face", "image-too-small") for r in skipped)
    for identity in {r["identity"] for r in made}:
        names = sorted(p.name for p in (out / "generated" / "stage2" / identity).glob("*.png"))
        assert names == sorted([f"reference-{k}.png" for k in range(2)] + [f"degraded-{k}.png" for k in range(3)])


def test_missing_weights_are_named_on_one_line(tmp_path, monkeypatch):
    for variable in ("HOME", "SYNFIQA_WEIGHTS", "TORCH_HOME", "HF_HOME"):
        monkeypatch.setenv(variable, str(tmp_path))
    from synfiqa_plugins.stage2.arc2face import Arc2FaceBackend

    with pytest.raises(WeightsNotFoundError) as error:
        Arc2FaceBackend(device="cpu")
    message = str(error.value)
    assert "\n" not in message
    for name in ("arc2face/config.json", "controlnet/config.json", "encoder/config.json", "w600k_r50.onnx",
                 "generic_model.pkl", "landmark_embedding.npy"):
        assert name in message


def test_the_loop_matches_diffusers_controlnet_pipeline(tmp_path):
    """The sampler against diffusers' own StableDiffusionControlNetPipeline (DDIM, eta 0, CFG,
    the same prompt embeddings, starting latents and hint): the same final latents."""
    from diffusers import StableDiffusionControlNetPipeline

    from synfiqa_plugins.stage2.arc2face import denoise, load_folder

    unet, controlnet, vae, encoder, tokenizer, scheduler = load_folder(write_arc2face_folder(tmp_path / "a"), "cpu",
                                                                        torch.float32)
    g = torch.Generator().manual_seed(5)
    text, negative = torch.randn(2, 77, WIDTH, generator=g), torch.randn(2, 77, WIDTH, generator=g)
    noise, hint = torch.randn(2, 4, 16, 16, generator=g), torch.rand(2, 3, 128, 128, generator=g)
    ours = denoise(unet, controlnet, scheduler, noise, hint, text, negative, steps=4, guidance=3.0)
    pipe = StableDiffusionControlNetPipeline(vae=vae, text_encoder=encoder, tokenizer=tokenizer, unet=unet,
                                             controlnet=controlnet, scheduler=scheduler, safety_checker=None,
                                             feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(prompt_embeds=text, negative_prompt_embeds=negative, image=hint, latents=noise.clone(),
                  num_inference_steps=4, guidance_scale=3.0, eta=0.0, height=128, width=128,
                  output_type="latent").images
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()
    assert not torch.allclose(ours, denoise(unet, controlnet, scheduler, noise, hint, text, negative, steps=4,
                                            guidance=1.0), atol=1e-3)


def _load_encoder_with_info(folder):
    from transformers import CLIPTextModel

    return CLIPTextModel.from_pretrained(folder, output_loading_info=True)


def test_an_encoder_saved_in_the_transformers_4_layout_loads_under_transformers_5(tmp_path):
    """Arc2Face's encoder/ was saved by transformers 4 (keys under `text_model.`); transformers
    5's CLIPTextModel has no such level (STAGE2.md 2.4). Every weight must still arrive."""
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=12)
    torch.manual_seed(0)
    state = CLIPTextModel(config).state_dict()
    legacy = {(key if key.startswith("text_model.") else f"text_model.{key}"): value.contiguous()
              for key, value in state.items()}
    assert all(key.startswith("text_model.") for key in legacy)
    config.save_pretrained(tmp_path)
    save_file(legacy, tmp_path / "model.safetensors")
    model, info = _load_encoder_with_info(tmp_path)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    loaded = model.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in state.items())


@pytest.mark.skipif(not os.environ.get("SYNFIQA_ARC2FACE_ENCODER"),
                    reason="set SYNFIQA_ARC2FACE_ENCODER to the real Arc2Face encoder/ folder to run")
def test_the_real_arc2face_encoder_loads_every_key():
    model, info = _load_encoder_with_info(os.environ["SYNFIQA_ARC2FACE_ENCODER"])
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
