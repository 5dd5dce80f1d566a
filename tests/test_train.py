"""`synfiqa train` (core/stages/s6_train): the CR-FIQA loss and schedule against values
computed here by hand, the RecordIO reader against an independent writer, the dataset over
a demo build, bad input, kill -9 resume bit for bit, 2-process gloo DDP against one process,
and the command line end to end (checkpoint loads in `synfiqa score`, ONNX matches torch).
The learning itself (losses fall, blur lowers the score) is in test_train_learning.py."""
from __future__ import annotations

import json
import math
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from synfiqa.errors import BadInputError, CheckpointError, ConfigError, DataFileError, SynfiqaError

TESTS = Path(__file__).parent
ROOT = TESTS.parent
SYNFIQA = Path(sys.executable).with_name("synfiqa")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """The default demo build (4 identities, 6 references, 80 degraded samples)."""
    out = tmp_path_factory.mktemp("train") / "demo"
    env = {**os.environ, "SYNFIQA_DISABLE_PLUGINS": "1"}
    subprocess.run([str(SYNFIQA), "build", "--out", str(out), "--set", "run.degraded=10"], check=True, env=env,
                   capture_output=True)
    return out


# ---------------------------------------------------------------- the recipe's maths


def test_margin_head_and_loss_against_hand_computed_values():
    from synfiqa.stages.s6_train.loss import MarginHead, certainty_ratio, loss_sums

    s, m = 64.0, 0.5
    head = MarginHead(2, 3, s, m)
    with torch.no_grad():   # class centres at 0, 90 and 180 degrees (columns, unnormalised)
        head.kernel.copy_(torch.tensor([[2.0, 0.0, -3.0], [0.0, 5.0, 0.0]]))
    angle = math.radians(30)
    embeddings = torch.tensor([[math.cos(angle) * 4, math.sin(angle) * 4], [0.0, -1.0]])
    labels = torch.tensor([0, 2])
    logits, ccs, nnccs = head(embeddings, labels)
    # sample 0: cosines to the centres cos 30, cos 60, cos 150; own class 0
    c = [math.cos(math.radians(a)) for a in (30, 60, 150)]
    expected0 = [s * math.cos(math.radians(30) + m), s * c[1], s * c[2]]
    # sample 1 (pointing at 270 degrees): cosines 0, -1, 0; own class 2: acos(0) + m
    expected1 = [0.0, -s, s * math.cos(math.pi / 2 + m)]
    assert torch.allclose(logits, torch.tensor([expected0, expected1]), atol=1e-4)
    assert torch.allclose(ccs, torch.tensor([c[0], 0.0]), atol=1e-6)
    # nnccs: the largest cosine among the other classes; the own class counts as -1e-12
    assert torch.allclose(nnccs, torch.tensor([c[1], 0.0]), atol=1e-6)
    # sample 1's other classes are 0 and -1: max is 0 (not the -1e-12 fill)
    target = certainty_ratio(ccs[:1], nnccs[:1])
    assert float(target) == pytest.approx(c[0] / c[1], rel=1e-5)
    assert float(certainty_ratio(ccs[:1], nnccs[:1], 1.0)) == pytest.approx(c[0] / (c[1] + 1), rel=1e-5)

    quality = torch.tensor([[1.5], [0.2]])
    targets = torch.tensor([1.2, float("nan")])
    ce, smooth, count = loss_sums(logits, labels, quality, targets, beta=0.5)
    def log_softmax(row, k):
        top = max(row)
        return row[k] - top - math.log(sum(math.exp(v - top) for v in row))
    assert float(ce.detach()) == pytest.approx(-log_softmax(expected0, 0) - log_softmax(expected1, 2), rel=1e-4)
    # SmoothL1(beta 0.5) of |1.5 - 1.2| = 0.3 < beta: 0.5 * 0.3^2 / 0.5; the NaN target is left out
    assert count == 1 and float(smooth) == pytest.approx(0.5 * 0.09 / 0.5, rel=1e-5)
    _, smooth, _ = loss_sums(logits, labels, torch.tensor([[2.0], [0.0]]), targets, beta=0.5)
    assert float(smooth) == pytest.approx(0.8 - 0.25, rel=1e-5)   # |d| - beta / 2 for |d| >= beta


