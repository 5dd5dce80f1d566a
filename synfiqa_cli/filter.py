"""`synfiqa filter DIR`: judge the identities of a folder with the identity filters,
print what each filter kept and removed, and write the kept list. Never deletes a file."""
from __future__ import annotations

import json
from pathlib import Path

import click

from synfiqa_cli.main import resolve_config

# What `synfiqa filter` runs when neither --filters nor filter.chain names any: the paper's
# stage-1 chain.
PAPER_CHAIN = ("yaw", "glasses", "expression", "uniqueness")


@click.command("filter")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--filters", "filter_names", help="Comma-separated chain (default: filter.chain, else the paper's).")
@click.option("--grouping", type=click.Choice(["auto", "subfolder", "subfolder-recursive", "stem-suffix", "file"]), default=None,
              help="How images form identities (default: the folder generator's setting).")
@click.option("--json", "as_json", is_flag=True, help="Every image with kept/removed, the filter and its value.")
@click.option("--kept-list", type=click.Path(dir_okay=False),
              help="Where to write the kept images, one path per line (default: DIR/kept.txt).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="A TOML pipeline config.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override one config key (repeatable).")
def filter_command(directory, filter_names, grouping, as_json, kept_list, config_path, overrides):
    """Run the identity filters over the identities in DIRECTORY."""
    from synfiqa.config import component_params
    from synfiqa.context import RunContext
    from synfiqa.stages.s2_filter import build_filters, run_filters, summary_counts
    from synfiqa.store import write_text_atomic
    from synfiqa.registry import get_registry

    from synfiqa_plugins.generators.folder import FolderGenerator

    config = resolve_config(config_path, overrides)
    registry = get_registry()
    if filter_names:
        names = [n.strip() for n in filter_names.split(",") if n.strip()]
    else:
        names = list(config["filter"]["chain"]) or list(PAPER_CHAIN)
    folder_params = component_params(config, "generate", "folder")
    generator = FolderGenerator(str(directory), grouping or folder_params.get("grouping", "auto"))
    identities = generator.identities(None, config["run"]["seed"])
    filters = build_filters(names, config, registry)
    verdicts = run_filters(filters, identities, RunContext(config, registry))

    root = Path(directory)
    paths = {i.name: [str(Path(s.path).relative_to(root)) for s in i.images] for i in identities}
    kept_paths = [p for v in verdicts if v.kept for p in paths[v.identity]]
    target = Path(kept_list) if kept_list else root / "kept.txt"
    write_text_atomic(target, "".join(f"{p}\n" for p in kept_paths))

    counts = summary_counts(names, verdicts)
    if as_json:
        images = [{"image": path, "identity": v.identity, "kept": v.kept, "removed_by": v.removed_by,
                   "reason": v.reason, "values": v.values, "judged_photo": v.source}
                  for v in verdicts for path in paths[v.identity]]
        click.echo(json.dumps({"filters": names, "removed": counts, "kept": sum(v.kept for v in verdicts),
                               "identities": len(verdicts), "kept_list": str(target), "images": images}, indent=2))
        return
    width = max([len(n) for n in names] + [6])
    click.echo(f"{'filter':<{width}}  judged  kept  removed")
    alive = len(verdicts)
    for name in names:
        removed = counts[name]
        click.echo(f"{name:<{width}}  {alive:>6}  {alive - removed:>4}  {removed:>7}")
        alive -= removed
    for verdict in verdicts:
        if not verdict.kept:
            click.echo(f"  removed {verdict.identity} by {verdict.removed_by}: {verdict.reason}")
    click.echo(f"kept {alive} of {len(verdicts)} identities ({len(kept_paths)} images); kept list: {target}")
    if generator.skipped_files:
        click.echo(f"  {len(generator.skipped_files)} non-image files ignored")


COMMANDS = [filter_command]
