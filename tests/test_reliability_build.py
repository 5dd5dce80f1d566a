"""A careless user cannot lose or mix data: each case here reproduces a hole found by trying
to break a build (issue 10), and failed before the fix. docs/reliability.md lists them."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from synfiqa.layout import format_quality_scores, identity_folder_name, read_quality_scores
from synfiqa.stages.build import build_folder
from synfiqa.store import write_group
from synfiqa.errors import BadInputError, OutputConflictError, OutputWriteError
from synfiqa_cli.main import cli

FACES = Path(__file__).parent / "data" / "faces"
SMALL = ["--set", "run.degraded=2", "--set", "run.references=2", "--no-progress"]


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


def two_identities(root: Path) -> Path:
    """in/<name>/<photo>.jpg for two people (obama: one photo, macron: two)."""
    for name, photos in {"obama": ["obama_1.jpg"], "macron": ["macron_1.jpg", "macron_2.jpg"]}.items():
        (root / name).mkdir(parents=True)
        for photo in photos:
            (root / name / photo).write_bytes((FACES / photo).read_bytes())
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One small finished build, copied by the tests that change it."""
    base = tmp_path_factory.mktemp("built")
    source = two_identities(base / "in")
    code, output = run("build", "--out", base / "out", "--input", source, *SMALL)
    assert code == 0, output
    return base / "in", base / "out"


def copy_build(built, tmp_path) -> Path:
    import shutil

    out = tmp_path / "out"
    shutil.copytree(built[1], out, symlinks=True)
    return out


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "lock"}


# ------------------------------------------------------------ --overwrite loses nothing

def test_overwrite_after_annotate_replaces_the_build_instead_of_deleting_it(built, tmp_path):
    # before: --overwrite deleted data/, manifest and scores, then refused because of
    # annotate's outputs, leaving nothing
    source, _ = built
    out = copy_build(built, tmp_path)
    code, output = run("annotate", out, "--no-progress")
    assert code == 0, output
    assert (out / "annotations.jsonl").is_file()
    code, output = run("build", "--out", out, "--input", source, *SMALL, "--set", "run.degraded=3", "--overwrite")
    assert code == 0, output
    assert len(read_quality_scores(out / "Quality-Scores.txt")) == 6  # 2 identities x 3
    assert not (out / "annotations.jsonl").exists()  # synfiqa's own, from the replaced build


def test_overwrite_keeps_files_synfiqa_did_not_write(built, tmp_path):
    source, _ = built
    out = copy_build(built, tmp_path)
    (out / "notes.txt").write_text("mine")
    code, output = run("build", "--out", out, "--input", source, *SMALL, "--set", "run.degraded=3", "--overwrite")
    assert code == 0, output
    assert (out / "notes.txt").read_text() == "mine"


def test_overwrite_deletes_nothing_when_a_check_fails(built, tmp_path):
    source, _ = built
    out = copy_build(built, tmp_path)
    before = files_of(out)
    bad = tmp_path / "bad"
    two_identities(bad)
    (bad / "obama").rename(bad / "oba\tma")
    code, output = run("build", "--out", out, "--input", bad, *SMALL, "--overwrite")
    assert code == 2 and "control characters" in output
    assert files_of(out) == before


def test_overwrite_refuses_a_folder_that_holds_no_build_and_deletes_nothing(tmp_path):
    out = tmp_path / "out"
    (out / "data").mkdir(parents=True)
    (out / "data" / "mine.jpg").write_bytes(b"x")
    code, output = run("build", "--out", out, "--input", two_identities(tmp_path / "in"), *SMALL, "--overwrite")
    assert code == 2 and "holds no synfiqa build" in output
    assert (out / "data" / "mine.jpg").read_bytes() == b"x"


# ------------------------------------------------------------ identities are never mixed

def test_nested_identity_folders_are_an_error_that_lists_them(tmp_path):
    # before: in/group1/obama and in/group1/macron became one identity "group1"
    two_identities(tmp_path / "in" / "group1")
    out = tmp_path / "out"
    code, output = run("build", "--out", out, "--input", tmp_path / "in", *SMALL)
    assert code == 2
    assert "group1/macron" in output and "group1/obama" in output
    assert not out.exists()