def test_schedule_is_crfiqa_lr_step_func():
    from synfiqa.stages.s6_train import TrainSettings

    settings = TrainSettings()
    def published(epoch):   # CR-FIQA config.py, webface, warmup_epoch = -1, transcribed
        return ((epoch + 1) / (4 + 1)) ** 2 if epoch < -1 else 0.1 ** len([m for m in [20, 28, 32] if m - 1 <= epoch])
    assert [settings.lr_factor(e) for e in range(34)] == pytest.approx([published(e) for e in range(34)])
    assert settings.lr_factor(18) == 1.0 and settings.lr_factor(19) == pytest.approx(0.1)
    # 0.01 / 512 * batch * world size
    assert settings.base_lr(4) == pytest.approx(0.01 / 512 * 128 * 4)
    assert (settings.momentum, settings.weight_decay, settings.margin_scale, settings.margin,
            settings.quality_weight, settings.smooth_l1_beta, settings.clip_norm, settings.dropout) == \
           (0.9, 5e-4, 64.0, 0.5, 10.0, 0.5, 5.0, 0.4)


def test_settings_refuse_bad_values_in_one_line(tmp_path):
    from synfiqa.stages.s6_train import load_settings

    with pytest.raises(ConfigError) as caught:
        load_settings(None, ["train.lr=-1", "batch_size=0", "arch=''", "lrr=0.1"])
    text = str(caught.value)
    assert "\n" not in text and "train.lr" in text and "batch_size" in text and "arch" in text and "'lr'" in text
    config = tmp_path / "train.toml"
    config.write_text("[train]\nbatch_size = 12\naccumulate = 5\n")
    with pytest.raises(ConfigError, match="multiple of train.accumulate"):
        load_settings(config)
    config.write_text("[train]\nbatch_size = 12\ndecay_epochs = [3, 5]\n")
    settings = load_settings(config, ["train.seed=7"], {"arch": "iresnet18", "head": None})
    assert (settings.batch_size, settings.decay_epochs, settings.seed, settings.arch, settings.head) == \
           (12, (3, 5), 7, "iresnet18", "linear")


def test_order_is_a_function_of_seed_and_step_and_splits_the_global_batch():
    from synfiqa.stages.s6_train.order import EpochOrder, StepBatches

    order = EpochOrder(20, seed=3)
    one = [b for b in StepBatches(order, 0, 10, 8, 2)]
    resumed = [b for b in StepBatches(EpochOrder(20, seed=3), 4, 10, 8, 2)]
    assert one[4:] == resumed
    parts = [list(StepBatches(EpochOrder(20, seed=3), 0, 10, 8, 2, rank=r, world_size=2)) for r in range(2)]
    assert [a + b for a, b in zip(*parts)] == one
    epoch0 = [i for b in one[:2] for i, _ in b]
    assert len(set(epoch0)) == 16   # no sample twice within an epoch
    assert one != list(StepBatches(EpochOrder(20, seed=4), 0, 10, 8, 2))
    assert not any(flip for b in StepBatches(EpochOrder(20, 3, flip=False), 0, 4, 8, 2) for _, flip in b)


# ---------------------------------------------------------------- RecordIO


def write_record(handle, payload: bytes, split_at: list[int] = ()) -> int:
    """An independent MXNet RecordIO writer: magic, flag << 29 | length, payload, padding;
    parts at `split_at` with flags 1, 2, ..., 3, the magic dropped between them."""
    offset = handle.tell()
    magic = struct.pack("<I", 0xCED7230A)
    pieces = [payload] if not split_at else [payload[a:b] for a, b in
                                             zip([0, *split_at], [*split_at, len(payload)])]
    for n, piece in enumerate(pieces):
        flag = 0 if len(pieces) == 1 else 1 if n == 0 else 3 if n == len(pieces) - 1 else 2
        handle.write(magic + struct.pack("<I", (flag << 29) | len(piece)) + piece + b"\0" * (-len(piece) % 4))
    return offset


