"""`synfiqa filter DIR`: judge the identities of a folder with the identity filters and
print what each filter kept and removed. Writes nothing unless asked: the kept images go to
the file `--kept-list` names, or to stdout with `--kept-list -`; DIR, the user's input, is
never written to or deleted from."""
from __future__ import annotations

import functools
from pathlib import Path

import click

from synfiqa_cli.main import preset_option, resolve_config
from synfiqa_cli.output import Output

# What `synfiqa filter` runs when neither --filters nor filter.chain names any: the paper's
# stage-1 chain.
PAPER_CHAIN = ("yaw", "glasses", "expression", "uniqueness")


@click.command("filter")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--filters", "filter_names", help="Comma-separated chain (default: filter.chain, else the paper's).")
@click.option("--grouping", type=click.Choice(["auto", "subfolder", "subfolder-recursive", "stem-suffix", "file"]), default=None,
              help="How images form identities (default: the folder generator's setting).")
@click.option("--json", "as_json", is_flag=True,
              help="Every image with kept/removed, the filter and its value, as JSON on stdout; the table goes to "
                   "stderr.")
@click.option("--kept-list", type=click.Path(dir_okay=False, allow_dash=True),
              help="Write the kept images here, one path per line relative to DIRECTORY; '-' prints them on "
                   "stdout (the table then goes to stderr). Default: no list is written.")
@preset_option
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="A TOML pipeline config.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override one config key (repeatable).")
def filter_command(directory, filter_names, grouping, as_json, kept_list, config_path, overrides):
    """Run the identity filters over the identities in DIRECTORY (read only)."""
    from synfiqa.config import component_params
    from synfiqa.errors import ConfigError
    from synfiqa.context import RunContext
    from synfiqa.stages.s2_filter import build_filters, run_filters, summary_counts
    from synfiqa.store import write_text_atomic
    from synfiqa.weights import MissingAssets
    from synfiqa.registry import get_registry

    from synfiqa_plugins.generators.folder import FolderGenerator

    if kept_list == "-" and as_json:
        raise ConfigError("--kept-list - and --json both print on stdout; give the kept list a file name")
    config = resolve_config(config_path, overrides)
    registry = get_registry()
    if filter_names:
        names = [n.strip() for n in filter_names.split(",") if n.strip()]
    else:
        names = list(config["filter"]["chain"]) or list(PAPER_CHAIN)
    folder_params = component_params(config, "generate", "folder")
    generator = FolderGenerator(str(directory), grouping or folder_params.get("grouping", "auto"))
    identities = generator.identities(None, config["run"]["seed"])
    context = RunContext(config, registry)
    missing = MissingAssets()   # the detector's and every filter's missing weights, named in one error
    with missing.need("models.detector"):
        context.model("detector")
    filters = build_filters(names, config, registry, missing)
    missing.raise_if_any()
    verdicts = run_filters(filters, identities, context)

    root = Path(directory)
    paths = {i.name: [str(Path(s.path).relative_to(root)) for s in i.images] for i in identities}
    kept_paths = [p for v in verdicts if v.kept for p in paths[v.identity]]
    listing = "".join(f"{p}\n" for p in kept_paths)
    if kept_list == "-":
        click.echo(listing, nl=False)
    elif kept_list:
        write_text_atomic(kept_list, listing)
    where = {None: "not written (--kept-list FILE)", "-": "stdout"}.get(kept_list, kept_list)
    output = Output(as_json)
    echo = functools.partial(output.echo, err=kept_list == "-")  # stdout holds the list (or the JSON) then

    counts = summary_counts(names, verdicts)
    images = [{"image": path, "identity": v.identity, "kept": v.kept, "removed_by": v.removed_by,
               "reason": v.reason, "values": v.values, "judged_photo": v.source}
              for v in verdicts for path in paths[v.identity]]
    width = max([len(n) for n in names] + [6])
    echo(f"{'filter':<{width}}  judged  kept  removed")
    alive = len(verdicts)
    for name in names:
        removed = counts[name]
        echo(f"{name:<{width}}  {alive:>6}  {alive - removed:>4}  {removed:>7}")
        alive -= removed
    for verdict in verdicts:
        if not verdict.kept:
            echo(f"  removed {verdict.identity} by {verdict.removed_by}: {verdict.reason}")
    echo(f"kept {alive} of {len(verdicts)} identities ({len(kept_paths)} images); kept list: {where}")
    if generator.skipped_files:
        echo(f"  {len(generator.skipped_files)} non-image files ignored")
    output.result({"filters": names, "removed": counts, "kept": sum(v.kept for v in verdicts),
                   "identities": len(verdicts), "kept_list": kept_list, "images": images})


COMMANDS = [filter_command]