def test_nested_folders_are_one_identity_only_when_the_layout_says_so(tmp_path):
    from synfiqa_plugins.generators.folder import FolderGenerator

    two_identities(tmp_path / "in" / "group1")
    identities = FolderGenerator(str(tmp_path / "in"), grouping="subfolder-recursive").identities()
    assert [i.name for i in identities] == ["group1"]
    assert sorted(s.key for s in identities[0].images) == ["macron/macron_1.jpg", "macron/macron_2.jpg",
                                                          "obama/obama_1.jpg"]


def test_a_link_up_the_tree_is_refused(tmp_path):
    # before: in/link -> .. swallowed the whole tree as an identity
    source = two_identities(tmp_path / "tree" / "in")
    (tmp_path / "tree" / "other.jpg").write_bytes((FACES / "sunak_1.jpg").read_bytes())
    os.symlink("..", source / "link")
    code, output = run("build", "--out", tmp_path / "out", "--input", source, *SMALL)
    assert code == 2 and "outside" in output and "link" in output
    assert not (tmp_path / "out").exists()


def test_a_linked_photo_outside_the_input_is_refused(tmp_path):
    source = two_identities(tmp_path / "in")
    (tmp_path / "elsewhere.jpg").write_bytes((FACES / "sunak_1.jpg").read_bytes())
    os.symlink(tmp_path / "elsewhere.jpg", source / "obama" / "extra.jpg")
    code, output = run("build", "--out", tmp_path / "out", "--input", source, *SMALL)
    assert code == 2 and "extra.jpg" in output


def test_out_inside_input_is_refused(tmp_path):
    # before: the second run added an identity made of the first run's crops
    source = two_identities(tmp_path / "in")
    code, output = run("build", "--out", source / "out", "--input", source, *SMALL)
    assert code == 2 and "inside the input folder" in output
    assert not (source / "out").exists()


def test_input_inside_out_is_refused(tmp_path):
    source = two_identities(tmp_path / "out" / "photos")
    code, output = run("build", "--out", tmp_path / "out", "--input", source, *SMALL)
    assert code == 2 and "inside --out" in output


# ------------------------------------------------------------ names that read back as written

@pytest.mark.parametrize("name", ["a\nb", "a\tb", "a\rb", "a\x00b", " lead", "trail ", "x" * 201, ".hidden", "a/b"])
def test_unsafe_identity_names_are_refused(name):
    with pytest.raises(BadInputError):
        identity_folder_name(name)


def test_a_newline_in_a_folder_name_stops_the_build_before_writing(tmp_path):
    # before: the name went into Quality-Scores.txt and synfiqa's own reader rejected the file
    source = two_identities(tmp_path / "in")
    (source / "obama").rename(source / "oba\nma")
    code, output = run("build", "--out", tmp_path / "out", "--input", source, *SMALL)
    assert code == 2 and "control characters" in output
    assert not (tmp_path / "out").exists()


def test_quality_scores_read_back_what_was_written(tmp_path):
    names = ["José María", "李 明", "o'brien", "a b  c", "x\u2028y", "dash-ed_1", "ünï"]
    quality = {f"/{identity_folder_name(n)}/{k}.jpg": (k + 1) / 7 for k, n in enumerate(names)}
    path = tmp_path / "Quality-Scores.txt"
    path.write_text(format_quality_scores(quality), encoding="utf-8")
    read = read_quality_scores(path)
    assert read.keys() == quality.keys()
    assert all(abs(read[k] - v) < 1e-6 for k, v in quality.items())


# ------------------------------------------------------------ a resumed build trusts files