def make_recordio(folder: Path, crops: list[tuple[np.ndarray, int]], header: bool = True) -> Path:
    from PIL import Image
    import io

    rec = folder / "train.rec"
    lines = []
    with open(rec, "wb") as handle:
        if header:
            payload = struct.pack("<IfQQ", 2, 0.0, 0, 0) + struct.pack("<2f", len(crops) + 1, len(crops) + 3)
            lines.append(f"0\t{write_record(handle, payload)}")
        for key, (crop, label) in enumerate(crops, start=1 if header else 0):
            buffer = io.BytesIO()
            Image.fromarray(crop).save(buffer, format="PNG")
            image = buffer.getvalue()
            if key % 2:   # a one-float label
                payload = struct.pack("<IfQQ", 0, float(label), key, 0) + image
            else:         # flag 1: the label as a float32 after the header
                payload = struct.pack("<IfQQ", 1, 0.0, key, 0) + struct.pack("<f", label) + image
            if key == 2:  # a payload holding the magic number: written in two parts, the magic dropped
                payload = payload[:40] + struct.pack("<I", 0xCED7230A) + payload[40:]
                lines.append(f"{key}\t{write_record(handle, payload[:40] + payload[44:], [40])}")
                crops[key - 1] = (crop, label, payload)
                continue
            lines.append(f"{key}\t{write_record(handle, payload)}")
    (folder / "train.idx").write_text("\n".join(lines) + "\n")
    return rec


def test_recordio_reader_reads_an_independently_written_file(tmp_path):
    from synfiqa.stages.s6_train import FaceDataset, RecordFile

    rng = np.random.default_rng(0)
    crops = [(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8), label) for label in (5, 5, 9, 2)]
    rec = make_recordio(tmp_path, crops)
    reader = RecordFile(rec)
    assert reader.image_keys() == [1, 2, 3, 4]
    split = reader.read(2)
    assert split.flag == 1 and split.first_label == 5.0
    # the three parts are joined with the magic number between them
    assert reader.read_raw(2) == crops[1][2]
    dataset = FaceDataset([tmp_path])
    assert dataset.num_classes == 3 and len(dataset) == 4
    # identities numbered in label order: 2 -> 0, 5 -> 1, 9 -> 2
    assert [dataset[i]["identity"] for i in range(4)] == [1, 1, 2, 0]
    for i in (0, 2, 3):
        assert torch.equal(dataset[i]["image"], torch.from_numpy(crops[i][0]).permute(2, 0, 1))
    assert torch.equal(dataset[(3, True)]["image"], torch.from_numpy(crops[3][0]).permute(2, 0, 1).flip(-1))
    assert math.isnan(dataset[0]["label"])


def test_recordio_damage_is_one_line(tmp_path):
    from synfiqa.stages.s6_train import RecordFile

    rng = np.random.default_rng(1)
    rec = make_recordio(tmp_path, [(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8), 1)] * 2, header=False)
    (tmp_path / "train.idx").write_text("0\t0\n1\t7\n")
    with pytest.raises(DataFileError, match="not a RecordIO record") as caught:
        RecordFile(rec).read(1)
    assert "\n" not in str(caught.value)
    rec.write_bytes(rec.read_bytes()[:100])
    (tmp_path / "train.idx").write_text("0\t0\n")
    with pytest.raises(DataFileError, match="truncated"):
        RecordFile(rec).read(0)
    (tmp_path / "train.idx").write_text("zero 0\n")
    with pytest.raises(DataFileError, match="key<TAB>offset"):
        RecordFile(rec)


