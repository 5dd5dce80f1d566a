"""synfiqa's command line: `synfiqa build`, `plugins`, `config`, the stage commands of
LAZY_COMMANDS (each in its own module, imported when it runs), and whatever plugins add
through the `register_commands` hook."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from synfiqa.errors import SynfiqaError
from synfiqa_cli.output import Output, json_option


# The commands whose module is imported only when that command runs (or its own --help is
# asked), so that `synfiqa --help` imports no torch: name -> (module exposing COMMANDS, the
# short help `synfiqa --help` shows). tests/test_cli_startup.py keeps each short help equal to
# the command's own. A new stage command: its module in synfiqa_cli/, one line here.
LAZY_COMMANDS = {
    "generate": ("synfiqa_cli.generate", "Generate N identities into OUT (one sub-folder each, with a manifest); "
                                         "a rerun resumes."),
    "filter": ("synfiqa_cli.filter", "Run the identity filters over the identities in DIRECTORY (read only)."),
    "degrade": ("synfiqa_cli.degrade", "Apply degrade.chain to PATHS (image files, or folders searched "
                                       "recursively): N copies of each, written losslessly as OUT/<name>/<k>.png "
                                       "with every drawn parameter in OUT/degraded.jsonl."),
    "annotate": ("synfiqa_cli.annotate", "Score every degraded sample of DATASET: writes Quality-Scores.txt (keyed "
                                         "by image path), annotations.jsonl and annotation-summary.json."),
    "score": ("synfiqa_cli.score", "Score the face image quality of PATHS (image files, or folders searched "
                                   "recursively)."),
    "evaluate": ("synfiqa_cli.evaluate", "Error-versus-discard curves and pAUC of face image quality on "
                                         "verification pairs."),
    "ops": ("synfiqa_cli.ops", "The compiled ops (blur_resample, ref_cosine, greedy_unique, rasterize): status and "
                               "build."),
    "convert": ("synfiqa_cli.convert", "Convert original checkpoints to the formats synfiqa loads."),
    "train": ("synfiqa_cli.train", "Train a FIQA network on DATASETS: SynFIQA builds, folders with one sub-folder "
                                   "of aligned crops per identity, or MXNet RecordIO train.rec files."),
    "export": ("synfiqa_cli.export", "Export the SynFIQA build in DATASET to --out (docs/export.md)."),
    "report": ("synfiqa_cli.report", "Write a static HTML report of the build in DATASET: one folder that opens "
                                     "from disk."),
    "models": ("synfiqa_cli.models", "Model assets: where each was found, or that it is missing; fetch, pack and "
                                     "unpack them."),
}


class SynfiqaGroup(click.Group):
    """The top-level group. Turns synfiqa's own errors into one-line messages with exit code 2,
    and imports a command's module only when the command is looked up to run: the stage
    commands of LAZY_COMMANDS, and the built-in plugins' commands that registry.toml's
    ``[[command]]`` tables announce (their module's ``register_commands`` hook runs then, on
    this group). `synfiqa --help` lists them from those tables without importing anything."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._resolved: set[str] = set()

    def _announced(self) -> dict[str, str]:
        """Every command not imported yet -> its short help."""
        from synfiqa.catalogue import builtin_commands

        announced = {name: help_text for name, (_, help_text) in LAZY_COMMANDS.items()}
        for path, entry in builtin_commands().items():
            if " " not in path:
                announced.setdefault(path, entry.summary)
        return {name: text for name, text in announced.items() if name not in self._resolved}

    def add_stage_commands(self, name: str) -> None:
        """The click commands of LAZY_COMMANDS[name]'s module, imported now."""
        import importlib

        for command in importlib.import_module(LAZY_COMMANDS[name][0]).COMMANDS:
            if command.name not in self.commands:
                self.add_command(command)

    def resolve(self, name: str) -> None:
        """Import what makes command `name`: its stage module, then the register_commands hook of
        every built-in module that announces `name` or a subcommand of it (the ddpm generator's
        `convert guided-diffusion` goes into the `convert` group)."""
        if name in self._resolved:
            return
        self._resolved.add(name)
        if name in LAZY_COMMANDS:
            self.add_stage_commands(name)
        from synfiqa.catalogue import builtin_commands
        from synfiqa.plugins import add_builtin_commands

        add_builtin_commands(self, sorted({entry.module for path, entry in builtin_commands().items()
                                           if path.split()[0] == name}))

    def list_commands(self, ctx):
        return sorted({*self.commands, *self._announced()})

    def get_command(self, ctx, name):
        if name in self._announced():
            self.resolve(name)
        return self.commands.get(name)

    def format_commands(self, ctx, formatter):
        """click's own listing; a command not imported yet shows the short help its table gives."""
        announced = self._announced()
        rows = []
        for name in self.list_commands(ctx):
            command = self.commands.get(name) if name not in announced else click.Command(name, help=announced[name])
            if command is None or command.hidden:
                continue
            rows.append((name, command))
        if rows:
            limit = formatter.width - 6 - max(len(name) for name, _ in rows)
            with formatter.section("Commands"):
                formatter.write_dl([(name, command.get_short_help_str(limit)) for name, command in rows])

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SynfiqaError as error:
            click.echo(f"Error: {error}", err=True)
            sys.exit(2)