def test_a_deleted_sample_is_rebuilt_on_rerun(built, tmp_path):
    # before: the rerun said "already built" and wrote an index naming the missing file
    source, _ = built
    out = copy_build(built, tmp_path)
    before = files_of(out)
    (out / "data" / "obama" / "1.jpg").unlink()
    code, output = run("build", "--out", out, "--input", source, *SMALL)
    assert code == 0, output
    assert "rebuilding 1 identities" in output and "obama" in output
    after = files_of(out)
    assert after == before  # byte-identical, as a seeded rebuild must be


def test_a_truncated_sample_is_rebuilt_on_rerun(built, tmp_path):
    source, _ = built
    out = copy_build(built, tmp_path)
    target = out / "data" / "macron" / "Ref-0.jpg"
    good = target.read_bytes()
    target.write_bytes(good[: len(good) // 2])
    code, output = run("build", "--out", out, "--input", source, *SMALL)
    assert code == 0, output
    assert target.read_bytes() == good


def test_temporary_files_of_a_killed_run_are_removed_on_resume(built, tmp_path):
    source, _ = built
    out = copy_build(built, tmp_path)
    leftovers = [out / "data" / "obama" / ".1.jpg.tmp-4242", out / ".manifest.jsonl.tmp-4242"]
    for path in leftovers:
        path.write_bytes(b"half")
    (out / "data" / "obama" / "user.tmp-notes").write_bytes(b"not ours: no leading dot")
    code, output = run("build", "--out", out, "--input", source, *SMALL)
    assert code == 0, output
    assert not any(path.exists() for path in leftovers)
    assert (out / "data" / "obama" / "user.tmp-notes").exists()


def test_annotate_reports_recorded_samples_that_are_missing(built, tmp_path):
    out = copy_build(built, tmp_path)
    (out / "data" / "macron" / "0.jpg").unlink()
    code, output = run("annotate", out, "--no-progress")
    assert code == 0, output
    assert "1 recorded samples are missing" in output and "/macron/0.jpg" in output
    summary = json.loads((out / "annotation-summary.json").read_text())
    assert summary["missing_samples"] == 1
    rows = [json.loads(line) for line in (out / "annotations.jsonl").read_text().splitlines()]
    assert {"key": "/macron/0.jpg", "path": "data/macron/0.jpg", "status": "missing"}.items() <= next(
        r for r in rows if r["key"] == "/macron/0.jpg").items()


# ------------------------------------------------------------ the final step, the lock

def test_the_dataset_wide_files_are_replaced_all_or_none(tmp_path, monkeypatch):
    # before: a full disk between the final writes left a manifest without Quality-Scores.txt
    files = {tmp_path / name: f"old {name}".encode() for name in ("manifest.jsonl", "Quality-Scores.txt", "summary.json")}
    for path, data in files.items():
        path.write_bytes(data)
    real_open = open
    calls = []

    def full_disk(path, mode="r", *args, **kwargs):
        if "w" in mode and ".tmp-" in str(path):
            calls.append(path)
            if len(calls) == 2:
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", full_disk)
    with pytest.raises(OutputWriteError, match="disk is full"):
        write_group({path: b"new" for path in files}, tmp_path)
    monkeypatch.undo()
    assert {p: p.read_bytes() for p in files} == files
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_a_second_build_in_the_same_folder_is_refused(tmp_path):
    holder = build_folder(tmp_path / "out")
    holder.acquire()
    try:
        with pytest.raises(OutputConflictError, match="in use by another synfiqa run"):
            build_folder(tmp_path / "out").acquire()
        # and from another process, through the command line
        code = subprocess.run(
            [sys.executable, "-c", "import sys; from synfiqa_cli.main import cli; sys.argv=['synfiqa'] + sys.argv[1:]; cli()",
             "build", "--out", str(tmp_path / "out"), "--input", str(two_identities(tmp_path / "in")), *SMALL],
            capture_output=True, text=True, timeout=300)
        assert code.returncode == 2 and "in use by another synfiqa run" in code.stderr
        assert not (tmp_path / "out" / "data").exists()
    finally:
        holder.release()
    build_folder(tmp_path / "out").acquire()  # free again once released


def test_a_crash_before_anything_was_written_does_not_suggest_a_config_that_does_not_exist(tmp_path, monkeypatch):
    # before: the read-only case said "resume with --config OUT/config.toml", a file never written
    import synfiqa.stages.build

    def crash(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "out"))

    monkeypatch.setattr(synfiqa.stages.build, "build", crash)
    result = CliRunner().invoke(cli, ["build", "--out", str(tmp_path / "out"), "--no-progress"])
    assert result.exit_code == 1
    assert "--config" not in result.output and "Nothing was written" in result.output


def test_a_folder_that_cannot_be_written_is_one_clear_line(tmp_path, monkeypatch):
    out = tmp_path / "out"
    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if str(self).startswith(str(out)):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(OutputWriteError, match="cannot be written") as error:
        build_folder(out).claim({"fingerprint": "f"}, overwrite=False)
    assert "\n" not in str(error.value)


# ------------------------------------------------------------ what a person should know about a photo

def test_face_notes_on_landmark_geometry():
    from synfiqa.models import DetectedFace
    from synfiqa.faces import face_notes

    upright = np.array([[38, 51], [73, 51], [56, 71], [41, 92], [70, 92]], dtype=np.float32)
    flipped = upright.copy()
    flipped[:, 1] = 112 - flipped[:, 1]
    face = DetectedFace(np.array([0, 0, 100, 100]), 0.99, upright)
    assert face_notes([face], face) == ()
    upside_down = DetectedFace(np.array([0, 0, 100, 100]), 0.99, flipped)
    assert any("implausible landmarks" in note for note in face_notes([upside_down], upside_down))
    small = DetectedFace(np.array([0, 0, 40, 40]), 0.99, upright)
    assert face_notes([face, small], face) == ("2 faces found; the largest was used",)


def test_several_faces_are_noted_in_the_manifest(tmp_path):
    # before: the largest face was taken without a word
    left = Image.open(FACES / "obama_1.jpg").convert("RGB")
    right = Image.open(FACES / "sunak_1.jpg").convert("RGB")
    right = right.resize((right.width * left.height // right.height, left.height))
    both = Image.new("RGB", (left.width + right.width, left.height))
    both.paste(left, (0, 0))
    both.paste(right, (left.width, 0))
    (tmp_path / "in" / "pair").mkdir(parents=True)
    both.save(tmp_path / "in" / "pair" / "pair.jpg", quality=95)
    code, output = run("build", "--out", tmp_path / "out", "--input", tmp_path / "in", *SMALL)
    assert code == 0, output
    rows = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    noted = [row for row in rows if row.get("status") == "ok"]
    assert noted and all("2 faces found; the largest was used" in row.get("notes", []) for row in noted)
    assert "photos have notes" in output


def test_an_upside_down_photo_is_turned_before_alignment(built, tmp_path):
    # before: a photo turned 180 degrees without an EXIF tag gave an upside-down reference
    # (MTCNN fits its landmarks to the turned face: the mouth corners become the eyes)
    _, out = built
    (tmp_path / "in" / "obama").mkdir(parents=True)
    Image.open(FACES / "obama_1.jpg").rotate(180).save(tmp_path / "in" / "obama" / "turned.jpg", quality=95)
    code, output = run("build", "--out", tmp_path / "out", "--input", tmp_path / "in", *SMALL)
    assert code == 0, output
    rows = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert "upside down: turned 180 degrees before alignment" in rows[0]["notes"]
    turned = np.asarray(Image.open(tmp_path / "out" / "data" / "obama" / "Ref-0.jpg"), dtype=np.float64)
    upright = np.asarray(Image.open(out / "data" / "obama" / "Ref-0.jpg"), dtype=np.float64)
    assert np.abs(turned - upright).mean() < 12  # the same face, the same way up
    assert np.abs(turned[::-1, ::-1] - upright).mean() > 3 * np.abs(turned - upright).mean()


def test_upright_photos_get_no_notes(built):
    _, out = built
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert rows and not [row for row in rows if row.get("notes")]
