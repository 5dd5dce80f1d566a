"""The original BLIP retrieval checkpoint (salesforce/BLIP's BLIP_Retrieval names, as in
model_base_retrieval_coco.pth) -> transformers: a tiny random BLIP is written out under the
original names (spelled out here from BLIP's vit.py / med.py / blip_retrieval.py, with the
momentum encoders, queues and temperature the real file carries), converted on load and by
`synfiqa convert blip`, and must score exactly as the model it came from."""
from __future__ import annotations

import shutil

import pytest
import torch

from synfiqa.errors import CheckpointError, WeightsNotFoundError

WORDS = ["a", "photo", "of", "face", "the", "person", "high", "quality", "blurry", "clear", "man", "woman",
         "resolution", "frontal", "image", "with", "natural", "expression", "under", "good", "lighting",
         "condition", "without", "any", "occlusion"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ","] + WORDS
TEXTS = ["a high resolution clear frontal face image with natural expression", "a blurry photo of a man"]


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory):
    from transformers import BertTokenizer

    folder = tmp_path_factory.mktemp("bert-vocab")
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def source(vocab_dir, tmp_path_factory):
    """A tiny BlipForImageTextRetrieval whose text vocabulary has BLIP's two extra tokens,
    saved as a transformers folder (the reference)."""
    from transformers import BlipConfig, BlipForImageTextRetrieval

    config = BlipConfig(
        vision_config=dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=1,
                           image_size=32, patch_size=8, layer_norm_eps=1e-6),
        text_config=dict(vocab_size=len(VOCAB) + 2, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=1, max_position_embeddings=40, encoder_hidden_size=64,
                         bos_token_id=len(VOCAB), sep_token_id=3, pad_token_id=0),
        image_text_hidden_size=16,
    )
    torch.manual_seed(0)
    model = BlipForImageTextRetrieval(config).eval()
    with torch.no_grad():   # layer norms that are not the identity, so a swapped name shows
        for name, parameter in model.named_parameters():
            if "norm" in name.lower():
                parameter.add_(0.2 * torch.randn_like(parameter))
    folder = tmp_path_factory.mktemp("blip-source")
    model.save_pretrained(folder)
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        if (vocab_dir / name).is_file():
            shutil.copy(vocab_dir / name, folder / name)
    return model, folder