@click.group(cls=SynfiqaGroup)
@click.version_option(package_name="synfiqa")
def cli():
    """Build synthetic face-image-quality datasets; score and evaluate face image quality (MR-FIQA)."""


def config_options(function):
    function = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                            help="Override one config key, e.g. --set run.degraded=50 (repeatable; the value "
                                 "is TOML). `synfiqa config show --schema` lists the keys.")(function)
    function = click.option("--config", "config_path", type=click.Path(dir_okay=False),
                            help="A TOML pipeline config; defaults to the shipped one.")(function)
    return function


PRESET_KEY = "synfiqa.preset"


def preset_option(function):
    """--preset NAME: a config layer shipped with synfiqa, under --config and --set. Kept in the
    click context, where resolve_config takes it (the command's own signature stays as it is)."""
    def remember(ctx, _param, value):
        ctx.meta[PRESET_KEY] = value
        return value

    return click.option("--preset", metavar="NAME", expose_value=False, callback=remember, is_eager=True,
                        help="A shipped config preset, under --config and --set: paper (the MR-FIQA paper's "
                             "models and every faithful switch; docs/method.md section 11).")(function)


_CLICK_TYPES = {int: click.INT, float: click.FLOAT, str: click.STRING, bool: click.BOOL}


def key_option(flag: str, key: str, name: str | None = None, **kwargs):
    """A typed option for one config key: its click type and help come from the config schema,
    and its value goes into the config as a typed value (resolve_config's `values`), never as
    KEY=VALUE text. Ranges and choices are the schema's, checked with the whole config."""
    from synfiqa.config import KEYS

    entry = KEYS[key]
    allowed = f"; {entry.allowed}" if entry.allowed else ""
    kwargs.setdefault("help", f"Sets {key} ({entry.help}{allowed}).")
    names = (flag,) if name is None else (flag, name)
    return click.option(*names, type=_CLICK_TYPES[entry.type], default=None, **kwargs)


def resolve_config(config_path, overrides, values: dict | None = None):
    """The config of --config, --set and the typed `values` of a command's own options
    ({dotted key: value}, None for an option not given; they win over --set), validated as a
    whole against the installed components: every problem is in one ConfigError (exit 2),
    before a command writes anything."""
    from synfiqa.config import config_warnings, load_config
    from synfiqa.registry import get_registry

    context = click.get_current_context(silent=True)
    preset = context.meta.get(PRESET_KEY) if context is not None else None
    config = load_config(config_path, list(overrides), registry=get_registry(), values=values, preset=preset)
    for warning in config_warnings(config):
        click.echo(f"warning: {warning}", err=True)
    return config


@cli.command()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output dataset folder.")
@click.option("--input", "input_dir", type=click.Path(path_type=Path),
              help="Folder of identities for the folder generator (sets generate.params.folder.path).")
@key_option("--seed", "run.seed")
@key_option("--device", "run.device")
@click.option("--overwrite", is_flag=True, help="Replace a synfiqa build already in --out.")
@click.option("--shard", metavar="I/N", help="Do only every N-th identity, starting at I (0-based).")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when on a terminal).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Where the per-identity work runs: this process, or Ray workers (one per GPU; docs/scale.md).")
@click.option("--ray-address", metavar="auto|HOST:PORT",
              help="The Ray cluster to join (auto: the one `ray start` runs here); default: the one running here, "
                   "else a new one on this machine.")
