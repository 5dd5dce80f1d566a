"""Bad checkpoint files: every error is one line that names the file and says what it is; a
pickle that holds a Python object is refused without running it, and the message says why,
never how to switch the check off. Through read_payload (what AdaFace, FaceNet, BLIP and
6DRepNet360 load with) and through the commands that take a checkpoint file
(`synfiqa score --model FILE`, `synfiqa evaluate --scorer/--embedder FILE`)."""
from __future__ import annotations

import argparse
import io
import os
import pickle
import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from synfiqa.errors import CheckpointError
from synfiqa.checkpoints import find_state_dict, load_state_dict_strictly, read_payload


class RunsCode:
    """Unpickling this runs os.system: it would create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class Plain:
    """An ordinary class: unpickling it imports and builds it (code of the file's choosing)."""

    def __init__(self):
        self.value = 1


def good_state_dict():
    return {"conv.weight": torch.zeros(2, 3), "conv.bias": torch.zeros(2)}


def make_empty(path):
    path.write_bytes(b"")


def make_truncated_zip(path):
    buffer = io.BytesIO()
    torch.save(good_state_dict(), buffer)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


def make_zip_prefix_only(path):
    path.write_bytes(b"PK\x03\x04")


def make_random_bytes(path):
    path.write_bytes(np.random.default_rng(0).integers(1, 256, 4096, dtype=np.uint8).tobytes())


def make_text(path):
    path.write_text("<!DOCTYPE html>\n<html><body>Quota exceeded</body></html>\n")


def make_malicious_torch_save(path):
    torch.save({"weights": good_state_dict(), "payload": RunsCode(path.parent / "PWNED")}, path)


def make_malicious_raw_pickle(path):
    with open(path, "wb") as handle:
        pickle.dump(RunsCode(path.parent / "PWNED"), handle, protocol=4)


def make_plain_object(path):
    torch.save({"weights": good_state_dict(), "config": Plain()}, path)


def make_safetensors_like(path):
    header = b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0\0\0\0")


# case id -> (maker, what the one-line message must say)
CASES = {
    "empty": (make_empty, "the file is empty (0 bytes)"),
    "truncated-zip": (make_truncated_zip, "damaged or truncated zip archive"),
    "zip-magic-only": (make_zip_prefix_only, "damaged or truncated zip archive"),
    "random-bytes": (make_random_bytes, "unrecognised content"),
    "text": (make_text, "a text file (it begins '<!DOCTYPE html>"),
    "malicious-torch-save": (make_malicious_torch_save, "of class posix.system that could run code when unpickled"),
    "malicious-raw-pickle": (make_malicious_raw_pickle, "of class posix.system that could run code when unpickled"),
    "plain-object": (make_plain_object, f"of class {__name__}.Plain that could run code when unpickled"),
    "safetensors": (make_safetensors_like, "a safetensors file"),
}
REFUSED = {"malicious-torch-save", "malicious-raw-pickle", "plain-object"}


def check_message(message: str, path, case: str) -> None:
    _, expected = CASES[case]
    assert "\n" not in message and "\r" not in message, f"more than one line: {message!r}"
    assert str(path) in message, f"the file is not named: {message!r}"
    assert expected in message, message
    assert "weights_only=False" not in message and "weights_only` set to `False" not in message, message
    assert "Traceback" not in message
    if case in REFUSED:
        assert "refused" in message and "synfiqa loads tensors only" in message


@pytest.fixture
def bad_file(tmp_path, request):
    case = request.param
    path = tmp_path / "model.pth"
    CASES[case][0](path)
    return case, path


@pytest.mark.parametrize("bad_file", sorted(CASES), indirect=True)
def test_read_payload_says_what_the_file_is_on_one_line(bad_file):
    case, path = bad_file
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's multi-line protocol warning must not leak either
        with pytest.raises(CheckpointError) as raised:
            read_payload(path)
    check_message(str(raised.value), path, case)
    assert not (path.parent / "PWNED").exists(), "the pickle's code ran"


@pytest.mark.parametrize("bad_file", ["empty", "malicious-torch-save"], indirect=True)
def test_an_assets_hint_stays_on_the_line_and_never_says_disable_the_check(bad_file):
    case, path = bad_file
    with pytest.raises(CheckpointError) as raised:
        read_payload(path, "adaface-ir18")
    message = str(raised.value)
    check_message(message, path, case)
    assert "'adaface-ir18'" in message and "get a good copy" in message


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist") as raised:
        read_payload(tmp_path / "nothing.pth")
    assert "\n" not in str(raised.value)
    with pytest.raises(CheckpointError, match="a folder, not a checkpoint file"):
        read_payload(tmp_path)


def test_a_file_name_with_a_line_break_keeps_the_message_on_one_line(tmp_path):
    path = tmp_path / "two\nlines.pth"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError) as raised:
        read_payload(path)
    assert "\n" not in str(raised.value) and "two\\nlines.pth" in str(raised.value)


