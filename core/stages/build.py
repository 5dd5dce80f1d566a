"""The build: identities -> detect + align -> references and degraded samples ->
per-identity annotation -> dataset-wide annotation -> the SynFIQA layout.

The per-identity work is a pure function of (config, identity): its record is written
last and atomically, so a killed build resumes at the first identity without one and
ends byte-identical to an uninterrupted build. Where that work runs (this process, or Ray
workers) is the engine's choice (core/stages/engines.py); everything else happens here.
"""
from __future__ import annotations

import io
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from synfiqa import layout, protocols
from synfiqa.annotation import YAW_AXIS, SampleTable
from synfiqa.config import component_params, fingerprint, to_toml, validate_config
from synfiqa.context import RunContext
from synfiqa.degradation import DegradationChain
from synfiqa.errors import BadInputError, ConfigError
from synfiqa.images import encode_jpeg
from synfiqa.layout import identity_folder_name, quality_key
from synfiqa.progress import progress as progress_bar
from synfiqa.registry import Registry, get_registry
from synfiqa.stages.engines import LocalEngine, report_lines
from synfiqa.stages.s1_generate import generate_into
from synfiqa.stages.s2_filter import build_filters, filter_for_build
from synfiqa.stages.s3_synthesize import draw_plan, identity_input, load_bank, synthesize
from synfiqa.stages.s4_degrade import degrade_crops
from synfiqa.stages.s5_annotate import identity_scores, label_order_lines, labels_as_written, load_annotators, score_dataset
from synfiqa.stages.s9_report import report_after_build
from synfiqa.timing import StageTimer
from synfiqa.weights import MissingAssets
from synfiqa.store import RecordSet, StageFolder, write_atomic, write_error, write_group, write_text_atomic


