"""`synfiqa evaluate`: EDC curves and pAUC of quality methods on verification benchmarks."""
from __future__ import annotations

import json
from pathlib import Path

import click


def _fmr_list(ctx, param, value: str) -> list[float]:
    try:
        targets = [float(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"a comma-separated list of numbers, got {value!r}") from None
    if not targets or not all(0 < t < 1 for t in targets):
        raise click.BadParameter(f"FMR targets must lie in (0, 1), got {value!r}")
    return targets


@click.command()
@click.option("--pairs", type=click.Path(), help="Pairs file: CSV image_a,image_b,genuine; LFW/XQLFW pairs.txt; "
                                                  "'a b 1|0' list; or an insightface .bin.")
@click.option("--pairs-format", default="auto", show_default=True,
              type=click.Choice(["auto", "csv", "lfw", "xqlfw", "list", "bin", "tinyface", "adience"]),
              help="tinyface: a TinyFace test-set folder; adience: fold_<k>_data.txt or their folder.")
@click.option("--embeddings", type=click.Path(dir_okay=False), help=".npz mapping each image name to its vector.")
@click.option("--embedder", metavar="NAME|FILE", help="Compute embeddings with this embedder (or CR-FIQA checkpoint).")
@click.option("--quality", "quality_files", multiple=True, metavar="[NAME=]FILE",
              help="CSV image,quality (what `synfiqa score` writes); repeat to compare methods.")
@click.option("--scorer", "scorers", multiple=True, metavar="NAME|FILE",
              help="Compute qualities with this FIQA model (or CR-FIQA checkpoint); repeatable.")
@click.option("--images", type=click.Path(file_okay=False), help="Folder holding the images the pairs name.")
@click.option("--aligned", is_flag=True, help="The images are aligned 112x112 crops (always true for .bin files).")
@click.option("--name", "dataset_name", help="Dataset name in the tables (default: the pairs file's stem).")
@click.option("--spec", type=click.Path(dir_okay=False), help="TOML file listing several datasets (see docs/evaluate.md).")
@click.option("--benchmarks", "benchmark_dirs", multiple=True, type=click.Path(), metavar="DIR...",
              help="Benchmark folders (LFW, XQLFW, .bin, TinyFace, Adience; see docs/evaluate.md), each with "
                   "optional embeddings.npz and quality/*.csv; a table per benchmark and their average.")
@click.option("--protocol", default="A", show_default=True, type=click.Choice(["A", "B"], case_sensitive=False),
              help="A: CR-FIQA/MR-FIQA (threshold per discard level, normalised pAUC); B: ISO/IEC 29794-1.")
@click.option("--fmr", "fmr_targets", default="1e-2,1e-3,1e-4", show_default=True, callback=_fmr_list,
              help="FMR targets, comma-separated.")
@click.option("--discard-limit", default=0.3, show_default=True, type=float, help="pAUC up to this discard fraction.")
@click.option("--subtract-best", is_flag=True, help="Protocol B: subtract the area under the theoretical best curve.")
@click.option("--tie-rule", default="erc", show_default=True, type=click.Choice(["erc", "inclusive"]),
              help="Protocol A: a genuine pair exactly at the threshold is a non-match (erc, as CR-FIQA's ERC/erc.py) "
                   "or a match (inclusive, synfiqa before issue 16).")
@click.option("--quality-sort", default="stable", show_default=True, type=click.Choice(["stable", "numpy-default"]),
              help="Protocol A: order of pairs of equal quality: input order, or numpy's default argsort as erc.py.")
@click.option("--threshold-rule", default="iso", show_default=True, type=click.Choice(["iso", "kth-strict"]),
              help="Protocol B: iso (smallest impostor score s with #{impostor >= s} <= floor(FMR n), match iff >= s) "
                   "or kth-strict (the (k+1)-th highest impostor, match iff >; synfiqa before issue 16).")
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout instead of markdown tables.")
@click.option("--curves", is_flag=True, help="Include every curve point in the JSON.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="Also write the results as CSV.")
@click.option("--markdown", "markdown_path", type=click.Path(dir_okay=False), help="Also write the markdown tables.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="Write the EDC plot; the suffix chooses the format: .png, .pdf or .svg.")
@click.option("--save-embeddings", type=click.Path(dir_okay=False),
              help="Keep computed embeddings in this .npz (one dataset only).")
@click.option("--detector", default="mtcnn", show_default=True)
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--device", default="auto", show_default=True)
@click.option("--progress/--no-progress", default=None, help="Progress bars (default: when on a terminal).")
@click.argument("more_benchmarks", nargs=-1, type=click.Path(), metavar="[DIR]...")
def evaluate(pairs, pairs_format, embeddings, embedder, quality_files, scorers, images, aligned, dataset_name, spec,
             benchmark_dirs, protocol, fmr_targets, discard_limit, subtract_best, tie_rule, quality_sort,
             threshold_rule, as_json, curves, csv_path, markdown_path, plot_path, save_embeddings, detector,
             batch_size, device, progress, more_benchmarks):
    """Error-versus-discard curves and pAUC of face image quality on verification pairs.

    Pair quality is the lower of the two image qualities; comparison scores are cosine
    similarities of the embeddings. Prints one table per dataset (and their mean) in the
    layout of the MR-FIQA leaderboard."""
    from synfiqa.errors import ConfigError
    from synfiqa.stages.s8_evaluate import report
    from synfiqa.stages.s8_evaluate.dataset import evaluate_dataset
    from synfiqa.stages.s8_evaluate.inputs import write_embeddings
    from synfiqa.stages.s8_evaluate.spec import (DatasetSpec, benchmark_specs, load_embeddings, load_pairs,
                                                 load_qualities, parse_quality_option, quality_method_name, read_spec)

    protocol = protocol.upper()
    if subtract_best and protocol != "B":
        raise ConfigError("--subtract-best belongs to protocol B (ISO/IEC 29794-1)")
    if protocol == "B" and (tie_rule != "erc" or quality_sort != "stable"):
        raise ConfigError("--tie-rule and --quality-sort belong to protocol A (its threshold is recomputed per level)")
    if protocol == "A" and threshold_rule != "iso":
        raise ConfigError("--threshold-rule belongs to protocol B (ISO/IEC 29794-1)")
    if more_benchmarks and not benchmark_dirs:
        raise ConfigError(f"unexpected argument(s) {' '.join(more_benchmarks)}; to evaluate benchmark folders "
                          f"use --benchmarks DIR...")
    benchmark_dirs = [*benchmark_dirs, *more_benchmarks]
    if benchmark_dirs and (spec or pairs or embeddings or quality_files or images or dataset_name):
        raise ConfigError("--benchmarks reads each folder's pairs, embeddings.npz and quality/ files; do not combine "
                          "it with --spec/--pairs/--embeddings/--quality/--images/--name")
    limit_top = 0.95 if protocol == "A" else 1.0
    if not 0 < discard_limit <= limit_top:
        raise ConfigError(f"--discard-limit must lie in (0, {limit_top}] for protocol {protocol}, got {discard_limit}")
    if plot_path:  # a refused suffix stops before any model runs
        from synfiqa.stages.s8_evaluate.plot import plot_format

        plot_format(plot_path)
    if spec and (pairs or embeddings or quality_files or images or dataset_name):
        raise ConfigError("--spec lists the datasets; do not combine it with --pairs/--embeddings/--quality/--images/--name")
    if benchmark_dirs:
        specs = benchmark_specs(benchmark_dirs)
    elif spec:
        specs = read_spec(spec)
    elif pairs:
        specs = [DatasetSpec(name=dataset_name or Path(pairs).stem, pairs=Path(pairs), format=pairs_format,
                             embeddings=Path(embeddings) if embeddings else None,
                             images=Path(images) if images else None)]
        for value in quality_files:
            name, file = parse_quality_option(value)
            specs[0].quality[name or quality_method_name(file, set(specs[0].quality))] = file
    else:
        raise ConfigError("say what to evaluate: --pairs FILE (with --embeddings/--embedder and --quality/--scorer), "
                          "--spec FILE or --benchmarks DIR...")
    if embeddings and embedder:
        raise ConfigError("give --embeddings or --embedder, not both")
    if save_embeddings and (len(specs) != 1 or not embedder):
        raise ConfigError("--save-embeddings keeps embeddings computed with --embedder for one dataset")

    from synfiqa.config import device_problem

    problem = device_problem(device)
    if problem:  # before any file is read
        raise ConfigError(f"--device {problem}")
    models = _Models(embedder, scorers, aligned, detector, device)
    results = []
    for dataset in specs:
        pair_list = load_pairs(dataset)
        table = load_embeddings(dataset)
        qualities = load_qualities(dataset)
        if table is None and not embedder:
            where = " (or put embeddings.npz in its folder)" if benchmark_dirs else ""
            raise ConfigError(f"dataset {dataset.name}: no embeddings: give --embeddings FILE.npz or --embedder "
                              f"NAME|FILE{where}")
        if table is None or models.scorers:
            items = models.items(pair_list, dataset)
            if table is None:
                table = models.embeddings(pair_list, items, batch_size, progress)
                if save_embeddings:
                    write_embeddings(save_embeddings, table.names, table.vectors)
            for label, scorer in models.scorer_list():
                qualities[quality_method_name(Path(label), set(qualities))] = models.quality(
                    pair_list, items, scorer, label, batch_size, progress)
        if not qualities:
            where = " (or put quality files in its quality/ folder)" if benchmark_dirs else ""
            raise ConfigError(f"dataset {dataset.name}: no quality method: give --quality FILE or --scorer MODEL{where}")
        results.append(evaluate_dataset(dataset.name, pair_list, table, qualities, protocol, fmr_targets,
                                        discard_limit, subtract_best, tie_rule=tie_rule,
                                        threshold_rule=threshold_rule, quality_sort=quality_sort))

    if as_json:
        click.echo(json.dumps(report.to_json(results, curves=curves), indent=2))
    else:
        click.echo(report.to_markdown(results))
    if csv_path:
        _write(csv_path, report.to_csv(results))
    if markdown_path:
        _write(markdown_path, report.to_markdown(results))
    if plot_path:
        from synfiqa.stages.s8_evaluate.plot import plot_edc

        plot_edc(results, plot_path, recognition=embedder or (Path(embeddings).name if embeddings else None))
    for note in report.warnings_of(results):
        click.echo(f"warning: {note}", err=True)


class _Models:
    """The embedder, FIQA models and detector, built once and only when a dataset needs them."""

    def __init__(self, embedder: str | None, scorers: tuple[str, ...], aligned: bool, detector: str, device: str):
        self.embedder_spec, self.scorers, self.aligned = embedder, list(scorers), aligned
        self.detector_name, self.device = detector, device
        self._built: dict = {}

    def _registry(self):
        from synfiqa.registry import get_registry

        return get_registry()

    def items(self, pair_list, dataset):
        from synfiqa.stages.s8_evaluate.spec import dataset_items

        return dataset_items(pair_list, dataset.images)

    def crop_maker(self, pair_list):
        from synfiqa.faces import CropMaker

        aligned = self.aligned or pair_list.encoded_images is not None
        if aligned:
            return CropMaker(True)
        if "detector" not in self._built:
            from synfiqa.context import create_on_device
            from synfiqa.models import resolve_device

            self._built["detector"] = create_on_device(self._registry(), "detector", self.detector_name,
                                                       str(resolve_device(self.device)))
        return CropMaker(False, self._built["detector"])

    def embeddings(self, pair_list, items, batch_size, progress):
        from synfiqa.batch_inference import resolve_model
        from synfiqa.stages.s8_evaluate.spec import compute_embeddings

        if "embedder" not in self._built:
            self._built["embedder"] = resolve_model("embedder", self.embedder_spec, self.device, self._registry())[0]
        return compute_embeddings(pair_list, items, self.crop_maker(pair_list), self._built["embedder"],
                                  batch_size, progress)

    def scorer_list(self):
        from synfiqa.batch_inference import resolve_model

        for spec in self.scorers:
            if ("scorer", spec) not in self._built:
                self._built[("scorer", spec)] = resolve_model("fiqa", spec, self.device, self._registry())
            model, label = self._built[("scorer", spec)]
            yield label, model

    def quality(self, pair_list, items, scorer, label, batch_size, progress):
        from synfiqa.stages.s8_evaluate.spec import compute_quality

        return compute_quality(pair_list, items, self.crop_maker(pair_list), scorer, label, batch_size, progress)


def _write(path: str, text: str) -> None:
    from synfiqa.store import write_text_atomic

    write_text_atomic(path, text)


COMMANDS = [evaluate]