# ---------------------------------------------------------------- the dataset


def test_dataset_over_a_build_keys_labels_by_path(demo):
    from synfiqa.layout import read_quality_scores
    from synfiqa.stages.s6_train import FaceDataset

    dataset = FaceDataset([demo])
    scores = {}   # Quality-Scores.txt read here without the project's reader
    for line in (demo / "Quality-Scores.txt").read_text().splitlines():
        key, value = line.rsplit("\t", 1)
        scores[key] = float(value)
    assert scores == pytest.approx(read_quality_scores(demo / "Quality-Scores.txt"))
    names = sorted(p.name for p in (demo / "data").iterdir())
    assert dataset.num_classes == len(names)
    for i, source in enumerate(dataset.sources):
        identity, name = source.name.strip("/").split("/")
        assert dataset.identity_names[source.identity].endswith("/" + identity)
        if name.startswith("Ref-"):
            assert math.isnan(source.label) and dataset.params[i] != {}
        else:
            assert source.label == pytest.approx(scores[source.name])
            assert "blur-downscale.blur_level" in dataset.params[i]
    item = dataset[3]
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 112, 112)


def test_bad_input_is_one_line(demo, tmp_path):
    from synfiqa.stages.s6_train import FaceDataset

    folder = tmp_path / "folder"
    for identity in ("a", "b"):
        (folder / identity).mkdir(parents=True)
        (folder / identity / "0.jpg").write_bytes((demo / "data").glob("*/0.jpg").__next__().read_bytes())
    with pytest.raises(ConfigError, match="--target mr needs MR labels"):
        FaceDataset([folder], require_labels=True)
    (folder / "b" / "1.jpg").write_bytes(b"not an image")
    dataset = FaceDataset([folder])
    assert "cannot" in dataset[2]["error"] or "not an image" in dataset[2]["error"]
    with pytest.raises(BadInputError) as caught:
        from test_train_tiny import run_tiny
        run_tiny([folder], tmp_path / "run", ["batch_size=3", "flip=false"])
    assert "\n" not in str(caught.value) and "1.jpg" in str(caught.value)
    with pytest.raises(ConfigError, match="does not exist"):
        FaceDataset([tmp_path / "missing"])
    scores = tmp_path / "copy"
    import shutil
    shutil.copytree(demo, scores)
    first = (scores / "Quality-Scores.txt").read_text().splitlines()
    (scores / "Quality-Scores.txt").write_text("\n".join(first[1:]) + "\n")
    with pytest.raises(DataFileError, match="no score for 1 degraded"):
        FaceDataset([scores])


def _by_image(dataset) -> dict[str, tuple[int, float]]:
    """sha256 of each decoded image -> (class, label): what a dataset holds, whatever its order."""
    import hashlib

    return {hashlib.sha256(dataset[i]["image"].numpy().tobytes()).hexdigest():
            (dataset[i]["identity"], dataset[i]["label"]) for i in range(len(dataset))}


def _same_samples(build: dict, other: dict) -> None:
    """The same images, the same labels (NaN for references) and the same partition into
    identities (class numbers may differ)."""
    assert build.keys() == other.keys()
    classes = {}
    for key, (identity, label) in build.items():
        other_identity, other_label = other[key]
        assert classes.setdefault(identity, other_identity) == other_identity
        assert (math.isnan(label) and math.isnan(other_label)) or other_label == pytest.approx(label, abs=1e-6)
    assert len(set(classes.values())) == len(classes)


@pytest.fixture(scope="module")
def build_run(demo, tmp_path_factory):
    """12 steps of the MR target on the demo build itself."""
    from test_train_tiny import run_tiny

    return run_tiny([demo], tmp_path_factory.mktemp("build-run") / "run", EXPORT_RUN, max_steps=12)


EXPORT_RUN = ["batch_size=8", "lr=1.0", "target='mr'", "seed=3"]


