"""What training learns (slow: a build and two full 34-epoch schedules of the tiny IResNet,
about a minute and a half on 2 cores): on a build of four photos, the losses fall, and on
photos of the same people held out of training the trained scorer's score falls as the blur
rises (Spearman per photo, median <= -0.5).

Measured (docs/train.md, "Measured"): MR target, median Spearman -0.98. CR target: +0.38, a
strict xfail. Not a bug (loss, target, sign and head checked against fdbtrs/CR-FIQA): four
identities separate completely, so the certainty ratio saturates and carries no blur signal
on the training data itself (Spearman of CR against blur_level per identity -0.51, -0.27,
+0.83, -0.08; mean CR of references and samples both 0.79). Other builds of the four photos
(more references, fewer samples, the echo backend) move the held-out median anywhere from
-0.5 to +1.0; the check needs CR-FIQA's thousands of identities."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow

TESTS = Path(__file__).parent
SYNFIQA = Path(sys.executable).with_name("synfiqa")
TRAINING_PHOTOS = ("ardern_1", "macron_1", "obama_1", "sunak_1")
HELD_OUT = ("ardern_2.jpg", "macron_2.jpg")
SIGMAS = (0.0, 0.75, 1.5, 2.25, 3.0, 4.0, 5.0)
SCHEDULE = ["batch_size=16", "lr=2.0", "log_every=10", "checkpoint_every=1000"]


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("learning")
    photos = root / "photos"
    photos.mkdir()
    for name in TRAINING_PHOTOS:
        shutil.copy(TESTS / "data" / "faces" / f"{name}.jpg", photos / f"{name}.jpg")
    out = root / "build"
    subprocess.run([str(SYNFIQA), "build", "--out", str(out), "--input", str(photos), "--set", "run.degraded=40"],
                   check=True, capture_output=True, env={**os.environ, "SYNFIQA_DISABLE_PLUGINS": "1"})
    return out


def trained(build: Path, out: Path, overrides: list[str]):
    from test_train_tiny import TinyIResNet, run_tiny

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = run_tiny([build], out, [*SCHEDULE, *overrides])
    finally:
        torch.set_num_threads(threads)
    network = TinyIResNet("linear", 16)
    network.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    return result, network.eval()


def blur_spearman(network) -> list[float]:
    """Spearman's rho between the Gaussian blur sigma and the score, per held-out photo
    (rank correlation computed here: ranks with ties averaged, Pearson of the ranks)."""
    from PIL import Image, ImageFilter

    from evaluation_faces import aligned_test_faces

    def ranks(values):
        order = np.argsort(values, kind="stable")
        rank = np.empty(len(values))
        rank[order] = np.arange(1, len(values) + 1)
        for value in np.unique(values):
            same = values == value
            rank[same] = rank[same].mean()
        return rank

    faces = aligned_test_faces()
    rhos = []
    for name in HELD_OUT:
        crops = np.stack([np.asarray(Image.fromarray(faces[name]).filter(ImageFilter.GaussianBlur(s)))
                          for s in SIGMAS])
        with torch.inference_mode():
            scores = network(torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 127.5 - 1)[1].reshape(-1).numpy()
        rhos.append(float(np.corrcoef(ranks(np.array(SIGMAS)), ranks(scores))[0, 1]))
    return rhos


def falls(rows: list[dict], key: str) -> tuple[float, float]:
    head = np.mean([r[key] for r in rows[:3]])
    tail = np.mean([r[key] for r in rows[-3:]])
    return float(head), float(tail)


@pytest.fixture(scope="module")
def mr_run(build, tmp_path_factory):
    return trained(build, tmp_path_factory.mktemp("mr") / "run", ["target='mr'"])


@pytest.fixture(scope="module")
def cr_run(build, tmp_path_factory):
    # cr_offset 1: with 4 identities nnccs is near 0 or below and the published ccs / nnccs explodes
    return trained(build, tmp_path_factory.mktemp("cr") / "run", ["target='cr'", "cr_offset=1.0"])


def test_mr_target_losses_fall_and_blur_lowers_the_score(mr_run):
    result, network = mr_run
    assert result.end_step == result.total_steps == 34 * result.steps_per_epoch
    for key in ("loss", "loss_quality", "loss_identity"):
        head, tail = falls(result.rows, key)
        assert tail < 0.5 * head, f"{key}: {head:.4f} -> {tail:.4f}"
    rhos = blur_spearman(network)
    assert np.median(rhos) <= -0.5, rhos
    summary = json.loads((result.out / "summary.json").read_text())
    assert summary["datasets"][0]["labelled"] == 160


def test_cr_target_losses_fall(cr_run):
    result, _ = cr_run
    for key in ("loss", "loss_quality", "loss_identity"):
        head, tail = falls(result.rows, key)
        assert tail < 0.5 * head, f"{key}: {head:.4f} -> {tail:.4f}"
    assert (result.out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.xfail(strict=True, reason="CR target on a 4-identity build: the identities separate completely, the "
                                       "certainty ratio saturates and holds no blur signal (median +0.38; docs/train.md)")
def test_cr_target_blur_lowers_the_score(cr_run):
    _, network = cr_run
    assert np.median(blur_spearman(network)) <= -0.5
