"""The Stage-3 plan (synfiqa.stages.s3_synthesize.plan): the DICT_DECA_DEG_REF.json reader, the synthetic
bank, seeding, prompts. Expected values are written by hand, not computed by the module.

Run as a script (``python tests/test_plan.py OUT.png``) it draws docs/plan_synthetic_bank.png."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from synfiqa.errors import DataFileError
from synfiqa.stages.s3_synthesize.plan import (NEGATIVE_PROMPT, REFERENCE_PROMPT, SCENES, Bank, DecaBank,
                                    SyntheticBank, plan_identity)

DEG30 = math.pi / 6  # 30 degrees in radians


def _entry(pose=(0, 0, 0, 0, 0, 0), cam=(10.0, 0.0, 0.0), exp0=0.0, dc=3.0):
    """One bank entry in the original's layout: DECA's arrays with their batch axis of 1."""
    light = [[dc, dc, dc]] + [[0.0, 0.0, 0.0]] * 8
    return {"deca": {"pose": [list(pose)], "light": [light], "exp": [[exp0] + [0.0] * 49],
                     "tform": [[[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]], "cam": [list(cam)]},
            "image": "ignored/extra/key.jpg"}


def _bank_dict():
    # tokens written out of order: the original sorts them
    ref = {"ref_2": _entry(cam=(12.0, 0.0, 0.0)),
           "ref_0": _entry(pose=(0, DEG30, 0, 0.2, 0, 0), cam=(10.0, 0.01, -0.02)),
           "ref_1": _entry(pose=(0.349065850398866, 0, 0, 0, 0, 0), cam=(8.0, 0.0, 0.0))}  # 20 deg about x
    deg = {f"deg_{i}": _entry(pose=(0, -0.1 * i, 0, 0, 0, 0), exp0=float(i)) for i in (6, 3, 0, 5, 1, 4, 2)}
    return {"REF": ref, "DEG": deg}


@pytest.fixture
def bank_file(tmp_path):
    path = tmp_path / "DICT_DECA_DEG_REF.json"
    path.write_text(json.dumps(_bank_dict()))
    return path


# ------------------------------------------------------------------ the DECA bank reader
def test_deca_bank_counts_order_and_conversions(bank_file):
    bank = DecaBank.from_json(bank_file)
    assert isinstance(bank, Bank)
    assert (len(bank.ref), len(bank.deg)) == (3, 7)
    refs = bank.reference_specs(3)
    assert [s.source for s in refs] == ["REF/ref_0", "REF/ref_1", "REF/ref_2"]
    assert [s.index for s in refs] == [0, 1, 2] and all(s.role == "reference" for s in refs)
    # axis-angle (0, pi/6, 0): 30 degrees about +y -> yaw +30 (nose towards +x), pitch 0, roll 0
    yaw, pitch, roll, jaw = refs[0].pose
    assert yaw == pytest.approx(30.0, abs=1e-9)
    assert pitch == pytest.approx(0.0, abs=1e-9) and roll == pytest.approx(0.0, abs=1e-9)
    # jaw axis-angle (0.2, 0, 0) rad -> 0.2 * 180 / pi = 11.4591559 degrees
    assert jaw == pytest.approx(11.4591559, abs=1e-6)
    # 20 degrees about +x -> pitch 20, yaw 0
    assert refs[1].pose[:3] == pytest.approx((0.0, 20.0, 0.0), abs=1e-9)
    # framing: REF cam scales 10, 8, 12 -> mean 10; cam (10, 0.01, -0.02) -> (1.0, 0.1, 0.2)
    assert refs[0].framing == pytest.approx((1.0, 0.1, 0.2))
    assert refs[1].framing[0] == pytest.approx(0.8) and refs[2].framing[0] == pytest.approx(1.2)
    # the DECA arrays are kept for a verbatim swap
    assert refs[0].code["pose"][0][1] == pytest.approx(DEG30)
    assert refs[0].light[0] == (3.0, 3.0, 3.0) and len(refs[0].expression) == 50


def test_deca_bank_degraded_seeded_sample_without_replacement(bank_file):
    bank = DecaBank.from_json(bank_file)
    seven = bank.degraded_specs(7, 3, "id_a")
    assert sorted(s.source for s in seven) == sorted(f"DEG/deg_{i}" for i in range(7))
    assert [s.index for s in seven] == list(range(7))
    # deg_i has exp[0] = i and yaw = -0.1 i rad
    for s in seven:
        i = int(s.source.split("_")[1])
        assert s.expression[0] == float(i)
        assert s.yaw == pytest.approx(-math.degrees(0.1 * i), abs=1e-9)
    assert [s.source for s in bank.degraded_specs(7, 3, "id_a")] == [s.source for s in seven]
    # a prefix does not depend on D, and more than 7 cycles through whole permutations
    assert [s.source for s in bank.degraded_specs(4, 3, "id_a")] == [s.source for s in seven[:4]]
    twenty = bank.degraded_specs(20, 3, "id_a")
    assert [s.source for s in twenty[:7]] == [s.source for s in seven]
    assert sorted(s.source for s in twenty[7:14]) == sorted(s.source for s in seven)
    others = [[s.source for s in bank.degraded_specs(7, 3, f"id_{c}")] for c in "bcdef"]
    assert any(o != [s.source for s in seven] for o in others)


def test_deca_bank_references_cycle_when_more_are_asked(bank_file):
    refs = DecaBank.from_json(bank_file).reference_specs(5)
    assert [s.source for s in refs] == ["REF/ref_0", "REF/ref_1", "REF/ref_2", "REF/ref_0", "REF/ref_1"]


@pytest.mark.parametrize("part, token, key, value, words", [
    ("DEG", "deg_3", "pose", [[0.0] * 5], ["deg_3", "pose"]),
    ("REF", "ref_1", "light", [[[1.0, 1.0, 1.0]] * 8], ["ref_1", "light"]),
    ("DEG", "deg_5", "exp", [0.0] * 50, ["deg_5", "exp"]),  # batch axis missing
    ("DEG", "deg_0", "tform", [[[1, 0, 0], [0, 1, 0], [0, 0, "x"]]], ["deg_0", "tform"]),
    ("REF", "ref_2", "cam", [[10.0, float("nan"), 0.0]], ["ref_2", "cam"]),
    ("DEG", "deg_6", "cam", None, ["deg_6", "cam"]),  # key missing
])
def test_malformed_entries_are_refused_naming_entry_and_key(tmp_path, part, token, key, value, words):
    data = _bank_dict()
    if value is None:
        del data[part][token]["deca"][key]
    else:
        data[part][token]["deca"][key] = value
    path = tmp_path / "bank.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DataFileError) as info:
        DecaBank.from_json(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    for word in words:
        assert word in message


def test_bank_structure_errors(tmp_path):
    path = tmp_path / "bank.json"
    for data in ([], {"REF": {}}, {"REF": {"a": _entry()}, "DEG": {}}, {"REF": {"a": {"pose": []}}, "DEG": {}}):
        path.write_text(json.dumps(data))
        with pytest.raises(DataFileError):
            DecaBank.from_json(path)
    path.write_text("{not json")
    with pytest.raises(DataFileError):
        DecaBank.from_json(path)


# ------------------------------------------------------------------ seeding
def test_plan_is_seeded_by_run_seed_and_identity():
    bank = SyntheticBank()
    a = plan_identity("id_001", 7, 4, 12, bank)
    assert a == plan_identity("id_001", 7, 4, 12, bank)
    b = plan_identity("id_002", 7, 4, 12, bank)
    assert [s.pose for s in a[4:]] != [s.pose for s in b[4:]]
    assert [s.pose for s in a[4:]] != [s.pose for s in plan_identity("id_001", 8, 4, 12, bank)[4:]]
    # references are the bank's own, the same for every identity
    assert [s.pose for s in a[:4]] == [s.pose for s in b[:4]]
    assert [s.role for s in a] == ["reference"] * 4 + ["degraded"] * 12
    assert [s.index for s in a] == list(range(4)) + list(range(12))


def test_degraded_spec_does_not_depend_on_count(bank_file):
    for bank in (SyntheticBank(), DecaBank.from_json(bank_file)):
        five = plan_identity("x", 1, 3, 5, bank)[3:]
        fifty = plan_identity("x", 1, 3, 50, bank)[3:]
        assert five == fifty[:5]
        assert fifty[3].yaw == five[3].yaw and fifty[3].prompt == five[3].prompt


# ------------------------------------------------------------------ the synthetic bank
def test_synthetic_references_are_frontal_neutral_ambient_canonical():
    refs = SyntheticBank().reference_specs(40)
    dc = math.sqrt(4 * math.pi)  # 1 / c_0: shading 1 everywhere
    for s in refs:
        assert abs(s.yaw) < 5 and abs(s.pitch) < 5
        assert s.expression == (0.0,) * 50 and s.jaw == 0.0
        assert s.light[0] == pytest.approx((dc, dc, dc))
        assert all(c == (0.0, 0.0, 0.0) for c in s.light[1:])
        assert s.framing == (1.0, 0.0, 0.0)
        record = s.to_record()
        assert record["control.light_frontal"] == pytest.approx(1.0)
        assert record["control.light_directional"] == 0.0
    assert refs[0].pose == (0.0, 0.0, 0.0, 0.0)


def _synthetic_draws(n=2000):
    return SyntheticBank().degraded_specs(n, 11, "yaw-check")


def test_synthetic_degraded_distributions():
    specs = _synthetic_draws()
    yaw = np.array([s.yaw for s in specs])
    assert yaw.min() < -60 and yaw.max() > 60 and np.abs(yaw).max() <= 90
    # Laplace(b = 25): median |yaw| = 25 ln 2 = 17.33; its standard error over 2000 draws is
    # b / sqrt(n) = 0.56, so 2.5 degrees is about 4.5 standard errors
    assert np.median(np.abs(yaw)) == pytest.approx(17.33, abs=2.5)
    # P(|yaw| > 60) = exp(-2.4) = 0.0907
    assert np.mean(np.abs(yaw) > 60) == pytest.approx(0.0907, abs=0.03)
    pitch = np.array([s.pitch for s in specs])
    assert 7 < pitch.std() < 13 and np.abs(pitch).max() <= 40
    assert all(abs(s.roll) <= 30 and 0 <= s.jaw <= 30 for s in specs)
    scale = np.array([s.framing[0] for s in specs])
    assert scale.min() >= 0.6 and scale.max() <= 1.2
    records = [s.to_record() for s in specs]
    frontal = np.array([r["control.light_frontal"] for r in records])
    assert frontal.min() < 0.1 and frontal.max() > 1.5  # dim and bright faces both occur
    assert max(r["control.expression_norm"] for r in records) > 1.0


# ------------------------------------------------------------------ prompts
def test_faithful_prompt_bug_for_10_and_100():
    plan = plan_identity("p", 0, 10, 100, SyntheticBank(), faithful=True)
    refs, degs = plan[:10], plan[10:]
    assert all(s.prompt == REFERENCE_PROMPT for s in refs)
    scene_indices = [s.index for s in degs if s.prompt != REFERENCE_PROMPT]
    assert scene_indices == list(range(90, 100))
    for s in degs[90:]:
        assert s.prompt == f"a photo of a human face {s.scene}" and s.scene in SCENES


def test_faithful_prompt_bug_generalises_and_refuses_more_references_than_degraded():
    # R = 3, D = 5: the list is 5 reference + 5 scene prompts, samples 0..7; degraded k is at
    # 3 + k, a scene prompt when 3 + k >= 5, i.e. k = 2, 3, 4
    degs = plan_identity("p", 0, 3, 5, SyntheticBank(), faithful=True)[3:]
    assert [s.prompt != REFERENCE_PROMPT for s in degs] == [False, False, True, True, True]
    with pytest.raises(ValueError):
        plan_identity("p", 0, 6, 5, SyntheticBank(), faithful=True)


def test_default_gives_every_degraded_sample_a_scene_prompt():
    plan = plan_identity("p", 0, 10, 100, SyntheticBank())
    assert all(s.prompt == REFERENCE_PROMPT and s.scene is None for s in plan[:10])
    scene_prompts = {f"a photo of a human face {scene}" for scene in SCENES}
    assert all(s.prompt in scene_prompts for s in plan[10:])
    assert len({s.scene for s in plan[10:]}) > 15
    assert all(s.negative_prompt == NEGATIVE_PROMPT for s in plan)


def test_scene_list():
    assert 35 <= len(SCENES) <= 45 and len(set(SCENES)) == len(SCENES)
    for needed in ("", "wearing glasses", "wearing sunglasses", "with occluded mask"):
        assert needed in SCENES


# ------------------------------------------------------------------ records
def test_records_are_flat_control_floats_and_strings(bank_file):
    specs = plan_identity("r", 0, 2, 5, SyntheticBank()) + plan_identity("r", 0, 2, 5, DecaBank.from_json(bank_file))
    for s in specs:
        record = s.to_record()
        assert all(key.startswith("control.") for key in record)
        assert all(type(v) in (float, str) for v in record.values())
        for key in ("control.yaw", "control.pitch", "control.roll", "control.jaw", "control.scale",
                    "control.offset_x", "control.offset_y", "control.light_energy",
                    "control.expression_norm", "control.prompt"):
            assert key in record
    deca_ref = DecaBank.from_json(bank_file).reference_specs(1)[0].to_record()
    # light DC 3 in every colour: ambient 3, energy 3, frontal 3 / sqrt(4 pi) = 0.84628
    assert deca_ref["control.light_ambient"] == 3.0 and deca_ref["control.light_energy"] == 3.0
    assert deca_ref["control.light_frontal"] == pytest.approx(0.8462844)
    assert deca_ref["control.yaw"] == pytest.approx(30.0) and deca_ref["control.source"] == "REF/ref_0"


# ------------------------------------------------------------------ the docs plot
def draw_histograms(path: str) -> None:
    """docs/plan_synthetic_bank.png: histograms of the synthetic DEG yaw and pitch (PIL only)."""
    from PIL import Image, ImageDraw

    specs = SyntheticBank().degraded_specs(5000, 0, "plot")
    panels = [("yaw (deg), Laplace b=25 clipped to +-90", [s.yaw for s in specs], 90, 5),
              ("pitch (deg), Normal sd=10 clipped to +-40", [s.pitch for s in specs], 90, 5)]
    width, height, margin = 900, 660, 50
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((margin, 8), "synthetic bank, 5000 degraded specs (run seed 0, identity 'plot')", fill="black")
    panel_h = (height - 40) // 2
    for p, (title, values, limit, step) in enumerate(panels):
        top = 30 + p * panel_h
        x0, x1, y0, y1 = margin, width - margin, top + 20, top + panel_h - 40
        edges = np.arange(-limit, limit + step, step)
        counts, _ = np.histogram(np.clip(values, -limit, limit), bins=edges)
        peak = counts.max()
        draw.text((x0, top), title + f"   median |x| = {np.median(np.abs(values)):.1f}", fill="black")
        draw.line([(x0, y1), (x1, y1)], fill="black")
        bar = (x1 - x0) / len(counts)
        for i, c in enumerate(counts):
            h = (y1 - y0) * c / peak
            draw.rectangle([x0 + i * bar + 1, y1 - h, x0 + (i + 1) * bar - 1, y1], fill=(70, 110, 180))
        for tick in range(-limit, limit + 1, 30):
            x = x0 + (tick + limit) / (2 * limit) * (x1 - x0)
            draw.line([(x, y1), (x, y1 + 5)], fill="black")
            draw.text((x - 8, y1 + 8), str(tick), fill="black")
        draw.text((x0 - 40, y0), str(int(peak)), fill="black")
    image.save(path)


if __name__ == "__main__":
    draw_histograms(sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).parents[1] / "docs" / "plan_synthetic_bank.png"))
