"""Stage 2: per identity, a plan of R reference and D degraded specs (``plan``), and the
Stage-2 backend that turns it into faces (the contract: synfiqa.synthesis).

    identity photos -> detect + align each once (IdentityInput)
    plan            -> R + D specs from the bank (stage2.bank), seeded per (run seed, identity, index)
    backend.render  -> one image per planned entry (Rendered)
    each image      -> its face (the backend's, or detected) -> Face: the clean aligned crop, its
                       |yaw|, and the detector's square crop that a degraded sample is degraded on

The detector crop is the original's ``FaceDetector(output_shape=(112, 112), square_bbox=True)``:
the square with the side of the detected box's longer side, centred on the box, resized to
``run.image_size``; its landmarks go with it, so that the degraded crop is aligned afterwards
with the same five points (``Face.crop_to_aligned``).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from synfiqa.align import ALIGNMENTS, align_face, apply_transform, template_transform, warp_affine
from synfiqa.errors import BadInputError, PluginError
from synfiqa.faces import detect_and_align
from synfiqa.images import decode_image, encode_png
from synfiqa.protocols import stores_images
from synfiqa.store import append_rows, read_rows, write_atomic
from synfiqa.timing import NoTimer, StageTimer
from synfiqa.synthesis import IdentityInput, IdentityPhoto, Plan, Rendered, sharpness
from synfiqa.stages.s3_synthesize.plan import DecaBank, SyntheticBank, plan_identity


#: the canvas around the detector's square, in crop sides per side (see detector_crop)
DETECTOR_CROP_MARGIN = 0.3


@dataclass(frozen=True)
class Face:
    """One rendered image after its face was found."""

    rendered: Rendered
    crop: np.ndarray              # the clean ArcFace-aligned crop (size x size x 3 uint8)
    landmarks: np.ndarray         # [5, 2] in `crop` pixels
    abs_yaw: float                # measured on `crop`
    detector_crop: np.ndarray     # the detector's square crop in its canvas (detector_crop), uint8
    detector_landmarks: np.ndarray  # [5, 2] in `detector_crop` pixels
    crop_to_aligned: np.ndarray   # 2x3: detector-crop pixels -> aligned-crop pixels
    notes: tuple[str, ...] = ()


def load_bank(config: dict):
    """The bank stage2.bank names: the built-in synthetic bank or a DICT_DECA_DEG_REF.json."""
    bank = config["stage2"]["bank"]
    return SyntheticBank() if bank == "synthetic" else DecaBank.from_json(Path(bank).expanduser())


def draw_plan(config: dict, identity: str, bank) -> Plan:
    run = config["run"]
    specs = plan_identity(identity, run["seed"], run["references"], run["degraded"], bank,
                          faithful=config["stage2"]["faithful"])
    return Plan(references=tuple(specs[: run["references"]]), degraded=tuple(specs[run["references"]:]))


def measure_abs_yaw(pose, crop: np.ndarray, landmarks: np.ndarray) -> float:
    yaw = pose.estimate(torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None],
                        torch.from_numpy(np.asarray(landmarks, dtype=np.float64))[None])[0, 0]
    return abs(float(yaw))


def identity_input(identity, detector, pose, size: int,
                   alignment: str = ALIGNMENTS[0]) -> tuple[IdentityInput, list[dict]]:
    """The identity's usable photos (detected, aligned as `alignment` says, |yaw| and sharpness
    measured) and a skipped row for each photo without a usable face."""
    photos, skipped = [], []
    for source in identity.images:
        try:
            found = detect_and_align(source.load(), detector, size, source.key, alignment)
        except BadInputError as error:
            skipped.append({"identity": identity.name, "role": "source", "source": source.key,
                            "status": "skipped", "reason": error.reason, "detail": str(error)})
            continue
        photos.append(IdentityPhoto(key=source.key, image=found.image, face=found.face, crop=found.crop,
                                    abs_yaw=measure_abs_yaw(pose, found.crop, found.landmarks),
                                    sharpness=sharpness(found.crop), notes=found.notes))
    return IdentityInput(identity.name, tuple(photos), dict(identity.metadata)), skipped


def detector_square(face) -> tuple[float, float, float]:
    """(centre x, centre y, side) of the detector's square, as the original's
    ``FaceDetector(square_bbox=True, pad_bbox_ratio=0)``: the box's top is raised to the
    forehead when the box cuts it (to ``left eye y - |left eye y - left mouth y|``), then the
    shorter side is widened equally on both sides to the longer one."""
    x1, y1, x2, y2 = (float(v) for v in face.box)
    points = np.asarray(face.landmarks, dtype=np.float64)
    y1 = min(y1, points[0, 1] - abs(points[0, 1] - points[3, 1]))
    return (x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1, 1.0)


def detector_crop(image: np.ndarray, face, size: int,
                  margin: float = DETECTOR_CROP_MARGIN) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(crop, its landmarks, the 2x3 image -> crop matrix): the detector's square
    (:func:`detector_square`) scaled to `size` pixels, as the original's 112 crop, inside a
    canvas of `margin` * `size` more pixels on every side at the same scale. The original
    degrades the bare square and its aligned sample then has black corners where the ArcFace
    crop reaches outside the square (a cue of "degraded" that references never show); the
    canvas gives alignment real pixels there, degraded like the rest, while a face keeps the
    size in pixels the degradations were designed for."""
    cx, cy, side = detector_square(face)
    scale = size / side
    pad = int(round(margin * size))
    full = size + 2 * pad
    matrix = np.array([[scale, 0.0, full / 2 - scale * cx], [0.0, scale, full / 2 - scale * cy]])
    tensor = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1)[None]
    crop = warp_affine(tensor, torch.from_numpy(matrix)[None], (full, full))[0].permute(1, 2, 0).numpy()
    return np.ascontiguousarray(crop), apply_transform(matrix, face.landmarks), matrix