@pytest.mark.parametrize("fmt", ["webdataset", "recordio"])
def test_an_export_trains_as_the_build_it_came_from(demo, build_run, tmp_path, fmt):
    """`synfiqa export --format webdataset|recordio` read back by FaceDataset (shards through
    WebDatasetFaces; RecordIO's MR label from header.label[1]): the build's images, labels and
    identities, in the build's order, so the MR target trains to the very weights that
    training on the build gives."""
    from synfiqa.stages.export import export_dataset
    from synfiqa.stages.s6_train import FaceDataset
    from test_train_tiny import run_tiny

    out = tmp_path / fmt
    export_dataset(demo, fmt, out, echo=lambda _text: None)
    exported = FaceDataset([out], require_labels=True)
    assert exported.infos[0].kind == fmt
    build = FaceDataset([demo])
    assert exported.infos[0].labelled == build.infos[0].labelled > 0
    _same_samples(_by_image(build), _by_image(exported))
    if fmt == "webdataset":   # the shard's JSON carries the recorded degradation parameters
        assert sum("blur-downscale.blur_level" in p for p in exported.params.values()) == build.infos[0].labelled
    result = run_tiny([out], tmp_path / f"run-{fmt}", EXPORT_RUN, max_steps=12)
    assert [r["loss"] for r in result.rows] == [r["loss"] for r in build_run.rows]
    a, b = _state(build_run.out / "model.pt"), _state(result.out / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # and it learnt: the quality part of the loss fell over the 12 steps
    assert np.mean([r["loss_quality"] for r in result.rows[-3:]]) < np.mean([r["loss_quality"] for r in result.rows[:3]])


# ---------------------------------------------------------------- runs


def _state(path: Path) -> dict:
    return torch.load(path, weights_only=True)


RESUME_SETTINGS = ["batch_size=8", "epochs=2", "checkpoint_every=3", "seed=5", "lr=1.0", "dropout=0.3"]


def test_hostile_or_foreign_checkpoint_is_refused(demo, tmp_path):
    from test_train_tiny import run_tiny

    out = tmp_path / "run"
    run_tiny([demo], out, RESUME_SETTINGS, max_steps=3)
    checkpoint = out / "checkpoints" / "step-000000003.pt"

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"format": "synfiqa-train-checkpoint", "network": Evil()}, checkpoint)
    with pytest.raises(CheckpointError) as caught:
        run_tiny([demo], out, RESUME_SETTINGS, max_steps=4, resume=True)
    assert "\n" not in str(caught.value) and "refused" in str(caught.value)
    checkpoint.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        run_tiny([demo], out, RESUME_SETTINGS, max_steps=4, resume=True)
    # the same folder without --resume, and with other settings, are refused
    with pytest.raises(SynfiqaError, match="--resume"):
        run_tiny([demo], out, RESUME_SETTINGS, max_steps=4)
    with pytest.raises(SynfiqaError, match="other training settings"):
        run_tiny([demo], out, [*RESUME_SETTINGS, "seed=6"], max_steps=4, resume=True)


KILL_SCRIPT = """
import sys, time, torch
sys.path.insert(0, {tests!r})
torch.set_num_threads(1)
from test_train_tiny import run_tiny
from synfiqa.stages.s6_train import loop
original = loop.save_checkpoint
def slow_save(*args, **kwargs):      # a pause after each checkpoint, for the test to kill in
    original(*args, **kwargs)
    print("checkpoint", args[1], flush=True)
    time.sleep(0.5)
loop.save_checkpoint = slow_save
run_tiny([{demo!r}], {out!r}, {settings!r}, resume={resume!r})
"""