def test_good_checkpoints_still_load(tmp_path):
    torch.save(good_state_dict(), tmp_path / "plain.pth")
    assert set(read_payload(tmp_path / "plain.pth")) == {"conv.weight", "conv.bias"}
    # a Lightning checkpoint's hyper-parameters as an argparse.Namespace: data only, allowed
    torch.save({"state_dict": good_state_dict(), "hyper_parameters": argparse.Namespace(arch="ir_18")},
               tmp_path / "lightning.ckpt")
    payload = read_payload(tmp_path / "lightning.ckpt")
    assert set(find_state_dict(payload, "lightning.ckpt")) == {"conv.weight", "conv.bias"}


def test_key_listings_stay_on_one_line():
    model = torch.nn.Linear(3, 2)
    with pytest.raises(CheckpointError) as raised:
        load_state_dict_strictly(model, {"weight\nsecond line": torch.zeros(2, 3)}, "odd.pth")
    assert "\n" not in str(raised.value) and "missing keys: weight, bias" in str(raised.value)
    with pytest.raises(CheckpointError) as raised:
        find_state_dict({"a\nb": 1}, "odd.pth")
    assert "\n" not in str(raised.value)


# ------------------------------------------------------------ through the command line

CLI_CASES = ["empty", "truncated-zip", "random-bytes", "text", "malicious-torch-save", "malicious-raw-pickle"]
# `synfiqa score/evaluate` load a checkpoint FILE with the generic CR-FIQA loader
# (iresnet.read_state_dict), which reads it through checkpoints.read_payload


def one_error_line(result, path, case) -> None:
    # synfiqa_cli.main.SynfiqaGroup prints a SynfiqaError as one "Error: ..." line, exit code 2
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: ")
    check_message(lines[0], path, case)
    assert not (path.parent / "PWNED").exists(), "the pickle's code ran"


@pytest.mark.parametrize("bad_file", CLI_CASES, indirect=True)
def test_score_with_a_bad_checkpoint_file(bad_file, faces_dir):
    from synfiqa_cli.main import cli

    case, path = bad_file
    result = CliRunner().invoke(cli, ["score", "--model", str(path), "--aligned", "--no-progress",
                                      str(faces_dir / "obama_1.jpg")])
    one_error_line(result, path, case)


def tiny_bin(folder):
    from synfiqa.stages.s8_evaluate.pairs import write_insightface_bin

    rng = np.random.default_rng(0)
    encoded = []
    for _ in range(4):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    write_insightface_bin(folder / "tiny.bin", encoded, [True, False])
    np.savez(folder / "emb.npz", **{f"{i:05d}.jpg": rng.normal(size=8) for i in range(4)})
    return folder / "tiny.bin", folder / "emb.npz"


@pytest.mark.parametrize("bad_file", ["empty", "malicious-torch-save"], indirect=True)
@pytest.mark.parametrize("option", ["--scorer", "--embedder"])
def test_evaluate_with_a_bad_checkpoint_file(bad_file, option, tmp_path):
    from synfiqa_cli.main import cli

    case, path = bad_file
    pairs, embeddings = tiny_bin(tmp_path)
    args = ["evaluate", "--pairs", str(pairs), "--no-progress", option, str(path)]
    args += ["--embeddings", str(embeddings)] if option == "--scorer" else ["--scorer", str(path)]
    result = CliRunner().invoke(cli, args)
    one_error_line(result, path, case)
