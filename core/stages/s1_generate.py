"""`synfiqa generate`: write a generator's identities as an identity folder, resumably.

    OUT/<identity>/<image>        one sub-folder per identity (what the folder generator reads)
    OUT/generated.jsonl           one manifest row per image, appended as images are written
    OUT/.synfiqa-generate.json    the generator, its parameters and the seed

A generator that can sample given indices (`generate_indices(indices, seed)`, images
seeded per index) is resumed image by image: an index whose image and manifest row both
exist is not generated again. Other generators are listed with `identities(n, seed)` and
their images copied.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from synfiqa.generation import Identity, SourceImage
from synfiqa.images import encode_png
from synfiqa.protocols import is_generative
from synfiqa.progress import progress as progress_bar
from synfiqa.store import StageFolder, append_rows, read_rows, write_atomic

MANIFEST = "generated.jsonl"
MARKER = ".synfiqa-generate.json"


def read_manifest(out: Path) -> dict[str, dict]:
    return read_rows(out / MANIFEST)


def write_generated(generator, name: str, params: dict, n: int, seed: int, out: str | Path,
                    progress: bool | None = None, echo=print) -> dict:
    out = Path(out)
    with StageFolder(out, marker=MARKER, what="generation") as folder:
        if folder.claim({"generator": name, "params": params, "seed": seed}):
            echo(f"resuming the generation in {out}")
        return _write(generator, name, n, seed, out, progress, echo)


def _write(generator, name: str, n: int, seed: int, out: Path, progress, echo) -> dict:
    rows = read_manifest(out)
    bar = progress_bar(total=n, enabled=progress, description="generate", unit="img")
    written = 0
    if is_generative(generator):
        def path_of(index):
            return f"{generator.identity_name(index)}/0.png"

        done = {i for i in range(n) if path_of(i) in rows and (out / path_of(i)).is_file()}
        bar.update(len(done))
        todo = [i for i in range(n) if i not in done]
        for indices, images in generator.generate_indices(todo, seed):
            batch_rows = []
            for index, pixels in zip(indices, images):
                write_atomic(out / path_of(index), encode_png(pixels))
                batch_rows.append({"identity": generator.identity_name(index), "path": path_of(index),
                                   "height": int(pixels.shape[0]), "width": int(pixels.shape[1]),
                                   **generator.metadata(seed, index)})
            append_rows(out / MANIFEST, batch_rows)   # rows after images: a row always has its image
            bar.update(len(indices))
            written += len(indices)
    else:
        batch_rows = []
        for identity in generator.identities(n, seed):
            for source in identity.images:
                path = f"{identity.name}/{source.key}"
                if path in rows and (out / path).is_file():
                    continue
                target = out / path
                target.parent.mkdir(parents=True, exist_ok=True)
                if source.path is not None:
                    shutil.copyfile(source.path, target)
                else:
                    target = target.with_suffix(".png")
                    path = f"{identity.name}/{target.name}"
                    write_atomic(target, encode_png(source.load()))
                batch_rows.append({"identity": identity.name, "path": path, "generator": name, "seed": seed,
                                   "source": str(source.path) if source.path else None})
                written += 1
            bar.update(1)
        append_rows(out / MANIFEST, batch_rows)
    bar.close()
    total = len(read_manifest(out))
    echo(f"generate: wrote {written} images ({total} in {out}, manifest {MANIFEST})")
    return {"written": written, "total": total}


def generate_into(generator, name: str, params: dict, seed: int, target: Path, progress, echo) -> list[Identity]:
    """A generative model's identities for a build: written to `target` (lossless PNG, one
    sub-folder per identity, as `synfiqa generate` writes them) as they are sampled, so a
    killed build keeps every finished batch and a resumed one samples only what is missing;
    the build then reads them back like any identity folder."""
    write_generated(generator, name, params, generator.count, seed, target, progress, echo)
    names = [generator.identity_name(i) for i in range(generator.count)]
    return [Identity(n, (SourceImage("0.png", path=target / n / "0.png"),)) for n in names]

