"""The Python API (synfiqa.list_models, create_scorer, build, evaluate, report): the same
numbers as the commands it stands for, a light `import synfiqa`, and the examples of
docs/api.md run as doctests."""
from __future__ import annotations

import csv
import doctest
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import synfiqa
from synfiqa.errors import BadInputError, ConfigError
from synfiqa_plugins.models.iresnet import CRFIQANet

pytestmark = pytest.mark.usefixtures("one_torch_thread")
DOCS = Path(__file__).resolve().parent.parent / "docs" / "api.md"


def cli(*args):
    from synfiqa_cli.main import cli as command

    result = CliRunner().invoke(command, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A randomly initialised CR-FIQA network saved in the published key layout (no published
    weights needed), as tests/test_score_cli.py does."""
    torch.manual_seed(0)
    network = CRFIQANet((1, 1, 1, 1), "linear").eval()
    path = tmp_path_factory.mktemp("ckpt") / "crfiqa_random.pth"
    torch.save({"module." + k: v for k, v in network.state_dict().items()}, path)
    return path


def test_import_is_light_and_the_api_is_exported_lazily():
    code = ("import sys, synfiqa; heavy = [m for m in ('torch', 'numpy', 'scipy', 'synfiqa.api') if m in sys.modules]; "
            "print(heavy); print(synfiqa.create_scorer.__module__, 'synfiqa.api' in sys.modules)")
    lines = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert lines == ["[]", "synfiqa.api True"]
    assert set(synfiqa.__all__) >= {"list_models", "create_scorer", "build", "evaluate", "report"}
    with pytest.raises(AttributeError):
        synfiqa.no_such_function


def test_list_models_is_plugins_list_for_the_model_kinds():
    listed = json.loads(cli("plugins", "list", "--json", "--kind", "fiqa").output)["components"]
    assert [m["name"] for m in synfiqa.list_models("fiqa")] == [c["name"] for c in listed]
    kinds = {m["kind"] for m in synfiqa.list_models()}
    assert kinds == {"fiqa", "embedder", "detector", "pose", "vision-language"}
    with pytest.raises(ConfigError, match="kind must be one of"):
        synfiqa.list_models("degradation")


def test_scorer_gives_the_numbers_of_synfiqa_score_on_the_test_photos(checkpoint, faces_dir, tmp_path):
    out = tmp_path / "scores.csv"
    cli("score", faces_dir, "--model", checkpoint, "--device", "cpu", "--out", out, "--no-progress")
    expected = {row["image"]: float(row["quality"]) for row in csv.DictReader(out.open())}
    scorer = synfiqa.create_scorer(checkpoint, device="cpu")
    outcomes = scorer.score_outcomes(faces_dir)
    assert {o.name: o.value for o in outcomes} == expected           # the same floats, not just close
    values = scorer.score(faces_dir)
    assert values.tolist() == [expected[o.name] for o in outcomes]
    assert scorer.higher_is_better is True and scorer.score_range == (-math.inf, math.inf)
    assert scorer.name == checkpoint.name and "CR-FIQA" in scorer.variant


def test_arrays_and_tensors_score_as_their_files(checkpoint, faces_dir):
    from synfiqa.images import read_rgb

    scorer = synfiqa.create_scorer(checkpoint, device="cpu")
    paths = sorted(faces_dir.glob("*.jpg"))
    photos = [read_rgb(p) for p in paths]
    from_files = scorer.score([str(p) for p in paths])
    assert scorer.score(photos).tolist() == from_files.tolist()           # detected and aligned, as files
    tensors = [torch.from_numpy(np.array(p)).permute(2, 0, 1) for p in photos]
    assert scorer.score(tensors).tolist() == from_files.tolist()
    # aligned crops: no detection; a float tensor in [0, 1] is the same image
    crops = np.stack([np.asarray(Image.fromarray(p).resize((112, 112))) for p in photos[:3]])
    aligned = scorer.score(crops, aligned=True)
    as_float = torch.from_numpy(crops).permute(0, 3, 1, 2).double() / 255.0
    assert scorer.score(as_float, aligned=True).tolist() == aligned.tolist()
    blank = np.full((300, 300, 3), 128, np.uint8)
    assert math.isnan(scorer.score([blank])[0])                            # no face: NaN, never a made-up number
    with pytest.raises(BadInputError, match="expected an RGB image"):
        scorer.score(np.zeros((4, 5)).reshape(2, 2, 5))


def test_mr_scorer_gives_the_numbers_of_score_model_mr(faces_dir, tmp_path):
    """Two identities in the SynFIQA layout: a reference and a sample each, from their two photos."""
    layout = {"ardern": ("ardern_1.jpg", "ardern_2.jpg"), "macron": ("macron_2.jpg", "macron_1.jpg")}
    for identity, (reference, sample) in layout.items():
        (tmp_path / "data" / identity).mkdir(parents=True)
        (tmp_path / "data" / identity / "Ref-0.jpg").write_bytes((faces_dir / reference).read_bytes())
        (tmp_path / "data" / identity / "0.jpg").write_bytes((faces_dir / sample).read_bytes())
    out = tmp_path / "scores.csv"
    cli("score", tmp_path / "data", "--model", "mr", "--device", "cpu", "--out", out, "--no-progress")
    expected = {row["image"]: float(row["quality"]) for row in csv.DictReader(out.open())}
    scorer = synfiqa.create_scorer("mr", device="cpu")
    assert {o.name: o.value for o in scorer.score_outcomes(tmp_path / "data")} == expected
    assert sorted(expected) == ["ardern/0.jpg", "macron/0.jpg"]
    assert scorer.higher_is_better and scorer.score_range == (0.0, 1.0)
    with pytest.raises(ConfigError, match="takes image files"):
        scorer.score(np.zeros((112, 112, 3), np.uint8))
    with pytest.raises(ConfigError, match="are for create_scorer"):
        synfiqa.create_scorer("cr-fiqa-l", references=tmp_path)


def test_evaluate_returns_what_evaluate_json_prints(tmp_path):
    from test_evaluation_cli import make_dataset

    make_dataset(tmp_path)
    printed = json.loads(cli("evaluate", "--pairs", tmp_path / "pairs.csv", "--embeddings", tmp_path / "emb.npz",
                             "--quality", tmp_path / "quality.csv", "--json", "--curves").stdout)
    returned = synfiqa.evaluate(tmp_path / "pairs.csv", embeddings=tmp_path / "emb.npz",
                                quality=[tmp_path / "quality.csv"], curves=True, plot=tmp_path / "edc.svg")
    assert returned == printed
    assert (tmp_path / "edc.svg").read_text().lstrip().startswith("<?xml")
    with pytest.raises(ConfigError, match="quality file"):
        synfiqa.evaluate(tmp_path / "pairs.csv", embeddings=tmp_path / "emb.npz")


def test_build_refuses_a_missing_input_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="does not exist or is not a folder"):
        synfiqa.build(tmp_path / "out", input=tmp_path / "nowhere")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_build_writes_what_synfiqa_build_writes(tmp_path, faces_dir):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("obama_1.jpg", "sunak_1.jpg"):
        (photos / name).write_bytes((faces_dir / name).read_bytes())
    settings = ["run.degraded=3"]
    cli("build", "--out", tmp_path / "cli", "--input", photos, *[x for s in settings for x in ("--set", s)])
    lines = []
    summary = synfiqa.build(tmp_path / "api", input=photos, overrides=settings, echo=lines.append)
    assert summary["degraded"] == 6 and any("wrote" in line for line in lines)
    for name in ("Quality-Scores.txt", "manifest.jsonl", "summary.json"):
        assert (tmp_path / "api" / name).read_bytes() == (tmp_path / "cli" / name).read_bytes(), name


def test_docs_examples_run():
    failures, tried = doctest.testfile(str(DOCS), module_relative=False, optionflags=doctest.ELLIPSIS)
    assert tried > 0 and failures == 0