@dataclass
class Pipeline:
    """The resolved components of a build; building it checks every name and parameter
    and loads every model, so a bad config or checkpoint fails before anything is written."""

    config: dict
    registry: Registry = field(default_factory=get_registry)
    timer: StageTimer = field(default_factory=StageTimer)   # where this run's time goes (printed, not stored)

    def __post_init__(self):
        config, registry = self.config, self.registry
        self.context = RunContext(config, registry)
        missing = MissingAssets()   # every component is tried, then one error names every missing asset
        generator_name = config["generate"]["generator"]
        with missing.need(f"generate.generator {generator_name!r}"):
            self.generator = self.context.create("generator", generator_name,
                                                 component_params(config, "generate", generator_name))
        backend_name = config["stage2"]["backend"]
        with missing.need(f"stage2.backend {backend_name!r}"):
            self.backend = self.context.create("stage2-backend", backend_name,
                                               component_params(config, "stage2", backend_name))
        self.bank = load_bank(config)
        self.chain = DegradationChain.from_config(config, registry)
        self.annotators, self.unavailable = load_annotators(config, self.context, missing)
        with missing.need("models.detector"):
            self.detector = self.context.model("detector")
        with missing.need("models.pose"):
            self.pose = self.context.model("pose")
        self._try_filter_models(missing)
        missing.raise_if_any()
        self.plugins = self._plugin_versions()

    def _try_filter_models(self, missing: MissingAssets) -> None:
        """The filter chain's models, tried now so that their missing weights join the one error;
        the filters are made again when they run."""
        build_filters(self.config["filter"]["chain"], self.config, self.registry, missing)

    def _plugin_versions(self) -> dict[str, str]:
        def owner(kind, name):
            component = self.registry.get(kind, name)
            return f"{name} ({component.distribution} {component.version})"

        config = self.config
        versions = {"generator": owner("generator", config["generate"]["generator"]),
                    "stage2": owner("stage2-backend", config["stage2"]["backend"])}
        versions["degradations"] = ", ".join(owner("degradation", n) for n in config["degrade"]["chain"])
        versions["annotators"] = ", ".join(owner("annotator", n) for n, _ in self.annotators)
        for kind in ("detector", "embedder", "pose"):
            versions[kind] = owner(kind, self.context.model_name(kind))
        return versions

    # ------------------------------------------------------------ per identity

    def build_identity(self, identity, out: Path) -> dict:
        """Stage 2 (plan, backend, faces), Stage 4 (degrade) and the per-identity part of
        Stage 5 (annotate) for one identity; its manifest rows."""
        config, run, timer = self.config, self.config["run"], self.timer
        size = run["image_size"]
        with timer("detect+align"):
            inputs, rows = identity_input(identity, self.detector, self.pose, size, run["alignment"])
        if not inputs.photos:
            return {"identity": identity.name, "status": "skipped", "reason": "no-usable-photo", "rows": rows}
        with timer("plan"):
            plan = draw_plan(config, identity.name, self.bank)
        references, degraded, skipped = synthesize(self.backend, inputs, plan, self.context, self.detector,
                                                   self.pose, size, config["stage2"]["backend"],
                                                   store=out / layout.STAGE2_IMAGES / identity.name, timer=timer,
                                                   alignment=run["alignment"])
        rows += skipped
        if not references:
            return {"identity": identity.name, "status": "skipped", "reason": "no-reference", "rows": rows}
        quality = run["jpeg_quality"]

        def save(name: str, pixels: np.ndarray) -> np.ndarray:
            with timer("write"):
                data = encode_jpeg(pixels, quality, run["jpeg_subsampling"])
                write_atomic(layout.image_path(out, identity.name, name), data)
                # score exactly what a reader of the dataset gets back
                return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

        stored_references = []
        for face in references:
            k = face.rendered.index
            stored_references.append(save(layout.reference_name(k), face.crop))
            rows.append({"identity": identity.name, "index": k, "role": "reference", "status": "ok",
                         **layout.image_fields(quality_key(identity.name, layout.reference_name(k))),
                         "source": face.rendered.source, "params": {YAW_AXIS: face.abs_yaw},
                         **_controls(face), **_notes(face)})
        if not degraded:
            return {"identity": identity.name, "status": "ok", "rows": rows}
        reference_tensor = torch.from_numpy(np.stack(stored_references)).permute(0, 3, 1, 2).contiguous()

        indices = [face.rendered.index for face in degraded]
        sampled = self.chain.sample(run["seed"], identity.name, indices)
        params = self.chain.records(sampled, len(indices))
        with timer("degrade"):
            images = self._degrade(degraded, sampled)
        stored = [save(layout.sample_name(k), pixels) for k, pixels in zip(indices, images)]
        sample_tensor = torch.from_numpy(np.stack(stored)).permute(0, 3, 1, 2).contiguous()

        with timer("annotate"):
            scores = identity_scores(self.annotators, sample_tensor, reference_tensor, self.context)
        reference_sources = {face.rendered.source for face in references if face.rendered.source}
        for i, (face, record) in enumerate(zip(degraded, params)):
            k = face.rendered.index
            circular = {"circular": True} if face.rendered.source in reference_sources else {}
            rows.append({"identity": identity.name, "index": k, "role": "degraded", "status": "ok",
                         **layout.image_fields(quality_key(identity.name, layout.sample_name(k))),
                         "source": face.rendered.source, "params": {YAW_AXIS: face.abs_yaw, **record},
                         "scores": {key: values[i] for key, values in scores.items()},
                         **_controls(face), **circular, **_notes(face)})
        return {"identity": identity.name, "status": "ok", "rows": rows}

    def _degrade(self, degraded, sampled) -> np.ndarray:
        """Stage 4 on the identity's samples, in the order stage2.degrade_on says."""
        config, run = self.config, self.config["run"]
        size = run["image_size"]
        if config["stage2"]["degrade_on"] == "detector-crop":
            return degrade_crops(self.chain, np.stack([f.detector_crop for f in degraded]),
                                 np.stack([f.detector_landmarks for f in degraded]), sampled, run["batch_size"],
                                 to_aligned=np.stack([f.crop_to_aligned for f in degraded]), aligned_size=size)
        return degrade_crops(self.chain, np.stack([f.crop for f in degraded]),
                             np.stack([f.landmarks for f in degraded]), sampled, run["batch_size"])

    # ------------------------------------------------------------ dataset wide

    def finalize(self, records: list[dict]) -> tuple[list[dict], dict[str, float], dict]:
        rows = [row for record in records for row in record["rows"]]
        degraded = [row for row in rows if row["role"] == "degraded" and row["status"] == "ok"]
        table = SampleTable(
            paths=[row["path"] for row in degraded],
            params=[row["params"] for row in degraded],
            scores={key: np.array([row["scores"][key] for row in degraded])
                    for key in (degraded[0]["scores"] if degraded else {})},
            severity_axes=self.chain.severity_axes,
            unavailable=set(self.unavailable),
        )
        annotated = score_dataset(self.annotators, self.unavailable, table, self.context)
        for i, row in enumerate(degraded):
            row["scores"] = {key: float(values[i]) for key, values in table.scores.items()}
            if annotated.missing:
                row["partial"] = annotated.partial
        for row in rows:
            row["plugins"] = self.plugins
        quality = {}
        if annotated.label is not None:
            for row in degraded:
                # the file name: the path is always "data/<identity>/<name>" (layout.relative_path)
                quality[quality_key(row["identity"], row["path"].rsplit("/", 1)[-1])] = row["scores"][annotated.label]
        quality, label_order = labels_as_written(self.config, quality)
        skipped = Counter(row["reason"] for row in rows if row["status"] == "skipped" and row["role"] == "source")
        images_skipped = Counter(f"{row['role']}: {row['reason']}" for row in rows
                                 if row["status"] == "skipped" and row["role"] != "source")
        noted = sorted({(row["identity"], row["source"]) for row in rows if row.get("notes")})
        run = self.config["run"]
        summary = {
            "identities": len(records),
            "identities_skipped": sum(1 for r in records if r["status"] != "ok"),
            "stage2_backend": self.config["stage2"]["backend"],
            "planned_per_identity": {"references": run["references"], "degraded": run["degraded"]},
            "references": sum(1 for row in rows if row["role"] == "reference" and row["status"] == "ok"),
            "degraded": len(degraded),
            "photos_skipped": dict(sorted(skipped.items())),
            "images_skipped": dict(sorted(images_skipped.items())),
            "samples_circular": sum(1 for row in degraded if row.get("circular")),
            "identities_circular": len({row["identity"] for row in degraded if row.get("circular")}),
            "photos_with_notes": len(noted),
            "unavailable_annotators": self.unavailable,
            "quality_score": annotated.label,
            "missing_domains": annotated.missing,
            "severity_axes": [YAW_AXIS, *self.chain.severity_axes],
            **label_order,
        }
        return rows, quality, summary


