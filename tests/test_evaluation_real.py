"""A real-data check: the six test photos, aligned, plus copies degraded by the project's
blur + downscale at three known severities; embedded with the offline SFace model; every
pair compared; the quality of an image is its (negated) degradation severity. Discarding
the lowest-quality pairs must lower the FNMR."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

# severity level -> (downscale factor, blur sigma); level 0 is the clean crop
SEVERITIES = {1: (4.0, 1.0), 2: (8.0, 2.0), 3: (14.0, 3.0)}


@pytest.fixture(scope="module")
def benchmark_files(tmp_path_factory):
    from evaluation_faces import PHOTOS, aligned_test_faces
    from synfiqa.registry import Registry
    from synfiqa_plugins.degradations.blur_downscale import anisotropic_kernel, blur_downscale_reference

    embedder = Registry().create("embedder", "sface")
    crops = aligned_test_faces()
    clean = torch.from_numpy(np.stack([crops[f"{photo}.jpg"] for photo in PHOTOS])).permute(0, 3, 1, 2).contiguous()
    images, quality = {}, {}
    for level in range(4):
        if level == 0:
            batch = clean
        else:
            factor, sigma = SEVERITIES[level]
            kernel = anisotropic_kernel(0.0, sigma ** 2, sigma ** 2, torch.zeros(21, 21)).float()
            batch = blur_downscale_reference(clean, kernel[None].repeat(len(PHOTOS), 1, 1),
                                             torch.full((len(PHOTOS),), factor))
        for photo, crop in zip(PHOTOS, batch):
            images[f"{photo}_s{level}.png"] = crop
            quality[f"{photo}_s{level}.png"] = -level
    names = list(images)
    vectors = embedder.embed(torch.stack([images[n] for n in names])).numpy()
    folder = tmp_path_factory.mktemp("real")
    np.savez(folder / "emb.npz", **dict(zip(names, vectors)))
    (folder / "quality.csv").write_text("image,quality\n" + "".join(f"{n},{q}\n" for n, q in quality.items()))
    person = {n: n.split("_")[0] for n in names}
    rows = [f"{a},{b},{int(person[a] == person[b])}\n" for a, b in itertools.combinations(names, 2)]
    (folder / "pairs.csv").write_text("image_a,image_b,genuine\n" + "".join(rows))
    return folder, quality


def evaluate(folder, *extra):
    from synfiqa_cli.main import cli

    result = CliRunner().invoke(cli, ["evaluate", "--pairs", str(folder / "pairs.csv"), "--embeddings",
                                      str(folder / "emb.npz"), "--quality", f"severity={folder / 'quality.csv'}",
                                      "--json", "--curves", *extra], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_the_edc_falls_when_the_lowest_quality_pairs_go(benchmark_files):
    folder, quality = benchmark_files
    payload = evaluate(folder, "--protocol", "A", "--plot", str(folder / "edc.png"))
    dataset = payload["datasets"][0]
    assert (dataset["pairs"], dataset["genuine"], dataset["impostor"]) == (276, 68, 208)
    # Pairs holding a severity-3 image are the lowest 123 of 276: all gone at u = 0.45.
    worst = sum(1 for a, b in itertools.combinations(quality, 2) if min(quality[a], quality[b]) == -3)
    assert worst == 123
    # The "inclusive" tie rule (a genuine pair on the threshold matches) shows the fall plainly.
    inclusive = evaluate(folder, "--protocol", "A", "--tie-rule", "inclusive")["datasets"][0]["methods"][0]
    for result in inclusive["results"]:
        fnmr = result["curve"]["fnmr"]
        assert fnmr[0] > 0.3, result                      # heavy degradations do break SFace
        assert fnmr[9] < fnmr[0] / 2, result              # u = 0.45: no severity-3 image left
        assert fnmr[-1] == 0.0                             # only clean, mildly degraded pairs left
        assert result["value"] < 1.0                       # normalised pAUC: better than not discarding
    # The default (erc.py's rule) also rejects the genuine pair the threshold sits on: never a
    # lower FNMR, at most a few pairs more; with 14 pairs left at u = 0.95 and no reachable FMR,
    # the threshold is the best genuine itself, which then fails.
    for result, other in zip(dataset["methods"][0]["results"], inclusive["results"]):
        fnmr, fnmr_inclusive = np.array(result["curve"]["fnmr"]), np.array(other["curve"]["fnmr"])
        assert (fnmr >= fnmr_inclusive).all() and fnmr[9] < 0.6 * fnmr[0]
        assert result["value"] < 1.0
    assert (folder / "edc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_iso_edc_falls_too(benchmark_files):
    folder, _ = benchmark_files
    # the first step lies at 47 % of the genuine pairs (those with a severity-3 image): look past it
    payload = evaluate(folder, "--protocol", "B", "--discard-limit", "0.6")
    for result in payload["datasets"][0]["methods"][0]["results"]:
        discard, fnmr = result["curve"]["discard"], result["curve"]["fnmr"]
        # four severities: steps only where the pair quality changes (min -3, -2, -1, 0) + the 100 % point
        assert len(discard) == 5
        assert fnmr[1] < fnmr[0]
        assert result["area"] < result["fnmr0"] * payload["discard_limit"]


def test_severity_quality_beats_a_shuffled_one(benchmark_files, tmp_path):
    folder, quality = benchmark_files
    shuffled_values = np.random.default_rng(0).permutation(list(quality.values()))
    (tmp_path / "shuffled.csv").write_text(
        "image,quality\n" + "".join(f"{n},{q}\n" for n, q in zip(quality, shuffled_values)))
    payload = evaluate(folder, "--quality", f"shuffled={tmp_path / 'shuffled.csv'}")
    by_method = {m["name"]: m["results"][0]["value"] for m in payload["datasets"][0]["methods"]}
    assert by_method["severity"] < by_method["shuffled"]
