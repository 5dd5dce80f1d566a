"""clip-attributes filter on a tiny random CLIPModel saved as a transformers folder.

The probabilities are checked against an independent computation (the model's towers
called directly, prompt ensembles averaged here, cosine x exp(logit_scale), softmax); the
real ViT-L/14 weights are not available offline, so accuracy on real photos is not tested.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from synfiqa.filtering import FaceSubject

from synfiqa_plugins.filters import clip_attributes as ca

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def bytes_to_unicode() -> dict[int, str]:
    # the byte -> unicode table of CLIP's BPE (written out here, not imported)
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    folder = tmp_path_factory.mktemp("tiny-clip")
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    tokenizer.save_pretrained(str(folder))
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokens), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77,
                         bos_token_id=len(tokens) - 2, eos_token_id=len(tokens) - 1, pad_token_id=len(tokens) - 1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16, logit_scale_init_value=3.0)
    model = CLIPModel(config).eval()
    model.save_pretrained(str(folder))
    return folder


def subject(name, seed, size=96):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    box = np.array([20.0, 24.0, 70.0, 80.0])
    landmarks = np.zeros((5, 2))
    return FaceSubject(name, f"{name}.jpg", image, landmarks, box)


def reference_probabilities(folder, subjects, margin):
    """Independent: the towers from the saved folder, prompts encoded one by one, the
    image square cut here with numpy, mean/std by hand."""
    from transformers import CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(str(folder)).eval()
    tok = CLIPTokenizer.from_pretrained(str(folder))
    size = model.config.vision_config.image_size
    import cv2

    out = {}
    with torch.no_grad():
        def ensemble(prompts):
            vs = []
            for p in prompts:
                ids = tok(p, return_tensors="pt")
                v = model.text_projection(model.text_model(**ids).pooler_output)[0]
                vs.append(v / torch.linalg.vector_norm(v))
            m = torch.stack(vs).sum(0) / len(vs)
            return m / torch.linalg.vector_norm(m)

        for s in subjects:
            x1, y1, x2, y2 = s.box
            side = max(x2 - x1, y2 - y1) * (1 + 2 * margin)
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            length = int(round(side))
            left, top = int(round(cx - side / 2)), int(round(cy - side / 2))
            canvas = np.zeros((length, length, 3), np.uint8)
            for yy in range(length):
                for xx in range(length):
                    py, px = top + yy, left + xx
                    if 0 <= py < s.image.shape[0] and 0 <= px < s.image.shape[1]:
                        canvas[yy, xx] = s.image[py, px]
            square = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_CUBIC)
            x = torch.tensor(square, dtype=torch.float64).permute(2, 0, 1) / 255.0
            mean = torch.tensor([0.48145466, 0.4578275, 0.40821073], dtype=torch.float64)[:, None, None]
            std = torch.tensor([0.26862954, 0.26130258, 0.27577711], dtype=torch.float64)[:, None, None]
            v = model.visual_projection(model.vision_model(pixel_values=((x - mean) / std).float()[None]).pooler_output)[0]
            v = v / torch.linalg.vector_norm(v)
            probs = {}
            for attribute, (pos, neg) in ca.PROMPTS.items():
                a, b = ensemble(pos), ensemble(neg)
                scale = float(np.exp(float(model.logit_scale)))
                la, lb = scale * float(v @ a), scale * float(v @ b)
                probs[attribute] = 1.0 / (1.0 + np.exp(lb - la))
            out[s.identity] = probs
    return out


def test_probabilities_equal_an_independent_computation_in_any_batch(tiny_clip):
    subjects = [subject(f"s{i}", i) for i in range(5)]
    subjects[3].box = np.array([-10.0, 50.0, 60.0, 110.0])   # partly outside the photo
    expected = reference_probabilities(tiny_clip, subjects, 0.25)
    for batch_size in (1, 2, 16):
        f = ca.ClipAttributesFilter(path=str(tiny_clip), device="cpu", batch_size=batch_size)
        squares = [ca.face_square(s.image, s.box, f.margin, f.image_size) for s in subjects]
        got = f.probabilities(squares)
        for i, s in enumerate(subjects):
            for attribute in ("glasses", "sunglasses", "neutral"):
                assert got[attribute][i].item() == pytest.approx(expected[s.identity][attribute], abs=1e-5)
    # the random model does not give 0.5 everywhere: the check can fail
    assert max(abs(p - 0.5) for probs in expected.values() for p in probs.values()) > 1e-3


def test_decisions_follow_the_thresholds_and_record_the_probabilities(tiny_clip):
    subjects = [subject(f"s{i}", i) for i in range(4)] + [FaceSubject("faceless", problem="no face found")]
    expected = reference_probabilities(tiny_clip, subjects[:4], 0.25)
    glasses = sorted(e["glasses"] for e in expected.values())
    cut = (glasses[1] + glasses[2]) / 2   # two above, two below
    f = ca.ClipAttributesFilter(path=str(tiny_clip), device="cpu", max_glasses=cut, max_sunglasses=1.0,
                                min_neutral=0.0)
    decisions = f.judge(subjects, None)
    assert len(decisions) == 5
    for s, d in zip(subjects[:4], decisions):
        p = expected[s.identity]
        assert d.keep == (p["glasses"] <= cut)
        assert d.value == pytest.approx(p["glasses"], abs=1e-5)
        for attribute in ("glasses", "sunglasses", "neutral"):
            assert f"p({attribute}) {p[attribute]:.3f}" in d.reason
        if not d.keep:
            assert d.reason.startswith(f"glasses {p['glasses']:.3f} > ")
    assert sum(d.keep for d in decisions[:4]) == 2
    assert decisions[4].keep and decisions[4].value is None and "not measured" in decisions[4].reason

    # expression only: removed when p(neutral) <= min_neutral
    neutral = sorted(e["neutral"] for e in expected.values())
    cut = (neutral[0] + neutral[1]) / 2
    f = ca.ClipAttributesFilter(path=str(tiny_clip), device="cpu", checks=["expression"], min_neutral=cut)
    decisions = f.judge(subjects[:4], None)
    for s, d in zip(subjects[:4], decisions):
        p = expected[s.identity]["neutral"]
        assert d.keep == (p > cut) and d.value == pytest.approx(p, abs=1e-5)
        assert "sunglasses" not in d.reason
    assert sum(not d.keep for d in decisions) == 1


def test_bad_parameters_are_config_errors(tiny_clip):
    from synfiqa.errors import ConfigError

    with pytest.raises(ConfigError, match="checks"):
        ca.ClipAttributesFilter(path=str(tiny_clip), device="cpu", checks=["beard"])
    with pytest.raises(ConfigError, match="max_glasses"):
        ca.ClipAttributesFilter(path=str(tiny_clip), device="cpu", max_glasses=1.5)


def test_missing_weights_is_one_line_naming_the_files(tmp_path, monkeypatch, tiny_clip):
    from synfiqa.errors import WeightsNotFoundError

    monkeypatch.setenv("SYNFIQA_WEIGHTS", str(tmp_path / "none"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(WeightsNotFoundError) as caught:
        ca.ClipAttributesFilter(path=str(tmp_path / "empty"), device="cpu")
    message = str(caught.value)
    assert "\n" not in message
    for name in ("config.json", "vocab.json", "merges.txt", "model.safetensors", "pytorch_model.bin"):
        assert name in message

    # the tokenizer and config there, the weights not
    import shutil

    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("config.json", "vocab.json", "merges.txt"):
        shutil.copy(tiny_clip / name, partial / name)
    with pytest.raises(WeightsNotFoundError) as caught:
        ca.ClipAttributesFilter(path=str(partial), device="cpu")
    assert "\n" not in str(caught.value) and "model.safetensors" in str(caught.value)


def test_build_runs_the_filter_and_records_each_decision(faces_copy, tmp_path, tiny_clip):
    from synfiqa.config import load_config
    from synfiqa.stages.build import build

    config = load_config(None, [f"generate.params.folder.path={json.dumps(str(faces_copy))}",
                                'generate.params.folder.grouping="file"', 'filter.chain=["clip-attributes"]',
                                f"filter.params.clip-attributes.path={json.dumps(str(tiny_clip))}",
                                'filter.params.clip-attributes.device="cpu"',
                                "filter.params.clip-attributes.max_glasses=1.0",
                                "filter.params.clip-attributes.max_sunglasses=1.0",
                                "filter.params.clip-attributes.min_neutral=0.0",
                                "run.references=1", "run.degraded=2", 'annotate.chain=["fr"]'])
    out = tmp_path / "out"
    lines = []
    build(config, out, echo=lines.append, progress=False)
    assert "filter: kept 6 of 6 identities (clip-attributes removed 0)" in lines
    caches = [p for p in out.rglob("*.json") if "verdicts" in p.read_text()]
    assert len(caches) == 1
    verdicts = json.loads(caches[0].read_text())["verdicts"]
    assert len(verdicts) == 6
    for v in verdicts:
        p = v["values"]["clip-attributes"]
        assert 0.0 < p < 1.0
        assert v["kept"]