def _notes(face) -> dict:
    return {"notes": list(face.notes)} if face.notes else {}


def _controls(face) -> dict:
    """The plan entry's control.* columns, when the backend followed the plan."""
    spec = face.rendered.spec
    return spec.to_record() if spec is not None else {}


def check_input_and_output(pipeline: "Pipeline", out: Path) -> None:
    """A build reading a folder must not write into it (a second run would read the first
    run's crops as an identity), nor into a folder around it (--overwrite removes data/)."""
    source = protocols.input_folder(pipeline.generator)
    if source is None:
        return
    source, target = Path(source).resolve(), Path(out).resolve()
    if target == source or target.is_relative_to(source):
        raise ConfigError(f"--out {out} lies inside the input folder {source}: a later run would read the "
                          "build's own images as photos. Choose an --out outside it.")
    if source.is_relative_to(target):
        raise ConfigError(f"the input folder {source} lies inside --out {out}: choose an --out that does not hold "
                          "your photos.")


def build(config: dict, out: str | Path, *, overwrite: bool = False, shard: tuple[int, int] | None = None,
          progress: bool | None = None, echo=print, registry: Registry | None = None,
          stop_after: int | None = None, engine=None) -> dict:
    """Run the build; returns the summary (with the engine's report under "engine", which
    summary.json does not hold). `shard=(i, n)` does the per-identity work of every n-th
    identity starting at i and leaves the dataset-wide step to a run without shard. `engine`
    (core/stages/engines.py; default: this process) runs the per-identity work. `stop_after`
    ends after that many identities were built (tests use it to interrupt)."""
    out = Path(out)
    engine = engine or LocalEngine()
    registry = registry or get_registry()
    validate_config(config, registry)  # the CLI did already; this covers callers of the Python API
    started = time.perf_counter()
    timer = StageTimer()
    with timer("load models"):
        pipeline = Pipeline(config, registry, timer)
    check_input_and_output(pipeline, out)
    # a broken degradation plugin is named before anything is written; the probe is the ops' first
    # call, so where their cache lacks a build for these sources (a new machine or checkout) the
    # JIT compile (tens of seconds, in ninja's processes) happens here and is named as such
    compiled_before = _compiled_ops_stamp()
    wall, cpu = time.perf_counter(), time.process_time()
    pipeline.chain.probe(config["run"]["image_size"])
    timer.add("compile ops" if _compiled_ops_stamp() != compiled_before else "check chain",
              time.perf_counter() - wall, time.process_time() - cpu)
    identities = None  # a generative Stage 1 makes them once the folder is claimed
    if not protocols.is_generative(pipeline.generator):  # listed before anything is written: a bad name writes nothing
        identities = pipeline.generator.identities(None, config["run"]["seed"])
        for identity in identities:
            identity_folder_name(identity.name)
    engine.open()  # an unreachable cluster is named before anything is written
    try:
        result = _build_in_folder(pipeline, out, overwrite, shard, progress, echo, stop_after, engine, identities)
    finally:
        engine.close()
    if engine.name == "local":
        echo(f"where this run's time went ({time.perf_counter() - started:.1f} s):")
        lines = timer.lines(time.perf_counter() - started)
    else:  # the workers' stages ran side by side: their seconds add up to more than the run's
        echo(f"where this run's time went ({time.perf_counter() - started:.1f} s; the per-identity stages "
             "summed over every worker, share of all the time recorded):")
        lines = timer.lines()
    for line in lines:
        echo(line)
    return result


