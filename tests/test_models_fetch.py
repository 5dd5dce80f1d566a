"""`synfiqa models fetch / pack / unpack` against a loopback HTTP server (no real network): it
serves small files under plain URLs and in the Hugging Face hub's layout
(/{repo}/resolve/{revision}/{filename}), honours Range, and can cut a response mid-file. The
expected checksums are hashlib's over the bytes the test made, never synfiqa's."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from synfiqa.catalogue import AssetEntry, AssetFile
from synfiqa.errors import AssetTransferError
from synfiqa.fetch import fetch, pack, unpack
from synfiqa.plugins import build_plugin_manager
from synfiqa.registry import Registry
from synfiqa.weights import locate

GOOD = bytes(range(256)) * 400           # 102,400 bytes
OTHER = b"a different file\n" * 100


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Server:
    """A loopback file server: `files` maps a URL path to its bytes; `cut` holds paths whose next
    GET is cut after `cut_at` bytes; `requests` records (method, path, Range header, bytes sent)."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.cut: set[str] = set()
        self.cut_at = 0
        self.ignore_range = False
        self.requests: list[tuple[str, str, str | None, int]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args):
                pass

            def do_GET(self):
                data = server.files.get(self.path)
                asked = self.headers.get("Range")
                if data is None:
                    server.requests.append(("GET", self.path, asked, 0))
                    self.send_error(404)
                    return
                start = 0
                if asked and not server.ignore_range:
                    start = int(asked.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        server.requests.append(("GET", self.path, asked, 0))
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.path in server.cut:  # promise the whole body, send part of it, hang up
                    server.cut.discard(self.path)
                    body = body[:server.cut_at]
                # recorded before the body goes out: once the client has read it, the test may look
                server.requests.append(("GET", self.path, asked, len(body)))
                self.wfile.write(body)
                self.wfile.flush()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def sent(self, path: str) -> int:
        return sum(n for _, p, _, n in self.requests if p == path)


@pytest.fixture
def server():
    served = Server()
    served.thread.start()
    yield served
    served.httpd.shutdown()
    served.httpd.server_close()


@pytest.fixture
def weights(tmp_path, monkeypatch):
    root = tmp_path / "weights"
    monkeypatch.setenv("SYNFIQA_WEIGHTS", str(root))
    return root


def entry(name: str, url: str, data: bytes, path: str = "model.bin", sha256: str | None = None) -> AssetEntry:
    return AssetEntry(name=name, files=(AssetFile(path, sha256 or sha(data), len(data), url),), license="CC0-1.0",
                      source="the test server")


def test_a_good_file_is_installed_where_locate_finds_it(server, weights):
    server.files["/files/model.bin"] = GOOD
    asset = entry("good-asset", server.url + "/files/model.bin", GOOD)
    result = fetch(asset)
    installed = weights / "good-asset" / "model.bin"
    assert installed.read_bytes() == GOOD
    assert result.downloaded == ["model.bin"] and result.bytes == len(GOOD)
    assert not (weights / "good-asset" / "model.bin.part").exists()
    assert locate(asset).files["model.bin"] == installed
    # fetched again: already there with its sha256, nothing requested
    before = len(server.requests)
    assert fetch(asset).present == ["model.bin"] and len(server.requests) == before


def test_a_hub_file_is_fetched_from_the_hub_layout_on_hf_endpoint(server, weights, monkeypatch):
    server.files["/org/tiny-model/resolve/0123abc/sub/weights.safetensors"] = GOOD
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    asset = entry("hub-asset", "hf://org/tiny-model@0123abc/sub/weights.safetensors", GOOD,
                  path="sub/weights.safetensors")
    fetch(asset)
    assert (weights / "hub-asset" / "sub" / "weights.safetensors").read_bytes() == GOOD
    assert [r[1] for r in server.requests] == ["/org/tiny-model/resolve/0123abc/sub/weights.safetensors"]


def test_a_corrupt_file_is_refused_with_both_checksums_and_not_installed(server, weights):
    server.files["/files/model.bin"] = OTHER  # not the file the asset declares
    asset = entry("corrupt-asset", server.url + "/files/model.bin", GOOD)
    with pytest.raises(AssetTransferError) as caught:
        fetch(asset)
    message = str(caught.value)
    assert sha(GOOD) in message and sha(OTHER) in message and "not installed" in message
    assert not (weights / "corrupt-asset" / "model.bin").exists()
    assert not (weights / "corrupt-asset" / "model.bin.part").exists()


def test_a_download_cut_mid_file_is_continued_not_restarted(server, weights):
    server.files["/files/model.bin"] = GOOD
    server.cut, server.cut_at = {"/files/model.bin"}, 40_000
    result = fetch(entry("cut-asset", server.url + "/files/model.bin", GOOD))
    assert (weights / "cut-asset" / "model.bin").read_bytes() == GOOD
    gets = [(r[2], r[3]) for r in server.requests]
    assert gets == [(None, 40_000), ("bytes=40000-", len(GOOD) - 40_000)]
    assert server.sent("/files/model.bin") == len(GOOD) == result.bytes  # no byte sent twice


def test_a_rerun_continues_from_the_partial_file_a_killed_run_left(server, weights):
    server.files["/files/model.bin"] = GOOD
    part = weights / "killed-asset" / "model.bin.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(GOOD[:70_000])
    result = fetch(entry("killed-asset", server.url + "/files/model.bin", GOOD))
    assert (weights / "killed-asset" / "model.bin").read_bytes() == GOOD
    assert [(r[2], r[3]) for r in server.requests] == [("bytes=70000-", len(GOOD) - 70_000)]
    assert result.bytes == len(GOOD) - 70_000


def test_a_server_that_ignores_range_gets_the_whole_file_written_afresh(server, weights):
    server.files["/files/model.bin"] = GOOD
    server.ignore_range = True
    part = weights / "norange-asset" / "model.bin.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"x" * 1000)  # would corrupt the file if appended to
    fetch(entry("norange-asset", server.url + "/files/model.bin", GOOD))
    assert (weights / "norange-asset" / "model.bin").read_bytes() == GOOD


def test_a_missing_file_is_one_line_naming_the_status(server, weights):
    with pytest.raises(AssetTransferError, match="HTTP 404"):
        fetch(entry("absent-asset", server.url + "/files/nothing.bin", GOOD))


# ------------------------------------------------------------------ the command line

PLUGIN = """
from synfiqa import hookimpl

@hookimpl
def register_model_assets(register):
    register("loop-good", files=[{{"path": "model.bin", "sha256": "{good}", "size": {size}, "url": "{url}/files/model.bin"}}],
             license="CC0-1.0", source="the test server")
    register("loop-hub", files=[{{"path": "vocab.txt", "sha256": "{other}", "url": "hf://org/tiny@main/vocab.txt"}}],
             license="CC0-1.0", source="the test server")
    register("loop-manual", files=["manual.bin"], license="CC0-1.0", source="ask the lab that trained it")
"""


@pytest.fixture
def cli_registry(server, weights, monkeypatch):
    server.files["/files/model.bin"] = GOOD
    server.files["/org/tiny/resolve/main/vocab.txt"] = OTHER
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    module = types.ModuleType("loop_assets_plugin")
    exec(PLUGIN.format(good=sha(GOOD), size=len(GOOD), other=sha(OTHER), url=server.url), module.__dict__)
    manager = build_plugin_manager()
    manager.register_module(module, "loop-assets", "1.0")
    registry = Registry(manager)
    monkeypatch.setattr("synfiqa.registry._default_registry", registry)
    return registry


def invoke(*args):
    from synfiqa_cli.main import cli

    return CliRunner().invoke(cli, list(args))


def test_models_list_says_which_assets_are_fetchable(cli_registry):
    result = invoke("models", "list", "--json")
    assert result.exit_code == 0, result.output
    rows = {row["asset"]: row for row in json.loads(result.stdout)}
    assert rows["loop-good"]["fetch"] == "fetchable" and rows["loop-hub"]["fetch"] == "fetchable"
    assert rows["loop-manual"]["fetch"] == "user-supplied"
    assert "ask the lab" in rows["loop-manual"]["fetch_note"]
    assert rows["mtcnn"]["fetch"] == "in a package"
    table = invoke("models", "list").stdout
    assert any(line.startswith("loop-good") and "fetchable" in line for line in table.splitlines())


def test_models_fetch_all_available_then_json(cli_registry, weights):
    result = invoke("models", "fetch", "--all-available", "--json")
    assert result.exit_code == 0, result.output
    fetched = {item["asset"]: item for item in json.loads(result.stdout)["fetched"]}
    assert set(fetched) == {"loop-good", "loop-hub"}   # every fetchable asset not found, nothing else
    assert (weights / "loop-good" / "model.bin").read_bytes() == GOOD
    assert (weights / "loop-hub" / "vocab.txt").read_bytes() == OTHER
    assert "fetch loop-good" in result.stderr
    again = invoke("models", "fetch", "--all-available", "--json")
    assert json.loads(again.stdout) == {"fetched": []}


def test_models_fetch_refuses_what_it_cannot_check_or_find(cli_registry):
    manual = invoke("models", "fetch", "loop-manual")
    assert manual.exit_code == 2 and "ask the lab" in manual.output
    assert "Traceback" not in manual.output and len(manual.output.strip().splitlines()) == 1
    unknown = invoke("models", "fetch", "loop-gooood")
    assert unknown.exit_code == 2 and "loop-good" in unknown.output  # did you mean
    nothing = invoke("models", "fetch")
    assert nothing.exit_code == 2 and "--all-available" in nothing.output


def test_models_fetch_a_corrupt_file_is_one_line_with_both_checksums(cli_registry, server, weights):
    server.files["/files/model.bin"] = OTHER
    result = invoke("models", "fetch", "loop-good")
    assert result.exit_code == 2
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("Error:") and sha(GOOD) in line and sha(OTHER) in line
    assert not (weights / "loop-good" / "model.bin").exists()


# ------------------------------------------------------------------ pack / unpack


def test_pack_and_unpack_carry_the_assets(cli_registry, weights, tmp_path):
    assert invoke("models", "fetch", "loop-good", "loop-hub").exit_code == 0
    archive = tmp_path / "carry"
    archive.mkdir()
    packed = invoke("models", "pack", str(archive), "loop-good", "loop-hub", "--json")
    assert packed.exit_code == 0, packed.output
    tar_path = Path(json.loads(packed.stdout)["archive"])
    with tarfile.open(tar_path) as tar:
        names = tar.getnames()
        manifest = json.loads(tar.extractfile("MANIFEST.json").read())
    assert names == ["MANIFEST.json", "loop-good/model.bin", "loop-hub/vocab.txt"]
    assert {(f["asset"], f["path"], f["sha256"], f["size"]) for f in manifest["files"]} == {
        ("loop-good", "model.bin", sha(GOOD), len(GOOD)), ("loop-hub", "vocab.txt", sha(OTHER), len(OTHER))}
    offline = tmp_path / "offline-cache"
    unpacked = invoke("models", "unpack", str(tar_path), "--into", str(offline), "--json")
    assert unpacked.exit_code == 0, unpacked.output
    assert (offline / "loop-good" / "model.bin").read_bytes() == GOOD
    assert (offline / "loop-hub" / "vocab.txt").read_bytes() == OTHER
    assert len(json.loads(unpacked.stdout)["installed"]) == 2


def handmade_tar(path: Path, members: list[tuple[str, bytes]], manifest_files: list[dict], links=()) -> Path:
    with tarfile.open(path, "w") as tar:
        body = json.dumps({"format": "synfiqa-assets/1", "files": manifest_files}).encode()
        info = tarfile.TarInfo("MANIFEST.json")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in links:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return path


def test_unpack_refuses_path_traversal_links_and_strangers(tmp_path):
    into = tmp_path / "cache"
    evil = {"asset": "x", "path": "../../escaped.bin", "sha256": sha(GOOD)}
    with pytest.raises(AssetTransferError, match="would leave the asset folder"):
        unpack(handmade_tar(tmp_path / "a.tar", [("x/../../escaped.bin", GOOD)], [evil]), into=into)
    absolute = {"asset": "/etc", "path": "passwd", "sha256": sha(GOOD)}
    with pytest.raises(AssetTransferError, match="would leave the asset folder"):
        unpack(handmade_tar(tmp_path / "b.tar", [("/etc/passwd", GOOD)], [absolute]), into=into)
    good = {"asset": "x", "path": "model.bin", "sha256": sha(GOOD)}
    with pytest.raises(AssetTransferError, match="not a regular file"):
        unpack(handmade_tar(tmp_path / "c.tar", [("x/model.bin", GOOD)], [good], links=[("x/link", "/etc")]),
               into=into)
    with pytest.raises(AssetTransferError, match="not in its manifest"):
        unpack(handmade_tar(tmp_path / "d.tar", [("x/model.bin", GOOD), ("x/extra.bin", OTHER)], [good]), into=into)
    assert not into.exists() and not (tmp_path / "escaped.bin").exists()  # nothing written, anywhere


def test_unpack_refuses_a_tampered_file_and_names_both_checksums(tmp_path):
    into = tmp_path / "cache"
    declared = {"asset": "x", "path": "model.bin", "sha256": sha(GOOD)}
    with pytest.raises(AssetTransferError) as caught:
        unpack(handmade_tar(tmp_path / "t.tar", [("x/model.bin", OTHER)], [declared]), into=into)
    assert sha(GOOD) in str(caught.value) and sha(OTHER) in str(caught.value)
    assert not (into / "x" / "model.bin").exists() and not (into / "x" / "model.bin.part").exists()


def test_pack_by_default_leaves_out_what_a_package_ships(cli_registry, tmp_path):
    assert invoke("models", "fetch", "loop-good").exit_code == 0
    result = invoke("models", "pack", str(tmp_path / "all.tar"), "--json")
    assert result.exit_code == 0, result.output
    assets = json.loads(result.stdout)["assets"]
    assert "loop-good" in assets and "mtcnn" not in assets  # mtcnn ships in facenet-pytorch's wheel
