"""`synfiqa evaluate`: the machine interface (files in, JSON out), tables, CSV, plot, several
datasets, computing embeddings and qualities with models, and user errors (exit code 2)."""
from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from synfiqa.stages.s8_evaluate import protocol_a, protocol_b
from synfiqa.stages.s8_evaluate.pairs import write_insightface_bin


def run(*args, expect=0):
    from synfiqa_cli.main import cli

    result = CliRunner().invoke(cli, ["evaluate", *map(str, args)])
    assert result.exit_code == expect, result.output
    return result


def make_dataset(folder, seed=0, identities=8, per_identity=3, dimension=16):
    """Files in the machine-interface formats, and the arrays they were made from."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = [f"id{i}/{j}.jpg" for i in range(identities) for j in range(per_identity)]
    quality = rng.random(len(names))
    centres = rng.normal(size=(identities, dimension))
    vectors = np.stack([centres[k // per_identity] + rng.normal(size=dimension) * (0.3 + 1.5 * (1 - quality[k]))
                        for k in range(len(names))])
    pairs = [(a, b) for a in range(len(names)) for b in range(a + 1, len(names))]
    genuine = np.array([a // per_identity == b // per_identity for a, b in pairs])
    (folder / "pairs.csv").write_text("image_a,image_b,genuine\n" + "".join(
        f"{names[a]},{names[b]},{int(g)}\n" for (a, b), g in zip(pairs, genuine)))
    np.savez(folder / "emb.npz", **{n: v for n, v in zip(names, vectors)})
    (folder / "quality.csv").write_text("image,quality\n" + "".join(f"{n},{float(q)!r}\n" for n, q in zip(names, quality)))
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = np.array([unit[a] @ unit[b] for a, b in pairs])
    pair_quality = np.array([min(quality[a], quality[b]) for a, b in pairs])
    return scores, genuine, pair_quality


def test_machine_interface_json_protocol_a(tmp_path):
    scores, genuine, pair_quality = make_dataset(tmp_path)
    result = run("--pairs", tmp_path / "pairs.csv", "--embeddings", tmp_path / "emb.npz",
                 "--quality", tmp_path / "quality.csv", "--protocol", "A", "--json")
    payload = json.loads(result.stdout)
    assert payload["protocol"] == "A" and payload["fmr_targets"] == [0.01, 0.001, 0.0001]
    assert payload["discard_limit"] == 0.3 and payload["value"] == "pAUC (normalised)"
    [dataset] = payload["datasets"]
    assert (dataset["name"], dataset["genuine"], dataset["impostor"]) == ("pairs", 24, 252)
    [method] = dataset["methods"]
    assert method["name"] == "quality" and "curve" not in method["results"][0]
    expected = protocol_a(scores, genuine, pair_quality)
    for got, want in zip(method["results"], expected):
        assert got["value"] == pytest.approx(want.pauc, rel=1e-9)
        assert got["auc"] == pytest.approx(want.auc, rel=1e-9) and got["fnmr0"] == pytest.approx(want.fnmr0)


def test_protocol_b_with_best_subtracted_and_curves(tmp_path):
    scores, genuine, pair_quality = make_dataset(tmp_path)
    result = run("--pairs", tmp_path / "pairs.csv", "--embeddings", tmp_path / "emb.npz", "--quality",
                 f"mine={tmp_path / 'quality.csv'}", "--protocol", "b", "--subtract-best", "--fmr", "0.05,0.01",
                 "--discard-limit", "0.2", "--json", "--curves")
    payload = json.loads(result.stdout)
    assert payload["protocol"] == "B" and payload["value"] == "pAUC - theoretical best"
    expected = protocol_b(scores, genuine, pair_quality, [0.05, 0.01], 0.2, subtract_best=True)
    results = payload["datasets"][0]["methods"][0]["results"]
    assert payload["datasets"][0]["methods"][0]["name"] == "mine"
    for got, want in zip(results, expected):
        assert got["value"] == pytest.approx(want.area - want.best)
        assert got["curve"]["discard"] == pytest.approx(want.discard.tolist())
        assert got["threshold"] == pytest.approx(want.threshold[0])


def test_markdown_csv_and_plot(tmp_path):
    make_dataset(tmp_path)
    rng = np.random.default_rng(5)
    names = [line.split(",")[0] for line in (tmp_path / "quality.csv").read_text().splitlines()[1:]]
    (tmp_path / "random.csv").write_text("image,quality\n" + "".join(f"{n},{rng.random()}\n" for n in names))
    result = run("--pairs", tmp_path / "pairs.csv", "--embeddings", tmp_path / "emb.npz", "--quality",
                 tmp_path / "quality.csv", "--quality", f"random={tmp_path / 'random.csv'}", "--name", "toy",
                 "--csv", tmp_path / "out.csv", "--markdown", tmp_path / "out.md", "--plot", tmp_path / "edc.png")
    lines = result.stdout.splitlines()
    assert "| Models | FMR=1E-2 | FMR=1E-3 | FMR=1E-4 |" in lines
    assert "### toy (24 genuine, 252 impostor pairs)" in lines
    assert any(line.startswith("| random | ") for line in lines)
    assert (tmp_path / "out.md").read_text() + "\n" == result.stdout  # echo adds the last newline
    rows = list(csv.DictReader(io.StringIO((tmp_path / "out.csv").read_text())))
    assert len(rows) == 6 and {r["method"] for r in rows} == {"quality", "random"}
    assert {r["fmr_target"] for r in rows} == {"0.01", "0.001", "0.0001"}
    image = Image.open(tmp_path / "edc.png")
    assert image.format == "PNG" and image.size[0] > 2 * image.size[1]  # three FMR panels side by side


def test_several_datasets_from_a_spec_and_their_mean(tmp_path):
    make_dataset(tmp_path / "one", seed=1)
    make_dataset(tmp_path / "two", seed=2)
    (tmp_path / "spec.toml").write_text(
        '[[dataset]]\nname = "one"\npairs = "one/pairs.csv"\nembeddings = "one/emb.npz"\n'
        '[dataset.quality]\nq = "one/quality.csv"\n\n'
        '[[dataset]]\nname = "two"\npairs = "two/pairs.csv"\nembeddings = "two/emb.npz"\n'
        '[dataset.quality]\nq = "two/quality.csv"\n')
    payload = json.loads(run("--spec", tmp_path / "spec.toml", "--json").stdout)
    assert [d["name"] for d in payload["datasets"]] == ["one", "two"]
    values = [[r["value"] for r in d["methods"][0]["results"]] for d in payload["datasets"]]
    assert list(payload["mean"]["q"].values()) == pytest.approx(np.mean(values, axis=0).tolist())
    markdown = run("--spec", tmp_path / "spec.toml").stdout
    assert "### Mean over 2 datasets" in markdown


def test_degenerate_dataset_warns_and_still_answers(tmp_path):
    make_dataset(tmp_path)
    (tmp_path / "genuine_only.csv").write_text("image_a,image_b,genuine\nid0/0.jpg,id0/1.jpg,1\nid1/0.jpg,id1/1.jpg,1\n")
    result = run("--pairs", tmp_path / "genuine_only.csv", "--embeddings", tmp_path / "emb.npz",
                 "--quality", tmp_path / "quality.csv", "--json")
    payload = json.loads(result.stdout)
    assert payload["datasets"][0]["methods"][0]["results"][0]["value"] is None
    assert "no impostor pairs" in payload["warnings"][0]
    assert "warning: genuine_only / quality: protocol A: no impostor pairs" in result.stderr


@pytest.mark.parametrize("setup, args, message", [
    (lambda d: (d / "pairs.csv").write_text("image_a,image_b,genuine\nid0/0.jpg,id0/1.jpg,1\nid0/0.jpg,nobody.jpg,0\n"),
     [], "pairs.csv line 3: image 'nobody.jpg' is not in"),
    (lambda d: np.savez(d / "emb.npz", **{"id0/0.jpg": np.ones(16), "id0/1.jpg": np.ones(8)}),
     [], "emb.npz: embeddings have different dimensions: 'id0/0.jpg' has 16, 'id0/1.jpg' has 8"),
    (lambda d: (d / "quality.csv").write_text("image,quality\nid0/0.jpg,0.5\nid0/1.jpg,NaN\n"),
     [], "quality.csv line 3: the quality of 'id0/1.jpg' is NaN"),
    (lambda d: (d / "pairs.csv").write_text("<pairs><pair/></pairs>\n"), [], "pairs.csv line 1: the header lacks"),
    (lambda d: (d / "pairs.txt").write_text("<pairs><pair/></pairs>\n"), ["--pairs", "{d}/pairs.txt"],
     "pairs.txt line 1: unknown pairs format"),
    (None, ["--subtract-best"], "--subtract-best belongs to protocol B"),
    (None, ["--discard-limit", "0.99"], "--discard-limit must lie in (0, 0.95] for protocol A"),
])
def test_bad_input_exits_2_naming_the_file_and_line(tmp_path, setup, args, message):
    make_dataset(tmp_path)
    if setup:
        setup(tmp_path)
    base = {"--pairs": f"{tmp_path}/pairs.csv", "--embeddings": f"{tmp_path}/emb.npz",
            "--quality": f"{tmp_path}/quality.csv"}
    args = [a.replace("{d}", str(tmp_path)) for a in args]
    for option, value in base.items():
        if option not in args:
            args += [option, value]
    result = run(*args, expect=2)
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1  # one line, no traceback


def test_nothing_to_evaluate_and_no_quality(tmp_path):
    assert "say what to evaluate" in run(expect=2).output
    make_dataset(tmp_path)
    result = run("--pairs", tmp_path / "pairs.csv", "--embeddings", tmp_path / "emb.npz", expect=2)
    assert "no quality method" in result.output
    result = run("--pairs", tmp_path / "pairs.csv", "--quality", tmp_path / "quality.csv", expect=2)
    assert "dataset pairs: no embeddings: give --embeddings FILE.npz or --embedder NAME|FILE" in result.output


def test_embeddings_and_qualities_computed_from_an_insightface_bin(tmp_path):
    """A tiny verification .bin of aligned crops; a CR-FIQA checkpoint (random weights, real
    format) serves as the FIQA model and as the embedder."""
    from synfiqa_plugins.models.iresnet import CRFIQANet

    torch.manual_seed(0)
    network = CRFIQANet((1, 1, 1, 1), "linear").eval()
    torch.save({"module." + k: v for k, v in network.state_dict().items()}, tmp_path / "tiny.pth")
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (112, 112, 3), dtype=np.uint8) for _ in range(8)]
    encoded = []
    for crop in crops:
        buffer = io.BytesIO()
        Image.fromarray(crop).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    write_insightface_bin(tmp_path / "tiny.bin", encoded, [True, False, True, False])
    result = run("--pairs", tmp_path / "tiny.bin", "--embedder", tmp_path / "tiny.pth", "--scorer",
                 tmp_path / "tiny.pth", "--fmr", "0.5", "--json", "--save-embeddings", tmp_path / "emb.npz")
    payload = json.loads(result.stdout)
    assert payload["datasets"][0]["name"] == "tiny" and payload["datasets"][0]["methods"][0]["name"] == "tiny"
    saved = np.load(tmp_path / "emb.npz")
    assert sorted(saved.files) == [f"{i:05d}.jpg" for i in range(8)]
    batch = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.no_grad():
        embedding = network(batch)[0].numpy()
    expected = embedding[3] / np.linalg.norm(embedding[3])
    np.testing.assert_allclose(saved["00003.jpg"], expected, rtol=1e-4, atol=1e-5)
