"""synfiqa.weights.locate: the search order, sha256 and size checks, Hugging Face snapshot
folders (several repo names), other tools' caches, and the one error that names the
asset, the file, every place searched and how to get it."""
from __future__ import annotations

import hashlib

import pytest

from synfiqa.catalogue import AssetEntry, AssetFile
from synfiqa.errors import WeightsNotFoundError

CONTENT = b"weights of a tiny model"
SHA = hashlib.sha256(CONTENT).hexdigest()


@pytest.fixture
def env(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SYNFIQA_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return tmp_path


@pytest.fixture
def asset(monkeypatch):
    """A catalogue entry of our own, served to locate() in place of registry.toml's."""
    import synfiqa.weights

    entries = {}

    def make(name="toy", files=(("toy.pth", SHA, len(CONTENT)),), **extra):
        entries[name] = AssetEntry(name=name, files=tuple(AssetFile(*f) for f in files), license="test",
                                   source="copy it from the test", **extra)
        return entries[name]

    real = synfiqa.weights.asset_entry
    monkeypatch.setattr(synfiqa.weights, "asset_entry", lambda name: entries[name] if name in entries else real(name))
    return make


def put(folder, name="toy.pth", content=CONTENT):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(content)
    return folder / name


def test_search_order_first_place_wins(env, asset):
    from synfiqa.weights import locate

    asset(hf_repo="org/toy", cache_dirs=("~/.toytool/models",))
    home = env / "home"
    places = [
        ("config path", put(env / "mine", "renamed.bin")),
        ("$SYNFIQA_WEIGHTS", put(env / "weights" / "toy")),
        ("synfiqa cache", put(home / ".cache" / "synfiqa" / "weights" / "toy")),
        ("tool cache", put(home / ".toytool" / "models")),
        ("torch hub cache", put(env / "torch" / "hub" / "checkpoints")),
        ("torch cache (facenet-pytorch)", put(env / "torch" / "checkpoints")),
        ("Hugging Face cache (org/toy@rev1)", put(env / "hf" / "hub" / "models--org--toy" / "snapshots" / "rev1")),
    ]
    explicit = places[0][1]
    for origin, path in places:
        found = locate("toy", explicit=explicit if origin == "config path" else None)
        assert (found.origin, found.files["toy.pth"]) == (origin, path)
        path.unlink()
    with pytest.raises(WeightsNotFoundError):
        locate("toy")


def test_hf_snapshots_refs_main_first_and_every_repo_name(env, asset):
    from synfiqa.weights import locate, search_roots

    entry = asset(hf_repo=("org/new-name", "old-name"))
    hub = env / "hf" / "hub"
    put(hub / "models--old-name" / "snapshots" / "aaa")
    assert locate("toy").origin == "Hugging Face cache (old-name@aaa)"
    put(hub / "models--org--new-name" / "snapshots" / "older")
    put(hub / "models--org--new-name" / "snapshots" / "main1")
    (hub / "models--org--new-name" / "refs").mkdir()
    (hub / "models--org--new-name" / "refs" / "main").write_text("main1\n")
    assert locate("toy").origin == "Hugging Face cache (org/new-name@main1)"
    origins = [origin for origin, _ in search_roots(entry)]
    assert origins.index("Hugging Face cache (org/new-name@main1)") < origins.index("Hugging Face cache (org/new-name@older)")


def test_wrong_sha_and_wrong_size_are_errors_that_say_how_to_get_it(env, asset):
    from synfiqa.weights import locate

    asset()
    path = put(env / "weights" / "toy", content=b"x" * len(CONTENT))
    with pytest.raises(WeightsNotFoundError) as caught:
        locate("toy")
    message = str(caught.value)
    assert "'toy'" in message and str(path) in message and "wrong sha256" in message and SHA in message
    assert "copy it from the test" in message
    put(env / "weights" / "toy", content=CONTENT[:-3])
    with pytest.raises(WeightsNotFoundError, match=rf"has {len(CONTENT) - 3} bytes, expected {len(CONTENT)}"):
        locate("toy")
    assert locate("toy", verify=False).files["toy.pth"] == path   # verify=False skips both checks


def test_a_miss_names_the_file_every_place_and_how_to_get_it(env, asset):
    from synfiqa.weights import locate

    asset(files=(("cfg.json", None, None), ("model.bin", None, None)), package="no_such_package_xyz",
          hf_repo="org/toy", cache_dirs=("~/.toytool",))
    put(env / "weights" / "toy", "cfg.json")   # one of two files: this place does not count
    with pytest.raises(WeightsNotFoundError) as caught:
        locate("toy")
    message = str(caught.value)
    assert message.startswith("model asset 'toy' not found (expected file: cfg.json, model.bin)")
    for place in (env / "weights" / "toy" / "model.bin",
                  env / "home" / ".cache" / "synfiqa" / "weights" / "toy" / "cfg.json",
                  env / "home" / ".toytool" / "cfg.json",
                  env / "torch" / "hub" / "checkpoints" / "cfg.json",
                  env / "hf" / "hub" / "models--org--toy" / "snapshots" / "<revision>" / "cfg.json"):
        assert str(place) in message, place
    assert "<not installed>" in message
    assert "How to get it: copy it from the test" in message
    assert "$SYNFIQA_WEIGHTS/toy/" in message


def test_status_and_the_shipped_assets_verify(env):
    from synfiqa.weights import locate, status

    for name in ("mtcnn", "sface", "yunet"):
        found = locate(name)
        assert found.origin.startswith("package "), found
    assert status("sface")["found"] and not status("adaface-ir18")["found"]
    assert "adaface_ir18_webface4m.ckpt" in status("adaface-ir18")["error"]