class FaceFinder:
    """Finds the face of each rendered image of one identity: the backend's face when it gives
    one, else the detector's. The same photo and face (a folder backend yields a photo many
    times) are aligned and measured once."""

    def __init__(self, identity: IdentityInput, detector, pose, size: int, alignment: str = ALIGNMENTS[0]):
        self.detector, self.pose, self.size, self.alignment = detector, pose, size, alignment
        self.photo_notes = {photo.key: photo.notes for photo in identity.photos}
        self.known = {(id(photo.image), id(photo.face)): photo for photo in identity.photos}
        self.memo: dict = {}

    def __call__(self, rendered: Rendered, name: str) -> Face:
        key = (id(rendered.image), id(rendered.face)) if rendered.face is not None else None
        if key is not None and key in self.memo:
            face = self.memo[key]
            return replace(face, rendered=rendered, notes=(*self.photo_notes.get(rendered.source, ()),
                                                           *rendered.notes))
        size = self.size
        if rendered.face is None:
            found = detect_and_align(rendered.image, self.detector, size, name, self.alignment)
            image, detected, crop, landmarks, notes = found.image, found.face, found.crop, found.landmarks, found.notes
            abs_yaw = measure_abs_yaw(self.pose, crop, landmarks)
        else:
            image, detected = rendered.image, rendered.face
            photo = self.known.get(key)
            if photo is not None:
                crop, abs_yaw = photo.crop, photo.abs_yaw
                landmarks = apply_transform(template_transform(detected.landmarks, size, self.alignment),
                                            detected.landmarks)
            else:
                crop, matrix = align_face(image, detected.landmarks, size, self.alignment)
                landmarks = apply_transform(matrix, detected.landmarks)
                abs_yaw = measure_abs_yaw(self.pose, crop, landmarks)
            notes = self.photo_notes.get(rendered.source, ())
        square, square_landmarks, _ = detector_crop(image, detected, size)
        to_aligned = template_transform(square_landmarks, size, self.alignment)
        face = Face(rendered, crop, landmarks, abs_yaw, square, square_landmarks, to_aligned,
                    (*notes, *rendered.notes))
        if key is not None:
            self.memo[key] = face
        return face