def original_names(model) -> dict:
    """The tiny model's tensors under the original BLIP_Retrieval names."""
    hf = model.state_dict()
    v = "vision_model."
    out = {"visual_encoder.cls_token": hf[v + "embeddings.class_embedding"],
           "visual_encoder.pos_embed": hf[v + "embeddings.position_embedding"],
           "visual_encoder.patch_embed.proj.weight": hf[v + "embeddings.patch_embedding.weight"],
           "visual_encoder.patch_embed.proj.bias": hf[v + "embeddings.patch_embedding.bias"],
           "visual_encoder.norm.weight": hf[v + "post_layernorm.weight"],
           "visual_encoder.norm.bias": hf[v + "post_layernorm.bias"]}
    for i in range(2):
        ours, theirs = f"visual_encoder.blocks.{i}.", f"{v}encoder.layers.{i}."
        for a, b in [("norm1", "layer_norm1"), ("norm2", "layer_norm2"), ("attn.qkv", "self_attn.qkv"),
                     ("attn.proj", "self_attn.projection"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")]:
            for p in ("weight", "bias"):
                out[f"{ours}{a}.{p}"] = hf[f"{theirs}{b}.{p}"]
    for key, value in hf.items():   # BLIP's BERT, the projections and the ITM head: same names
        if key.startswith(("text_encoder.", "vision_proj.", "text_proj.", "itm_head.")):
            out[key] = value
    out["text_encoder.embeddings.position_ids"] = torch.arange(40)[None]
    # training-only state of BLIP_Retrieval
    for key in list(out):
        for online, momentum in [("visual_encoder.", "visual_encoder_m."), ("text_encoder.", "text_encoder_m."),
                                 ("vision_proj.", "vision_proj_m."), ("text_proj.", "text_proj_m.")]:
            if key.startswith(online):
                out[momentum + key[len(online):]] = out[key].clone()
    out.update({"image_queue": torch.randn(16, 24), "text_queue": torch.randn(16, 24),
                "idx_queue": torch.full((1, 24), -100), "ptr_queue": torch.zeros(1, dtype=torch.long),
                "temp": torch.tensor(0.07)})
    return out


@pytest.fixture(scope="module")
def original_file(source, tmp_path_factory):
    model, _ = source
    path = tmp_path_factory.mktemp("blip-original") / "model_base_retrieval_coco.pth"
    torch.save({"model": original_names(model)}, path)
    return path


def crops(n=2, seed=0):
    return torch.randint(0, 256, (n, 3, 112, 112), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


@pytest.fixture(scope="module")
def reference_scores(source):
    from synfiqa_plugins.models.blip import BlipITC

    return BlipITC(path=str(source[1]), device="cpu").image_text_similarity(crops(), TEXTS)


def test_every_original_key_has_its_transformers_name(source, original_file):
    from synfiqa_plugins.models.blip import convert_original_state_dict

    model, _ = source
    converted = convert_original_state_dict(torch.load(original_file)["model"])
    assert set(converted) == set(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(converted[key], value), key


def test_the_original_file_scores_as_the_model_it_came_from(original_file, vocab_dir, reference_scores, isolated):
    from synfiqa_plugins.models.blip import BlipITC

    model = BlipITC(path=str(original_file), tokenizer=str(vocab_dir), device="cpu")
    assert model.model_dir is None and model.checkpoint == original_file
    assert model.image_size == 32 and model.model.config.vision_config.layer_norm_eps == 1e-6
    assert len(model.tokenizer) == len(VOCAB) + 2 and model.tokenizer.convert_tokens_to_ids("[ENC]") == len(VOCAB) + 1
    scores = model.image_text_similarity(crops(), TEXTS)
    assert torch.allclose(scores, reference_scores, atol=1e-6)
    assert scores[0] != scores[1]


def test_found_without_a_path_with_the_bert_vocabulary_from_the_hf_cache(original_file, vocab_dir, reference_scores,
                                                                          isolated, monkeypatch):
    from synfiqa_plugins.models.blip import BlipITC

    weights = isolated / "weights"
    (weights / "blip-retrieval-coco").mkdir(parents=True)
    shutil.copy(original_file, weights / "blip-retrieval-coco" / original_file.name)
    monkeypatch.setenv("SYNFIQA_WEIGHTS", str(weights))
    # no vocabulary anywhere: the error names the bert-base-uncased asset and its cache folders
    with pytest.raises(WeightsNotFoundError) as caught:
        BlipITC(device="cpu")
    assert "'bert-base-uncased'" in str(caught.value) and "models--google-bert--bert-base-uncased" in str(caught.value)
    # the legacy repo name's cache folder is searched too
    snapshot = isolated / "hf" / "hub" / "models--bert-base-uncased" / "snapshots" / "abc123"
    shutil.copytree(vocab_dir, snapshot)
    model = BlipITC(device="cpu")
    assert model.checkpoint == weights / "blip-retrieval-coco" / original_file.name
    assert torch.allclose(model.image_text_similarity(crops(), TEXTS), reference_scores, atol=1e-6)


def test_nothing_anywhere_names_both_ways_in(isolated):
    from synfiqa_plugins.models.blip import BlipITC

    with pytest.raises(WeightsNotFoundError) as caught:
        BlipITC(device="cpu")
    message = str(caught.value)
    assert "'blip-itm-base-coco' not found" in message and "'blip-retrieval-coco' not found" in message
    assert "model_base_retrieval_coco.pth" in message and "huggingface-cli download Salesforce/blip-itm-base-coco" in message


def test_synfiqa_convert_blip_writes_a_folder_blip_itc_loads(original_file, vocab_dir, reference_scores, isolated):
    from click.testing import CliRunner

    from synfiqa_cli.main import cli
    from synfiqa_plugins.models.blip import BlipITC

    out = isolated / "converted"
    result = CliRunner().invoke(cli, ["convert", "blip", str(original_file), "--out", str(out), "--tokenizer", str(vocab_dir)])
    assert result.exit_code == 0, result.output
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert any((out / name).is_file() for name in ("vocab.txt", "tokenizer.json"))
    model = BlipITC(path=str(out), device="cpu")
    assert model.model_dir == out
    assert torch.allclose(model.image_text_similarity(crops(), TEXTS), reference_scores, atol=1e-6)
    again = CliRunner().invoke(cli, ["convert", "blip", str(original_file), "--out", str(out), "--tokenizer", str(vocab_dir)])
    assert again.exit_code != 0 and "not empty" in again.output


def test_unknown_and_missing_keys_are_named(source, original_file, vocab_dir, isolated):
    from synfiqa_plugins.models.blip import BlipITC

    state = torch.load(original_file)["model"]
    extra = dict(state, **{"visual_encoder.blocks.0.attn.rel_pos": torch.zeros(3)})
    torch.save({"model": extra}, isolated / "extra.pth")
    with pytest.raises(CheckpointError, match=r"not BLIP retrieval keys: visual_encoder.blocks.0.attn.rel_pos"):
        BlipITC(path=str(isolated / "extra.pth"), tokenizer=str(vocab_dir), device="cpu")

    missing = {k: v for k, v in state.items() if k != "visual_encoder.blocks.1.mlp.fc2.bias"}
    torch.save({"model": missing}, isolated / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing keys: vision_model.encoder.layers.1.mlp.fc2.bias"):
        BlipITC(path=str(isolated / "missing.pth"), tokenizer=str(vocab_dir), device="cpu")

    torch.save({"model": {"conv.weight": torch.zeros(1)}}, isolated / "other.pth")
    with pytest.raises(CheckpointError, match="not BLIP retrieval keys: conv.weight"):
        BlipITC(path=str(isolated / "other.pth"), tokenizer=str(vocab_dir), device="cpu")

    (isolated / "truncated.pth").write_bytes(original_file.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"not a readable PyTorch checkpoint.*'blip-retrieval-coco'.*storage.googleapis"):
        BlipITC(path=str(isolated / "truncated.pth"), tokenizer=str(vocab_dir), device="cpu")


def test_a_folder_of_another_blip_head_is_refused_not_filled_with_random_weights(source, vocab_dir, isolated):
    from transformers import BlipForConditionalGeneration

    from synfiqa_plugins.models.blip import BlipITC

    model, _ = source
    captioning = isolated / "blip-captioning"
    BlipForConditionalGeneration(model.config).save_pretrained(captioning)
    shutil.copy(vocab_dir / "vocab.txt", captioning / "vocab.txt")
    with pytest.raises(CheckpointError) as caught:
        BlipITC(path=str(captioning), device="cpu")
    message = str(caught.value)
    assert "not a BlipForImageTextRetrieval model" in message
    assert "missing keys: itm_head.bias, itm_head.weight, text_encoder." in message
    assert "unexpected keys: text_decoder." in message