def test_kill_9_then_resume_gives_the_uninterrupted_weights(demo, tmp_path):
    from test_train_tiny import run_tiny

    whole = tmp_path / "whole"
    result = run_tiny([demo], whole, RESUME_SETTINGS)
    assert result.end_step == result.total_steps == 2 * result.steps_per_epoch

    killed = tmp_path / "killed"
    env = {**os.environ, "SYNFIQA_DISABLE_PLUGINS": "1", "OMP_NUM_THREADS": "1"}
    script = KILL_SCRIPT.format(tests=str(TESTS), demo=str(demo), out=str(killed), settings=RESUME_SETTINGS,
                                resume=False)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=env, cwd=ROOT, text=True)
    for line in process.stdout:
        if line.startswith("checkpoint 6"):
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert not (killed / "model.pt").exists()
    steps = sorted(p.name for p in (killed / "checkpoints").iterdir())
    assert steps[-1] == "step-000000006.pt"

    resumed = run_tiny([demo], killed, RESUME_SETTINGS, resume=True)
    assert resumed.start_step == 6 and resumed.end_step == result.end_step
    a, b = _state(whole / "model.pt"), _state(killed / "model.pt")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run's"
    rows = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, result.end_step + 1))   # no step logged twice
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in result.rows], rel=1e-6)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_process_gloo_ddp_equals_one_process_with_the_same_global_batch(demo, tmp_path):
    import torch.multiprocessing as mp

    from test_train_tiny import ddp_worker, run_tiny

    common = ["seed=2", "lr=1.0", "epochs=1", "flip=true", "target='mr'"]
    one = tmp_path / "one"
    run_tiny([demo], one, ["batch_size=8", "accumulate=2", *common], max_steps=6)
    two = tmp_path / "two"
    mp.spawn(ddp_worker, args=(2, _free_port(), [str(demo)], str(two), ["batch_size=4", *common]), nprocs=2,
             join=True)
    a, b = _state(one / "model.pt"), _state(two / "model.pt")
    parameters = [k for k in a if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    worst = max(float((a[k] - b[k]).abs().max()) for k in parameters)
    assert worst < 1e-4, f"DDP weights differ from one process's by {worst}"
    rows_one = [json.loads(line) for line in (one / "metrics.jsonl").read_text().splitlines()]
    rows_two = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows_two] == pytest.approx([r["loss"] for r in rows_one], rel=1e-4)
    # and the weights moved: the comparison is not between two untrained networks
    initial = run_tiny([demo], tmp_path / "zero", ["batch_size=8", "accumulate=2", *common, "lr=1e-12"], max_steps=1)
    z = _state(initial.out / "model.pt")
    assert max(float((a[k] - z[k]).abs().max()) for k in parameters) > 1e-2
    summary = json.loads((two / "summary.json").read_text())
    assert summary["world_size"] == 2