class RenderedStore:
    """A backend's images of one identity, stored as they come (``stores_images``): one PNG per
    image and a JSONL row after it (its source and notes), so that a killed build's rerun
    reuses every image already made. Lossless, so a reused image is the one first made."""

    ROWS = "rendered.jsonl"

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    @staticmethod
    def name(role: str, index: int) -> str:
        return f"{role}-{index}.png"

    def load(self, plan: Plan) -> list[Rendered]:
        rows = read_rows(self.folder / self.ROWS, key="name")
        found = []
        for spec in plan:
            name = self.name(spec.role, spec.index)
            row, path = rows.get(name), self.folder / name
            if row is None or not path.is_file():
                continue
            try:
                image = decode_image(path.read_bytes(), str(path))
            except BadInputError:   # a torn or damaged image: made again
                continue
            found.append(Rendered(spec.role, spec.index, image, source=row["source"], spec=spec,
                                  notes=tuple(row.get("notes", ()))))
        return found

    def keep(self, rendered: Rendered) -> None:
        name = self.name(rendered.role, rendered.index)
        write_atomic(self.folder / name, encode_png(rendered.image))
        append_rows(self.folder / self.ROWS, [{"name": name, "source": rendered.source,
                                               "notes": list(rendered.notes)}])


def synthesize(backend, identity: IdentityInput, plan: Plan, context, detector, pose, size: int,
               backend_name: str, store: Path | None = None,
               timer: StageTimer | None = None,
               alignment: str = ALIGNMENTS[0]) -> tuple[list[Face], list[Face], list[dict]]:
    """(reference faces, degraded faces, skipped rows), each list ordered by index. A rendered
    image outside the plan, or made twice, is the backend's bug (PluginError); one without a
    face is a skipped row (reason code of synfiqa.faces). With `store` and a backend that
    ``stores_images``, its images are kept there and reused (:class:`RenderedStore`). `timer`
    gets the backend's time as "generate" and the faces' as "faces"."""
    timer = timer or NoTimer()
    planned = {(spec.role, spec.index) for spec in plan}
    finder = FaceFinder(identity, detector, pose, size, alignment)
    faces: dict[tuple[str, int], Face] = {}
    skipped = []

    def take(rendered: Rendered) -> None:
        if not isinstance(rendered, Rendered):
            raise PluginError(f"stage-2 backend {backend_name!r} yielded {type(rendered).__name__}, "
                              "not synfiqa.synthesis.Rendered")
        slot = (rendered.role, rendered.index)
        if slot not in planned:
            raise PluginError(f"stage-2 backend {backend_name!r} made {rendered.role} {rendered.index}, which the "
                              f"plan of identity {identity.name!r} does not hold")
        if slot in faces or any(row["role"] == slot[0] and row["index"] == slot[1] for row in skipped):
            raise PluginError(f"stage-2 backend {backend_name!r} made {rendered.role} {rendered.index} of identity "
                              f"{identity.name!r} twice")
        name = f"{identity.name}/{rendered.role} {rendered.index}"
        try:
            faces[slot] = finder(rendered, name)
        except BadInputError as error:
            skipped.append({"identity": identity.name, "role": rendered.role, "index": rendered.index,
                            "source": rendered.source, "status": "skipped", "reason": error.reason,
                            "detail": str(error)})

    kept = RenderedStore(store) if store is not None and stores_images(backend) else None
    todo = plan
    if kept is not None:
        done = kept.load(plan)
        for rendered in done:
            take(rendered)
        made = {(r.role, r.index) for r in done}
        todo = Plan(tuple(s for s in plan.references if ("reference", s.index) not in made),
                    tuple(s for s in plan.degraded if ("degraded", s.index) not in made))
    if todo.references or todo.degraded:
        made = iter(backend.render(identity, todo, context))
        while True:
            with timer("generate"):
                rendered = next(made, None)
            if rendered is None:
                break
            if kept is not None and isinstance(rendered, Rendered) and (rendered.role, rendered.index) in planned:
                kept.keep(rendered)
            with timer("faces"):
                take(rendered)
    references = [faces[k] for k in sorted(faces) if k[0] == "reference"]
    degraded = [faces[k] for k in sorted(faces) if k[0] == "degraded"]
    return references, degraded, skipped
