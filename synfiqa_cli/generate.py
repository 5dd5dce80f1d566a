"""`synfiqa generate`: identities from a generator, written as an identity folder."""
from __future__ import annotations

import click

from synfiqa_cli.main import resolve_config


@click.command()
@click.option("--generator", "generator_name", help="Generator name (default: the config's generate.generator).")
@click.option("-n", "count", type=click.IntRange(min=0), required=True, help="How many identities.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder (resumable).")
@click.option("--seed", type=int, help="Run seed (default: run.seed).")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when on a terminal).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="A TOML pipeline config.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override one config key, e.g. --set generate.params.ddpm.model=DIR (repeatable).")
def generate(generator_name, count, out, seed, progress, config_path, overrides):
    """Generate N identities into OUT (one sub-folder each, with a manifest); a rerun resumes."""
    from synfiqa.config import component_params
    from synfiqa.context import RunContext
    from synfiqa.stages.s1_generate import write_generated
    from synfiqa.registry import get_registry

    config = resolve_config(config_path, overrides, {"run.seed": seed})
    name = generator_name or config["generate"]["generator"]
    params = component_params(config, "generate", name)
    generator = RunContext(config, get_registry()).create("generator", name, params)
    write_generated(generator, name, params, count, config["run"]["seed"] if seed is None else seed, out,
                    progress=progress, echo=click.echo)


COMMANDS = [generate]