@pytest.mark.slow
def test_cli_trains_iresnet18_and_score_loads_it_and_onnx_matches(demo, tmp_path):
    out = tmp_path / "cli"
    env = {**os.environ, "SYNFIQA_DISABLE_PLUGINS": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([str(SYNFIQA), "train", str(demo), "--out", str(out), "--arch", "iresnet18",
                          "--target", "mr", "--max-steps", "2", "--export", "onnx", "--no-progress",
                          "--set", "train.batch_size=4", "--set", "workers=1", "--set", "log_every=1"],
                         env=env, capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert "step 2/" in run.stderr and "synfiqa score --model" in run.stderr
    from synfiqa_plugins.models.iresnet import load_checkpoint

    network, variant = load_checkpoint(out / "model.pt")
    assert variant.blocks == (2, 2, 2, 2) and variant.head == "linear"
    images = sorted((demo / "data").glob("*/[0-9].jpg"))[:4]
    scored = subprocess.run([str(SYNFIQA), "score", "--model", str(out / "model.pt"), "--aligned",
                             *map(str, images)], env=env, capture_output=True, text=True, cwd=ROOT)
    assert scored.returncode == 0, scored.stderr
    scores = [float(line.split(",")[1]) for line in scored.stdout.splitlines()[1:]]
    from synfiqa.images import read_rgb
    crops = torch.from_numpy(np.stack([read_rgb(p) for p in images])).permute(0, 3, 1, 2)
    with torch.inference_mode():
        direct = network(crops.float() / 127.5 - 1)[1].reshape(-1)
    assert scores == pytest.approx(direct.tolist(), rel=1e-5, abs=1e-4)
    import onnxruntime
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_scores = session.run(["quality"], {"input": (crops.float() / 127.5 - 1).numpy()})[0].reshape(-1)
    assert onnx_scores.tolist() == pytest.approx(direct.tolist(), rel=1e-5, abs=1e-4)
    # the second run without --resume is refused in one line, exit code 2
    again = subprocess.run([str(SYNFIQA), "train", str(demo), "--out", str(out), "--arch", "iresnet18",
                            "--target", "mr", "--max-steps", "2", "--set", "train.batch_size=4"],
                           env=env, capture_output=True, text=True, cwd=ROOT)
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "--resume" in again.stderr
    bad = subprocess.run([str(SYNFIQA), "train", str(demo), "--out", str(tmp_path / "x"), "--set", "train.lr=zero"],
                         env=env, capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "train.lr" in bad.stderr and bad.stderr.count("\n") == 1


def test_a_third_party_backbone_trains_through_the_cli_and_synfiqa_score_loads_it(demo, tmp_path):
    """A backbone plugin installed as a real distribution (entry point, model asset): `synfiqa
    train --network tiny-iresnet` builds its network through training_network, and `synfiqa
    score --model tiny-iresnet` finds the trained model.pt as the plugin's asset."""
    from distributions import write_distribution
    from test_train_tiny import PLUGIN_SOURCE, TinyIResNet

    site = tmp_path / "site"
    write_distribution(site, "synfiqa-tiny-backbone", "synfiqa_tiny_backbone", PLUGIN_SOURCE)
    weights = tmp_path / "weights"
    out = weights / "tiny-iresnet"     # $SYNFIQA_WEIGHTS/<asset>/model.pt
    env = {k: v for k, v in os.environ.items() if k != "SYNFIQA_DISABLE_PLUGINS"}
    env.update(PYTHONPATH=os.pathsep.join([str(site), str(TESTS)]), OMP_NUM_THREADS="1", SYNFIQA_WEIGHTS=str(weights))
    run = subprocess.run([str(SYNFIQA), "train", str(demo), "--out", str(out), "--network", "tiny-iresnet",
                          "--arch", "tiny", "--target", "mr", "--max-steps", "3", "--no-progress",
                          "--set", "train.batch_size=8", "--set", "embedding_size=16", "--set", "workers=0",
                          "--set", "log_every=1"], env=env, capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert "step 3/" in run.stderr
    network = TinyIResNet("linear", 16)
    network.load_state_dict(torch.load(out / "model.pt", weights_only=True))   # the tiny layout, strictly
    network.eval()
    images = sorted((demo / "data").glob("*/[0-9].jpg"))[:4]
    scored = subprocess.run([str(SYNFIQA), "score", "--model", "tiny-iresnet", "--aligned", *map(str, images)],
                            env=env, capture_output=True, text=True, cwd=ROOT)
    assert scored.returncode == 0, scored.stderr
    scores = [float(line.split(",")[1]) for line in scored.stdout.splitlines()[1:]]
    from synfiqa.images import read_rgb
    crops = torch.from_numpy(np.stack([read_rgb(p) for p in images])).permute(0, 3, 1, 2)
    with torch.inference_mode():
        direct = network(crops.float() / 127.5 - 1)[1].reshape(-1)
    assert scores == pytest.approx(direct.tolist(), abs=1e-4)
    # an architecture the plugin does not have is one line, exit code 2
    bad = subprocess.run([str(SYNFIQA), "train", str(demo), "--out", str(tmp_path / "bad"), "--network",
                          "tiny-iresnet", "--arch", "iresnet50", "--max-steps", "1", "--set", "train.batch_size=8"],
                         env=env, capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "tiny-iresnet has one architecture" in bad.stderr
