"""The one path from a photo to an aligned face crop, used by every command that detects
faces (build, filter, degrade, score, evaluate), so a photo gets the same crop and, when it has
none, the same reason code everywhere. `detect_and_align` works on a decoded photo;
`CropMaker` reads an image item (a file, or encoded bytes) first, or takes it as an aligned crop.

    photo -> (too small for the detector?) -> detect -> the main face -> align to the
    ArcFace template -> (upside down? turn the photo and align again) -> FaceCrop

Reason codes of a photo without a crop (BadInputError.reason): those of reading it
(`missing-file`, `unreadable-image`, `corrupt-image`, `image-too-large`, `too-small`), then
`image-too-small` (smaller than the detector's minimum face), `detection-failed` (the
detector raised) and `no-face`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from synfiqa import protocols
from synfiqa.align import ALIGNMENTS, ARCFACE_TEMPLATE_112, align_face, apply_transform, upside_down
from synfiqa.errors import BadInputError
from synfiqa.images import ImageItem, decode_image, read_rgb
from synfiqa.models import DetectedFace, pick_main_face



CROP_SIZE = 112  # what CropMaker gives the models: the ArcFace template's size


@dataclass(frozen=True)
class FaceCrop:
    crop: np.ndarray             # size x size x 3 uint8, ArcFace-aligned
    landmarks: np.ndarray        # [5, 2] in crop pixels
    image: np.ndarray            # the photo the crop was cut from (turned upright when it was not)
    face: DetectedFace           # the main face, in `image` pixels
    notes: tuple[str, ...] = ()  # what a person should know (several faces, turned, implausible landmarks)


def min_face_size(detector) -> int:
    """The smallest face the detector finds (BaseDetector.min_face_size unless it says its own):
    the one minimum-size rule of every command."""
    return protocols.min_face_size(detector)


def face_notes(faces: list, face) -> tuple[str, ...]:
    """Notes on the detection of a photo: several faces (the largest was used), and landmark
    geometry no upright face has (eyes below the mouth)."""
    notes = []
    if len(faces) > 1:
        notes.append(f"{len(faces)} faces found; the largest was used")
    points = np.asarray(face.landmarks, dtype=np.float64)  # eyes, nose, mouth corners
    if points[:2, 1].mean() >= points[3:, 1].mean():
        notes.append("implausible landmarks: the eyes are not above the mouth (upside-down photo?)")
    return tuple(notes)


def detect_and_align(image: np.ndarray, detector, size: int = 112, name: str = "image",
                     alignment: str = ALIGNMENTS[0]) -> FaceCrop:
    """The main face of `image`, aligned (`alignment`: synfiqa.align.template_transform); BadInputError
    with a reason code when there is none."""
    smallest = min_face_size(detector)
    if min(image.shape[:2]) < smallest:
        raise BadInputError("image-too-small", f"{name}: {image.shape[1]}x{image.shape[0]} pixels cannot hold a "
                            f"face of the detector's minimum size ({smallest} px)")
    faces = _detect(detector, image, name)
    face = pick_main_face(faces)
    if face is None:
        raise BadInputError("no-face", f"{name}: no face found")
    crop, matrix = align_face(image, face.landmarks, size, alignment)
    notes = face_notes(faces, face)
    if upside_down(crop):  # a photo turned 180 degrees without an EXIF tag
        turned = np.ascontiguousarray(image[::-1, ::-1])
        turned_faces = _detect(detector, turned, name)
        turned_face = pick_main_face(turned_faces)
        if turned_face is not None:
            turned_crop, turned_matrix = align_face(turned, turned_face.landmarks, size, alignment)
            if upside_down(turned_crop) is False:
                notes = (*face_notes(turned_faces, turned_face), "upside down: turned 180 degrees before alignment")
                return FaceCrop(turned_crop, apply_transform(turned_matrix, turned_face.landmarks), turned,
                                turned_face, notes)
        notes = (*notes, "the aligned face looks upside down")
    return FaceCrop(crop, apply_transform(matrix, face.landmarks), image, face, notes)


def _detect(detector, image: np.ndarray, name: str) -> list:
    try:
        return detector.detect(image)
    except Exception as error:  # a detector that chokes on one odd image must not stop a whole folder
        raise BadInputError("detection-failed", f"{name}: the face detector failed ({error!r})") from None


class CropMaker:
    """One 112x112 ArcFace-aligned RGB crop per image. With ``aligned`` the image is taken as
    a crop already (resized to 112x112 when it is not that size, as CR-FIQA's inference
    script does); otherwise the main face is detected and aligned to the five-point template."""

    def __init__(self, aligned: bool, detector=None):
        if not aligned and detector is None:
            raise ValueError("a detector is needed unless the images are aligned crops")
        self.aligned = aligned
        self.detector = detector

    def load(self, item: ImageItem) -> np.ndarray:
        if item.data is not None:
            return decode_image(item.data, item.name)
        return read_rgb(item.path)

    def crop(self, item: ImageItem) -> np.ndarray:
        return self.crop_and_landmarks(item)[0]

    def crop_and_landmarks(self, item: ImageItem) -> tuple[np.ndarray, np.ndarray]:
        """The crop and its five landmarks in crop coordinates (for an aligned crop, the
        template's: that is where alignment put them)."""
        image = self.load(item)
        if self.aligned:
            if image.shape[:2] != (CROP_SIZE, CROP_SIZE):
                image = np.asarray(Image.fromarray(image).resize((CROP_SIZE, CROP_SIZE), Image.BILINEAR))
            return image, ARCFACE_TEMPLATE_112.astype(np.float64)
        found = detect_and_align(image, self.detector, CROP_SIZE, item.name)
        return found.crop, found.landmarks
