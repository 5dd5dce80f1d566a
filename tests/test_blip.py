"""BLIP ITC (blip-itc) end to end on a tiny random BlipConfig and a tiny BERT vocabulary,
saved in the transformers layout and found through every place the lookup searches."""
from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

WORDS = ["a", "photo", "of", "face", "the", "person", "high", "quality", "blurry", "clear", "man", "woman"]


def write_tiny_blip(folder, words) -> None:
    """A tiny random BLIP retrieval model saved by transformers in `folder`, with a BERT
    vocabulary of `words` (the special tokens first): the real format, through the real loader."""
    from transformers import BertTokenizer, BlipConfig, BlipForImageTextRetrieval

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ","] + [w for w in words if w not in (".", ",")]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    config = BlipConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=64, encoder_hidden_size=32,
                         bos_token_id=2, sep_token_id=3, pad_token_id=0),
        image_text_hidden_size=16,
    )
    torch.manual_seed(0)
    BlipForImageTextRetrieval(config).eval().save_pretrained(folder)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("blip-itm-base-coco")
    write_tiny_blip(folder, WORDS)
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    return folder


def crops(n=3, size=112, seed=0):
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_itc_is_the_cosine_of_the_projected_normalised_cls_features(model_dir, isolated):
    from synfiqa_plugins.models.blip import CLIP_MEAN, CLIP_STD, BlipITC

    model = BlipITC(path=str(model_dir), device="cpu")
    assert model.image_size == 32   # from the config
    x = crops()
    texts = ["a photo of a face", "a blurry photo of a man", "a photo of a face"]
    scores = model.image_text_similarity(x, texts)
    assert scores.shape == (3,) and scores.dtype == torch.float64

    # by hand from the submodules: 32x32 bicubic, CLIP mean/std; text-only encoder; CLS rows
    net = model.model
    pixels = F.interpolate(x.float() / 255, size=(32, 32), mode="bicubic", align_corners=False).clamp(0, 1)
    pixels = (pixels - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]
    tokens = model.tokenizer(texts, padding=True, return_tensors="pt")
    assert tokens["input_ids"][0, 0] == model.tokenizer.cls_token_id
    with torch.no_grad():
        image = net.vision_proj(net.vision_model(pixel_values=pixels).last_hidden_state[:, 0])
        text = net.text_proj(net.text_encoder(input_ids=tokens["input_ids"],
                                              attention_mask=tokens["attention_mask"]).last_hidden_state[:, 0])
        expected = F.cosine_similarity(image, text, dim=1)
        # and transformers' own ITC path: the diagonal of its image x text cosine matrix
        matrix = net(pixel_values=pixels, input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                     use_itm_head=False).itm_score
    assert torch.allclose(scores, expected.double(), atol=1e-5)
    assert torch.allclose(scores, matrix.diagonal().double(), atol=1e-5)
    assert (scores.abs() <= 1).all() and scores[0] != scores[1]
    # one text for every crop; batches do not change the numbers
    one = model.image_text_similarity(x, ["a photo of a face"])
    model.batch_size = 2
    assert torch.allclose(one[[0, 2]], model.image_text_similarity(x, ["a photo of a face"])[[0, 2]], atol=1e-6)
    assert torch.allclose(one[[0, 2]], scores[[0, 2]], atol=1e-6)
    with pytest.raises(ValueError, match="3 crops but 2 texts"):
        model.image_text_similarity(x, ["a", "b"])


@pytest.mark.parametrize("place", ["synfiqa_weights", "synfiqa_cache", "hf_cache"])
def test_the_folder_is_found_in_each_place(model_dir, isolated, monkeypatch, place):
    from synfiqa_plugins.models.blip import BlipITC, find_model_dir

    if place == "synfiqa_weights":
        target = isolated / "weights" / "blip-itm-base-coco"
        monkeypatch.setenv("SYNFIQA_WEIGHTS", str(isolated / "weights"))
    elif place == "synfiqa_cache":
        target = isolated / "home" / ".cache" / "synfiqa" / "weights" / "blip-itm-base-coco"
    else:
        repo = isolated / "hf" / "hub" / "models--Salesforce--blip-itm-base-coco"
        target = repo / "snapshots" / "0123456789abcdef"
        (repo / "snapshots" / "older").mkdir(parents=True)   # an incomplete older snapshot
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text("0123456789abcdef")
    shutil.copytree(model_dir, target)
    assert find_model_dir() == target
    assert BlipITC(device="cpu").image_text_similarity(crops(1), ["a photo of a face"]).shape == (1,)


def test_missing_folder_names_every_place_including_the_hf_snapshots(isolated):
    from synfiqa.errors import WeightsNotFoundError
    from synfiqa_plugins.models.blip import BlipITC

    with pytest.raises(WeightsNotFoundError) as caught:
        BlipITC(device="cpu")
    message = str(caught.value)
    assert "'blip-itm-base-coco'" in message and "config.json" in message
    assert str(isolated / "hf" / "hub" / "models--Salesforce--blip-itm-base-coco" / "snapshots") in message
    assert str(isolated / "home" / ".cache" / "synfiqa" / "weights" / "blip-itm-base-coco") in message
    assert "huggingface-cli download Salesforce/blip-itm-base-coco" in message


def test_a_folder_without_a_tokenizer_is_a_clear_error(model_dir, isolated):
    from synfiqa.errors import WeightsNotFoundError
    from synfiqa_plugins.models.blip import BlipITC

    bare = isolated / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(model_dir / name, bare / name)
    with pytest.raises(WeightsNotFoundError, match="tokenizer"):
        BlipITC(path=str(bare), device="cpu")