def _compiled_ops_stamp() -> float | None:
    """When the compiled CPU ops were last built (None: not built for these sources)."""
    from synfiqa.ops import loader

    library = loader.cached_library("cpu")
    return library.stat().st_mtime if library is not None else None


def _build_in_folder(pipeline, out, overwrite, shard, progress, echo, stop_after, engine, identities) -> dict:
    """Claim the folder, generate (a generative Stage 1), then the identities and the dataset-wide step."""
    config = pipeline.config
    with build_folder(out) as folder:
        resumed = folder.claim({"fingerprint": fingerprint(config)}, overwrite)
        try:
            write_text_atomic(out / layout.CONFIG, to_toml(config))
        except OSError as error:
            raise write_error(out, error) from None
        if resumed:
            echo(f"resuming the build in {out}")
        records = RecordSet(out / layout.IDENTITY_RECORDS, root=out)
        if identities is None:  # a generative Stage 1 runs here, on the driver, whatever the engine
            name = config["generate"]["generator"]
            identities = generate_into(pipeline.generator, name, component_params(config, "generate", name),
                                       config["run"]["seed"], out / layout.GENERATED, progress, echo)
        return _build_identities(pipeline, out, records, identities, shard, progress, echo, stop_after, engine)


def build_folder(out: Path) -> StageFolder:
    """The build's output folder: owned by the config's fingerprint; resuming another config's
    build takes that build's own config.toml."""
    def resume_hint(folder: StageFolder) -> str:
        written = folder.root / layout.CONFIG
        return (f" To resume that build: synfiqa build --out {folder.root} --config {written}."
                if written.is_file() else "")

    return StageFolder(out, marker=layout.BUILD_MARKER, what="build", owned=layout.OWNED_ENTRIES,
                       resume_hint=resume_hint, settings="another config")


