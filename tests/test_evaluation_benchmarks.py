"""The leaderboard's benchmark inputs: TinyFace and Adience pair builders on tiny fake
datasets in the published layouts (pairs listed by hand here), benchmark folders, and
`synfiqa evaluate --benchmarks DIR...` with a table per benchmark and their average; the
convention switches on the command line."""
from __future__ import annotations

import itertools
import json
import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from synfiqa.errors import DataFileError
from synfiqa.stages.s8_evaluate import EvaluationWarning, protocol_a, protocol_b
from synfiqa.stages.s8_evaluate.pairs import read_adience, read_pairs, read_tinyface, upper_triangle_pairs
from synfiqa.stages.s8_evaluate.spec import benchmark_spec, dataset_items


def run(*args, expect=0):
    from synfiqa_cli.main import cli

    result = CliRunner().invoke(cli, ["evaluate", *map(str, args)])
    assert result.exit_code == expect, result.output
    return result


def image(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(path)


# ---------------------------------------------------------------- TinyFace

PROBES = ["1_1.jpg", "1_2.jpg", "2_1.jpg", "3_1.jpg"]        # identity 3 has no gallery image
GALLERY = ["1_3.jpg", "2_2.jpg", "2_3.jpg"]
DISTRACTORS = ["d1.jpg", "d2.jpg"]


def make_tinyface(root):
    """tinyface/Testing_Set/{Probe,Gallery_Match,Gallery_Distractor}/<identity>_<n>.jpg"""
    test_set = root / "tinyface" / "Testing_Set"
    for folder, names in (("Probe", PROBES), ("Gallery_Match", GALLERY), ("Gallery_Distractor", DISTRACTORS)):
        for k, name in enumerate(names):
            image(test_set / folder / name, 10 * k)
    (test_set / "Probe" / "notes.txt").write_text("not an image")
    return test_set


def test_tinyface_pairs_every_probe_against_every_gallery_image(tmp_path):
    test_set = make_tinyface(tmp_path)
    pairs = read_tinyface(tmp_path)  # found under tinyface/Testing_Set
    expected = [  # probe-major, both lists sorted by name
        ("Probe/1_1.jpg", "Gallery_Match/1_3.jpg", True), ("Probe/1_1.jpg", "Gallery_Match/2_2.jpg", False),
        ("Probe/1_1.jpg", "Gallery_Match/2_3.jpg", False), ("Probe/1_2.jpg", "Gallery_Match/1_3.jpg", True),
        ("Probe/1_2.jpg", "Gallery_Match/2_2.jpg", False), ("Probe/1_2.jpg", "Gallery_Match/2_3.jpg", False),
        ("Probe/2_1.jpg", "Gallery_Match/1_3.jpg", False), ("Probe/2_1.jpg", "Gallery_Match/2_2.jpg", True),
        ("Probe/2_1.jpg", "Gallery_Match/2_3.jpg", True), ("Probe/3_1.jpg", "Gallery_Match/1_3.jpg", False),
        ("Probe/3_1.jpg", "Gallery_Match/2_2.jpg", False), ("Probe/3_1.jpg", "Gallery_Match/2_3.jpg", False),
    ]
    assert list(zip(pairs.image_a, pairs.image_b, pairs.genuine.tolist())) == expected
    assert pairs.format == "tinyface" and pairs.image_root == test_set
    assert pairs.notes == ["1 probe identity has no Gallery_Match image (only impostor pairs), e.g. 3"]
    assert pairs.where(4) == f"{test_set} pair 5"
    assert read_pairs(test_set).genuine.tolist() == pairs.genuine.tolist()  # auto: a folder
    # the images are found under the test set without --images
    items = dataset_items(pairs, None)
    assert [item.name for item in items] == [f"Probe/{n}" for n in PROBES] + [f"Gallery_Match/{n}" for n in GALLERY]
    assert items[0].path == test_set / "Probe" / "1_1.jpg"
    with_distractors = read_tinyface(test_set, distractors=True)
    assert len(with_distractors) == 4 * 5 and with_distractors.genuine.sum() == 4
    assert with_distractors.image_b[3:5] == ["Gallery_Distractor/d1.jpg", "Gallery_Distractor/d2.jpg"]


def test_tinyface_refuses_other_layouts(tmp_path):
    with pytest.raises(DataFileError, match="not a TinyFace test set"):
        read_tinyface(tmp_path)
    image(tmp_path / "Probe" / "face.jpg")
    image(tmp_path / "Gallery_Match" / "1_1.jpg")
    with pytest.raises(DataFileError, match=r"identity.*'face.jpg'"):
        read_tinyface(tmp_path)


# ---------------------------------------------------------------- Adience

HEADER = ("user_id\toriginal_image\tface_id\tage\tgender\tx\ty\tdx\tdy\ttilt_ang\tfiducial_yaw_angle\t"
          "fiducial_score\n")
FOLD0 = [("30601258@N03", "10399646885_67c7d20df9_o.jpg", 1), ("30601258@N03", "10424815813_e94629b1ec_o.jpg", 2),
         ("30601258@N03", "10437979845_5985be4b26_o.jpg", 1)]
FOLD1 = [("7153718@N04", "11597219384_2b6c6ea1c5_o.jpg", 5), ("7153718@N04", "11597919116_b4bdd1e9a4_o.jpg", 5)]


def fold_text(rows):
    return HEADER + "".join(f"{u}\t{o}\t{f}\t(25, 32)\tf\t0\t414\t1086\t1383\t-115\t30\t17\n" for u, o, f in rows)


def make_adience(root):
    root.mkdir(parents=True, exist_ok=True)
    (root / "fold_0_data.txt").write_text(fold_text(FOLD0))
    (root / "fold_1_data.txt").write_text(fold_text(FOLD1))
    (root / "fold_frontal_0_data.txt").write_text(fold_text(FOLD0[:1]))  # a subset file: not a fold
    for k, (user, original, face) in enumerate(FOLD0 + FOLD1):
        image(root / "faces" / user / f"coarse_tilt_aligned_face.{face}.{original}", 20 * k)
    return root


def test_adience_all_unordered_pairs_genuine_by_face_id(tmp_path):
    root = make_adience(tmp_path / "adience")
    pairs = read_adience(root)
    names = [f"faces/{u}/coarse_tilt_aligned_face.{f}.{o}" for u, o, f in FOLD0 + FOLD1]
    # faces 0..4 have face_ids 1, 2, 1, 5, 5: genuine pairs (0,2) and (3,4)
    expected = [(0, 1, False), (0, 2, True), (0, 3, False), (0, 4, False), (1, 2, False), (1, 3, False),
                (1, 4, False), (2, 3, False), (2, 4, False), (3, 4, True)]
    assert list(zip(pairs.image_a, pairs.image_b, pairs.genuine.tolist())) == [
        (names[a], names[b], g) for a, b, g in expected]
    assert pairs.image_root == root and pairs.notes == []
    one_fold = read_pairs(root / "fold_0_data.txt")  # auto: the fold file's name
    assert one_fold.format == "adience" and len(one_fold) == 3 and one_fold.genuine.tolist() == [False, True, False]
    assert [item.name for item in dataset_items(pairs, None)] == names
    aligned_only = tmp_path / "aligned_only"
    aligned_only.mkdir()
    (aligned_only / "fold_0_data.txt").write_text(fold_text(FOLD0))
    (aligned_only / "aligned").mkdir()
    assert read_adience(aligned_only).image_a[0] == f"aligned/{FOLD0[0][0]}/landmark_aligned_face.1.{FOLD0[0][1]}"


def test_adience_face_id_shared_by_two_users_is_noted(tmp_path):
    (tmp_path / "fold_0_data.txt").write_text(fold_text(FOLD0 + [("other@N01", "x.jpg", 2)]))
    pairs = read_adience(tmp_path)
    assert pairs.genuine.sum() == 2  # (face 1, face 1) and (face 2, face 2 of the other user)
    assert "1 face_id(s) appear under several user_ids (e.g. 2)" in pairs.notes[0]


@pytest.mark.parametrize("text, message", [
    ("user\toriginal_image\n", "needs tab-separated columns user_id, original_image, face_id; missing user_id, face_id"),
    (HEADER + "u1\tx.jpg\n", "line 2: expected 12 tab-separated columns, got 2"),
    (HEADER + "u1\tx.jpg\tnan\t\t\t\t\t\t\t\t\t\n", "line 2: face_id must be a number"),
])
def test_adience_bad_fold_files(tmp_path, text, message):
    (tmp_path / "fold_0_data.txt").write_text(text)
    with pytest.raises(DataFileError, match=message):
        read_adience(tmp_path)


@pytest.mark.parametrize("count", [2, 3, 7, 40])
def test_upper_triangle_pairs_are_all_combinations_in_order(count):
    a, b = upper_triangle_pairs(count)
    assert list(zip(a.tolist(), b.tolist())) == list(itertools.combinations(range(count), 2))


# ---------------------------------------------------------------- --benchmarks


def side_files(folder, names, identity, seed):
    """embeddings.npz and quality/mine.csv for the images; returns name -> (unit vector, quality)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(10, 8))
    data = {}
    for name in names:
        quality = float(np.round(rng.random(), 1))  # ties in quality
        vector = centres[identity(name) % 10] + rng.normal(size=8) * (0.4 + 1.2 * (1 - quality))
        data[name] = (vector / np.linalg.norm(vector), quality)
    np.savez(folder / "embeddings.npz", **{n: v for n, (v, _) in data.items()})
    (folder / "quality").mkdir(exist_ok=True)
    (folder / "quality" / "mine.csv").write_text("image,quality\n" + "".join(f"{n},{q}\n" for n, (_, q) in data.items()))
    return data


def expected_curves(pairs_list, data, **kwargs):
    """The curves from the arrays, computed here from the pairs listed by hand."""
    scores = np.array([data[a][0] @ data[b][0] for a, b, _ in pairs_list])
    genuine = np.array([g for _, _, g in pairs_list])
    quality = np.array([min(data[a][1], data[b][1]) for a, b, _ in pairs_list])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EvaluationWarning)  # tiny sets run out of pairs at high discard
        return protocol_a(scores, genuine, quality, **kwargs)


@pytest.fixture
def three_benchmarks(tmp_path):
    # an LFW-style folder: pairs.txt, images named person/person_000n.jpg
    lfw = tmp_path / "lfw"
    lfw.mkdir()
    people = [f"p{i}" for i in range(6)]
    rows = [(p, 1, 2) for p in people] + [(people[i], 1, people[(i + 1) % 6], 2) for i in range(6)] + \
           [(people[i], 2, people[(i + 3) % 6], 1) for i in range(6)]
    (lfw / "pairs.txt").write_text("1 6\n" + "".join(" ".join(map(str, r)) + "\n" for r in rows))
    lfw_pairs = [(f"{r[0]}/{r[0]}_{r[1]:04d}.jpg", f"{r[0]}/{r[0]}_{r[2]:04d}.jpg", True) if len(r) == 3 else
                 (f"{r[0]}/{r[0]}_{r[1]:04d}.jpg", f"{r[2]}/{r[2]}_{r[3]:04d}.jpg", False) for r in rows]
    lfw_names = sorted({n for a, b, _ in lfw_pairs for n in (a, b)})
    lfw_data = side_files(lfw, lfw_names, lambda n: int(n[1]), 4)
    # TinyFace
    tiny = tmp_path / "tinyface"
    test_set = make_tinyface(tiny)
    tiny_pairs = [(f"Probe/{p}", f"Gallery_Match/{g}", p.split("_")[0] == g.split("_")[0])
                  for p in PROBES for g in GALLERY]
    tiny_data = side_files(tiny, [f"Probe/{p}" for p in PROBES] + [f"Gallery_Match/{g}" for g in GALLERY],
                           lambda n: int(n.split("/")[1].split("_")[0]), 5)
    # Adience
    adience = make_adience(tmp_path / "adience")
    names = [f"faces/{u}/coarse_tilt_aligned_face.{f}.{o}" for u, o, f in FOLD0 + FOLD1]
    faces = [f for _, _, f in FOLD0 + FOLD1]
    adience_pairs = [(names[i], names[j], faces[i] == faces[j]) for i, j in itertools.combinations(range(5), 2)]
    adience_data = side_files(adience, names, lambda n: int(n.split(".")[1]), 6)
    assert test_set.exists()
    return [(lfw, lfw_pairs, lfw_data), (tiny, tiny_pairs, tiny_data), (adience, adience_pairs, adience_data)]


def test_benchmark_folders_are_recognised(three_benchmarks, tmp_path):
    kinds = [(benchmark_spec(folder).format, benchmark_spec(folder).name) for folder, _, _ in three_benchmarks]
    assert kinds == [("lfw", "lfw"), ("tinyface", "tinyface"), ("adience", "adience")]
    spec = benchmark_spec(three_benchmarks[0][0])
    assert spec.embeddings.name == "embeddings.npz" and list(spec.quality) == ["mine"]
    (tmp_path / "empty").mkdir()
    assert "found no benchmark in it" in run("--benchmarks", tmp_path / "empty", expect=2).output


def test_benchmarks_command_reports_each_benchmark_and_their_average(three_benchmarks):
    folders = [folder for folder, _, _ in three_benchmarks]
    fmr = ["--fmr", "0.1,0.05"]
    payload = json.loads(run("--benchmarks", *folders, *fmr, "--json").stdout)
    assert [d["name"] for d in payload["datasets"]] == ["lfw", "tinyface", "adience"]
    assert payload["conventions"] == {"tie_rule": "erc", "quality_sort": "stable"}
    values = []
    for dataset, (_, pairs, data) in zip(payload["datasets"], three_benchmarks):
        expected = expected_curves(pairs, data, fmr_targets=[0.1, 0.05])
        got = [r["value"] for r in dataset["methods"][0]["results"]]
        want = [None if np.isnan(c.pauc) else c.pauc for c in expected]
        assert got == pytest.approx(want)
        assert dataset["genuine"] == sum(g for _, _, g in pairs) and dataset["pairs"] == len(pairs)
        values.append(want)
    assert all(v is not None for row in values for v in row)  # seeds chosen so that every value is defined
    assert list(payload["mean"]["mine"].values()) == pytest.approx(np.mean(values, axis=0).tolist())
    assert any("probe identity has no Gallery_Match image" in w for w in payload["warnings"])
    # markdown: the leaderboard's layout, a table per benchmark and the average
    lines = run("--benchmarks", folders[0], "--benchmarks", folders[1], folders[2], *fmr).stdout.splitlines()
    assert lines.count("| Models | FMR=1E-1 | FMR=5E-2 |") == 4
    assert "### Mean over 3 datasets (lfw, tinyface, adience)" in lines
    assert "### tinyface (4 genuine, 8 impostor pairs)" in lines


def test_convention_switches_on_the_command_line(three_benchmarks):
    folder, pairs, data = three_benchmarks[0]
    payload = json.loads(run("--benchmarks", folder, "--fmr", "0.1", "--tie-rule", "inclusive",
                             "--quality-sort", "numpy-default", "--json").stdout)
    [expected] = expected_curves(pairs, data, fmr_targets=[0.1], tie_rule="inclusive", quality_sort="numpy-default")
    assert payload["conventions"] == {"tie_rule": "inclusive", "quality_sort": "numpy-default"}
    assert payload["datasets"][0]["methods"][0]["results"][0]["fnmr0"] == pytest.approx(expected.fnmr0)
    markdown = run("--benchmarks", folder, "--fmr", "0.1", "--tie-rule", "inclusive").stdout
    assert markdown.startswith("Values: protocol A, normalised pAUC at 0.3 discard (lower is better; 1 = no gain); "
                               "tie rule inclusive.")
    payload = json.loads(run("--benchmarks", folder, "--protocol", "B", "--fmr", "0.1", "--threshold-rule",
                             "kth-strict", "--json").stdout)
    scores = np.array([data[a][0] @ data[b][0] for a, b, _ in pairs])
    genuine = np.array([g for _, _, g in pairs])
    quality = np.array([min(data[a][1], data[b][1]) for a, b, _ in pairs])
    [b] = protocol_b(scores, genuine, quality, fmr_targets=[0.1], threshold_rule="kth-strict")
    assert payload["conventions"] == {"threshold_rule": "kth-strict"}
    assert payload["datasets"][0]["methods"][0]["results"][0]["value"] == pytest.approx(b.value)


@pytest.mark.parametrize("args, message", [
    (["--protocol", "B", "--tie-rule", "inclusive"], "--tie-rule and --quality-sort belong to protocol A"),
    (["--threshold-rule", "kth-strict"], "--threshold-rule belongs to protocol B"),
    (["extra_dir"], "unexpected argument(s) extra_dir; to evaluate benchmark folders use --benchmarks DIR..."),
])
def test_convention_and_benchmark_errors(tmp_path, args, message):
    result = run("--pairs", tmp_path / "p.csv", *args, expect=2)
    assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_benchmarks_exclude_single_dataset_options(three_benchmarks):
    folder = three_benchmarks[0][0]
    result = run("--benchmarks", folder, "--pairs", folder / "pairs.txt", expect=2)
    assert "--benchmarks reads each folder's pairs" in result.output
