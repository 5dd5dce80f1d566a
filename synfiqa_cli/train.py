"""`synfiqa train`: train a FIQA network (CR-FIQA recipe, CR or MR targets) on built
datasets; one process, or many under torchrun (docs/train.md)."""
from __future__ import annotations

import click

from synfiqa_cli.main import config_options


@click.command()
@click.argument("datasets", nargs=-1, required=True, type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder of the run.")
@click.option("--arch", default=None, metavar="NAME",
              help="The architecture the --network component builds (train.arch; default iresnet50; cr-fiqa: "
                   "iresnet18, iresnet34, iresnet50, iresnet100).")
@click.option("--head", type=click.Choice(["linear", "mlp"]), default=None,
              help="Quality head: linear (CR-FIQA) or mlp (SynFIQA++) (train.head; default linear).")
@click.option("--target", type=click.Choice(["cr", "mr"]), default=None,
              help="Quality target: cr (certainty ratio, CR-FIQA) or mr (the build's MR labels) (train.target).")
@click.option("--max-steps", type=click.IntRange(min=1), default=None,
              help="Stop after this step (the schedule stays that of the full run; --resume continues it).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--overwrite", is_flag=True, help="Replace a training run already in --out.")
@click.option("--export", type=click.Choice(["onnx"]), default=None, help="Also write DIR/model.onnx.")
@click.option("--device", default=None, help="auto (CUDA when visible), cpu, cuda or cuda:N (train.device).")
@click.option("--network", default=None, metavar="NAME",
              help="The fiqa component whose network is trained (train.network; default cr-fiqa).")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when on a terminal).")
@config_options
def train(datasets, out, arch, head, target, max_steps, resume, overwrite, export, device, network, progress,
          config_path, overrides):
    """Train a FIQA network on DATASETS: SynFIQA builds, folders with one sub-folder of aligned
    crops per identity, or MXNet RecordIO train.rec files.

    The CR-FIQA recipe (ArcFace head, certainty-ratio target, SGD with step decay), or the
    MR labels of a SynFIQA build as the quality target (--target mr). Writes DIR/model.pt,
    which `synfiqa score --model DIR/model.pt` loads, checkpoints, metrics.jsonl and
    loss.png. Many processes: torchrun --nproc_per_node=N -m synfiqa_cli train ...
    --config/--set take the [train] table (`--set train.batch_size=64`; docs/train.md)."""
    from synfiqa.registry import get_registry
    from synfiqa.stages.s6_train import load_settings, network_builder
    from synfiqa.stages.s6_train import train as run_training
    from synfiqa.stages.s6_train.loop import distributed_env

    settings = load_settings(config_path, overrides, {"arch": arch, "head": head, "target": target, "device": device,
                                                      "export": export, "network": network})
    registry = get_registry()
    builder = network_builder(registry, settings.network)

    def scorer(path: str):
        return registry.create("fiqa", settings.network, path=path, device="cpu")

    rank = distributed_env()[0]
    result = run_training(list(datasets), out, settings, builder, resume=resume, overwrite=overwrite,
                          max_steps=max_steps, progress=progress,
                          echo=(lambda text: click.echo(text, err=True)) if rank == 0 else None,
                          scorer_factory=scorer)
    if rank == 0 and result.rows:
        last = result.rows[-1]
        click.echo(f"trained to step {result.end_step}: loss {last['loss']:.4f} (identity {last['loss_identity']:.4f}, "
                   f"quality {last['loss_quality']:.4f}); score with: synfiqa score --model {result.model} IMAGES",
                   err=True)


COMMANDS = [train]