@click.option("--gpus-per-worker", type=float, help="GPUs per Ray worker (default 1; 0.5 puts two on a GPU).")
@json_option
@config_options
@preset_option
def build(out, input_dir, seed, device, overwrite, shard, progress, engine, ray_address, gpus_per_worker,
          as_json, config_path, overrides):
    """Build a SynFIQA dataset: references, degraded samples and quality scores."""
    from synfiqa.errors import ConfigError
    from synfiqa.stages.build import build as run_build
    from synfiqa.stages.engines import make_engine

    if input_dir is not None and not input_dir.is_dir():
        raise ConfigError(f"input folder {str(input_dir)!r} does not exist or is not a folder")
    shard_pair = None
    if shard:
        try:
            index, count = (int(part) for part in shard.split("/"))
            assert 0 <= index < count
        except (ValueError, AssertionError):
            raise ConfigError(f"--shard must look like I/N with 0 <= I < N, got {shard!r}") from None
        shard_pair = (index, count)
    config = resolve_config(config_path, overrides, {
        "generate.params.folder.path": None if input_dir is None else str(input_dir.resolve()),
        "run.seed": seed,
        "run.device": device,
    })
    output = Output(as_json)
    runner = make_engine(engine, address=ray_address, gpus_per_worker=gpus_per_worker, echo=output.echo)
    try:
        summary = run_build(config, out, overwrite=overwrite, shard=shard_pair, progress=progress, echo=output.echo,
                            engine=runner)
    except SynfiqaError:
        raise
    except BaseException as error:
        if isinstance(error, (SystemExit, click.exceptions.Exit)):
            raise
        written = Path(out) / "config.toml"
        if written.is_file():  # the build got as far as recording its config: resume from exactly that
            options = "".join(f" {flag} {value}" for flag, value in (
                ("--engine", engine if engine != "local" else None), ("--ray-address", ray_address),
                ("--gpus-per-worker", gpus_per_worker), ("--shard", shard)) if value is not None)
            resume = (f"Everything written so far is kept. Resume with:\n  synfiqa build --out {out} --config {written}"
                      + options)
        else:
            resume = "Nothing was written; fix the cause and run the same command again."
        click.echo(f"build stopped: {error!r}\n{resume}", err=True)
        raise SystemExit(1)
    output.result({"out": str(out), **summary})


@cli.group()
def plugins():
    """The installed plugins and the components they offer."""


@plugins.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--kind", help="Only components of this kind.")
def plugins_list(as_json, kind):
    """Every registered component with its kind and owning distribution."""
    from synfiqa.registry import get_registry

    registry = get_registry()
    components = registry.components(kind)
    if as_json:
        payload = {
            "components": [c.describe() for c in components],
            "plugins": [vars(p) | {"imported": True} for p in registry.manager.loaded]
                       + [vars(p) | {"imported": False} for p in registry.manager.deferred],
            "failed": [vars(p) for p in registry.manager.failed],
            "skipped": [vars(c) for c in registry.skipped],
        }
        click.echo(json.dumps(payload, indent=2, default=str))
        return
    width = max((len(c.name) for c in components), default=4)
    for component in components:
        click.echo(f"{component.kind:<16} {component.name:<{width}}  {component.distribution} "
                   f"{component.version}  {component.summary}")
    for failed in registry.manager.failed:
        click.echo(f"FAILED plugin {failed.name} ({failed.distribution}): {failed.error}"
                   + (f"; to stop loading it: {failed.disable}" if failed.disable else ""))
    for skipped in registry.skipped:
        click.echo(f"SKIPPED {skipped.kind} {skipped.name!r} of plugin {skipped.plugin} "
                   f"({skipped.distribution}): {skipped.reason}")


@plugins.command("show")
@click.argument("name")
def plugins_show(name):
    """Details of one component: summary, owner, default parameters."""
    from synfiqa.errors import UnknownComponentError
    from synfiqa.registry import KINDS, get_registry

    registry = get_registry()
    found = registry.find(name)
    if not found:
        for kind in KINDS:  # reuse the registry's did-you-mean message
            try:
                registry.get(kind, name)
            except UnknownComponentError as error:
                if "Did you mean" in str(error):
                    raise
        raise UnknownComponentError(f"no component named {name!r}; see `synfiqa plugins list`")
    for component in found:
        click.echo(json.dumps(component.describe(), indent=2, default=str))


@cli.group("config")
def config_group():
    """The pipeline config."""


@config_group.command("show")
@click.option("--schema", is_flag=True,
              help="List every config key instead: its type, default, allowed values and help.")
@config_options
@preset_option
def config_show(schema, config_path, overrides):
    """Print the resolved config (defaults + preset + file + overrides) as TOML; with --schema, every key."""
    from synfiqa.config import schema_text, to_toml

    if schema:
        if config_path is not None or overrides or click.get_current_context().meta.get(PRESET_KEY):
            raise click.UsageError("--schema lists the keys; it takes no --config, --set or --preset")
        click.echo(schema_text(), nl=False)
        return
    click.echo(to_toml(resolve_config(config_path, overrides)), nl=False)


def _load_plugin_commands():
    """Third-party plugins add their commands now (a failing one is named and skipped); the
    built-ins' are announced by the catalogue and added when looked up (SynfiqaGroup)."""
    from synfiqa.plugins import build_plugin_manager

    manager = build_plugin_manager()
    if manager.hook.register_commands.get_hookimpls():
        for name in LAZY_COMMANDS:  # a plugin may add a subcommand to a stage group (`convert`): make them
            cli.add_stage_commands(name)
        manager.add_commands(cli)


_load_plugin_commands()
