"""`synfiqa generate` (resumable, with manifest rows) and the folder generator's bad inputs."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from synfiqa.store import read_rows

from ddpm_reference import write_tiny_model
from synfiqa.errors import BadInputError, ConfigError
from synfiqa_cli.main import cli


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def generate(out, model, n, seed=3, *extra):
    return CliRunner().invoke(cli, ["generate", "--generator", "ddpm", "-n", str(n), "--out", str(out),
                                    "--seed", str(seed), "--no-progress",
                                    "--set", f"generate.params.ddpm.model={json.dumps(str(model))}",
                                    "--set", 'generate.params.ddpm.respacing="8"',
                                    "--set", "generate.params.ddpm.device=\"cpu\"", *extra])


def test_generate_writes_images_with_manifest_rows_and_resumes(tiny_model, tmp_path):
    whole = tmp_path / "whole"
    result = generate(whole, tiny_model, 3)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (whole / "generated.jsonl").read_text().splitlines()]
    assert [row["path"] for row in rows] == ["000000/0.png", "000001/0.png", "000002/0.png"]
    assert rows[1]["index"] == 1 and rows[1]["seed"] == 3 and rows[1]["respacing"] == "8"
    assert Image.open(whole / "000002" / "0.png").size == (32, 32)

    # interrupted after 2 images, then resumed to 3: only the third is generated, and the same
    parts = tmp_path / "parts"
    assert generate(parts, tiny_model, 2).exit_code == 0
    (parts / "generated.jsonl").write_text((parts / "generated.jsonl").read_text() + '{"torn')   # a killed write
    resumed = generate(parts, tiny_model, 3)
    assert resumed.exit_code == 0 and "resuming" in resumed.output and "wrote 1 images" in resumed.output
    assert [row["path"] for row in read_rows(parts / "generated.jsonl").values()] == \
        ["000000/0.png", "000001/0.png", "000002/0.png"]   # the row after the torn line survives
    for index in range(3):
        a = np.asarray(Image.open(whole / f"{index:06d}" / "0.png"))
        b = np.asarray(Image.open(parts / f"{index:06d}" / "0.png"))
        assert np.array_equal(a, b)

    other_seed = generate(parts, tiny_model, 3, 4)
    assert other_seed.exit_code == 2 and "other settings" in other_seed.output


def test_generated_folder_is_an_identity_folder(tiny_model, tmp_path):
    from synfiqa_plugins.generators.folder import FolderGenerator

    assert generate(tmp_path / "ids", tiny_model, 2).exit_code == 0
    identities = FolderGenerator(str(tmp_path / "ids")).identities()
    assert [i.name for i in identities] == ["000000", "000001"]
    assert identities[0].images[0].load().shape == (32, 32, 3)


def test_generate_through_the_folder_generator_copies_photos(faces_dir, tmp_path):
    result = CliRunner().invoke(cli, ["generate", "--generator", "folder", "-n", "2", "--out", str(tmp_path / "o"),
                                      "--set", f"generate.params.folder.path={json.dumps(str(faces_dir))}"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "o").iterdir() if p.is_dir() and not p.name.startswith(".")) == [
        "ardern", "macron"]
    assert (tmp_path / "o" / "ardern" / "ardern_2.jpg").read_bytes() == (faces_dir / "ardern_2.jpg").read_bytes()


def test_folder_generator_bad_inputs(tmp_path):
    from synfiqa_plugins.generators.folder import FolderGenerator

    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match="holds no images"):
        FolderGenerator(str(tmp_path / "empty")).identities()

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (40, 40)).save(photos / "anna.jpg")
    Image.new("RGB", (40, 40)).save(photos / "anna.png")
    (photos / "notes.txt").write_text("not an image")
    with pytest.raises(ConfigError, match="duplicate identity name 'anna'"):
        FolderGenerator(str(photos), "file").identities()
    grouped = FolderGenerator(str(photos), "stem-suffix")
    assert [len(i.images) for i in grouped.identities()] == [2]     # one person, two photos
    assert [p.rsplit("/", 1)[-1] for p in grouped.skipped_files] == ["notes.txt"]

    result = CliRunner().invoke(cli, ["filter", str(tmp_path / "empty"), "--filters", "yaw"])
    assert result.exit_code == 2 and "holds no images" in result.output