def _build_identities(pipeline, out, records, identities, shard, progress, echo, stop_after, engine) -> dict:
    config = pipeline.config
    # filter.chain: removed identities get a record with the filter's reason, and no work
    kept = filter_for_build(config, pipeline.context, identities, out / ".synfiqa" / "filter.json", records, echo)
    mine = kept if shard is None else kept[shard[0]::shard[1]]
    broken = [identity.name for identity in mine if records.has(identity.name) and not records.is_complete(identity.name)]
    todo = [identity for identity in mine if not records.has(identity.name) or identity.name in broken]
    echo(f"identities: {len(mine)} ({len(mine) - len(todo)} already built)")
    if broken:
        shown = ", ".join(broken[:5]) + (", ..." if len(broken) > 5 else "")
        echo(f"rebuilding {len(broken)} identities whose recorded files are missing or changed: {shown}")
    bar = progress_bar(total=len(todo), enabled=progress, description="identities", unit="id")
    built = engine.run(pipeline, out, todo)
    try:
        for count, (identity, record) in enumerate(built, start=1):
            with pipeline.timer("write"):  # the driver writes every record, whichever engine built it
                records.write(identity.name, record)
            bar.update(1)
            if stop_after is not None and count >= stop_after:
                return {"stopped_after": count, "engine": engine.report()}
    finally:
        built.close()  # an engine's workers stop here, also when a record cannot be written
        bar.close()
    report = engine.report()
    for line in report_lines(report):
        echo(line)
    if shard is not None:
        missing = [i.name for i in identities if not records.has(i.name)]
        echo(f"shard {shard[0]}/{shard[1]} done; {len(missing)} identities still missing from other shards")
        return {"shard": list(shard), "missing": len(missing), "engine": report}
    incomplete = [i.name for i in identities if not records.is_complete(i.name)]
    if incomplete:  # another shard's identity lost a file since it was built
        raise BadInputError("incomplete-build", f"{len(incomplete)} identities have missing or changed files "
                            f"({', '.join(incomplete[:5])}); run the build again (or the shard that owns them)")
    with pipeline.timer("dataset-wide"):
        rows, quality, summary = pipeline.finalize([records.read(identity.name) for identity in identities])
        write_dataset_files(out, rows, quality, summary)
    for line in stage_summary(config, summary, protocols.skipped_files(pipeline.generator),
                              summary["missing_domains"]):
        echo(line)
    echo(f"wrote {out / layout.QUALITY_SCORES} ({len(quality)} scores) and {layout.MANIFEST}")
    with pipeline.timer("report"):  # s9: OUT/report/index.html; prints its path and the flagged identities
        report_after_build(out, echo)
    return {**summary, "engine": report}


MANIFEST_CHUNK_ROWS = 10_000


def write_dataset_files(out: Path, rows: list[dict], quality: dict[str, float], summary: dict) -> None:
    """manifest.jsonl, Quality-Scores.txt and summary.json, all or none: never a manifest
    without its scores. The manifest goes out in chunks of rows: at 1.1 M rows its text is
    about 0.5 GB, and held whole (with its encoded copy) it was most of the step's memory."""
    def manifest_chunks():
        for start in range(0, len(rows), MANIFEST_CHUNK_ROWS):
            yield "".join(json.dumps(row, sort_keys=True) + "\n"
                          for row in rows[start:start + MANIFEST_CHUNK_ROWS]).encode()

    write_group({
        out / layout.MANIFEST: manifest_chunks(),
        out / layout.QUALITY_SCORES: layout.format_quality_scores(quality).encode(),
        out / layout.SUMMARY: (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode(),
    }, out)


def stage_summary(config: dict, summary: dict, skipped_files: list, unavailable: dict) -> list[str]:
    """One line per stage, for the end of a build."""
    built = summary["identities"] - summary["identities_skipped"]
    skipped = sum(summary["photos_skipped"].values())
    reasons = ", ".join(f"{count} {reason}" for reason, count in summary["photos_skipped"].items())
    images = ", ".join(f"{count} {reason}" for reason, count in summary["images_skipped"].items())
    planned = summary["planned_per_identity"]
    lines = [
        f"generate: {summary['identities']} identities ({config['generate']['generator']})"
        + (f", {len(skipped_files)} non-image files ignored" if skipped_files else ""),
        f"detect+align: {built} identities with usable photos, {skipped} photos skipped"
        + (f" ({reasons})" if reasons else ""),
        *([f"  {summary['photos_with_notes']} photos have notes (several faces, upside down, implausible landmarks): "
           "see 'notes' in manifest.jsonl"] if summary.get("photos_with_notes") else []),
        f"stage 2 ({summary['stage2_backend']}): {summary['references']} references and {summary['degraded']} samples "
        f"(planned per identity: {planned['references']} and {planned['degraded']})"
        + (f"; images without a face: {images}" if images else ""),
        *([f"  {summary['identities_circular']} identities have a single usable photo: their {summary['samples_circular']} "
           "samples are degraded copies of their reference (rows marked 'circular' in manifest.jsonl; their fr is "
           "inflated)"] if summary["identities_circular"] else []),
        f"degrade: {summary['degraded']} degraded samples ({' -> '.join(config['degrade']['chain']) or 'no degradation'})",
        f"annotate: {', '.join(n for n in config['annotate']['chain'] if n not in unavailable)}",
    ]
    for name, why in unavailable.items():
        lines.append(f"  annotator {name!r} unavailable ({why}); every score is marked 'computed without {name}'")
    return lines + label_order_lines(summary)
