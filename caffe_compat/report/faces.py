"""Per-sample face-quality flags, computed with OpenCV, to explain the report's bad cases.

The legacy report sorted its worst cases by cause by hand: not a face or a partial face,
several faces, profile, blur, bad light. Here each sample's image (the LMDB datum, as the net
saw it before cropping) gets:

- ``blur``: variance of the Laplacian of the grey image, scaled to 128 px on the short side,
  below :data:`BLUR_VARIANCE` (the usual focus measure);
- ``dark`` / ``overexposed``: mean grey level below :data:`DARK_MEAN` / above
  :data:`BRIGHT_MEAN`, or most pixels crushed to black / blown to white;
- with a face detector only: ``no_face``, ``several_faces``, ``small_face`` (the face is less
  than :data:`SMALL_FACE` of the image's short side), ``cut_off`` (its box leaves the image),
  ``profile`` (dlib: its left- or right-looking filter fires; YuNet: the nose far off the eyes'
  midline; Haar: only the profile cascade fires), ``eyes_covered`` (sunglasses, a hand: the eye
  band of a frontal face much darker than its cheeks, :func:`eyes_covered`).

Detectors: dlib's HOG detector by default (the ``dlib-bin`` wheel, a dependency: it holds its
model, so nothing is downloaded); else OpenCV's Haar cascades when the installed wheel ships them
(``cv2.data.haarcascades``: ``haarcascade_frontalface_default.xml`` and
``haarcascade_profileface.xml``), or a model file given with ``--face-model``: a YuNet ONNX
model for ``cv2.FaceDetectorYN`` (OpenCV Zoo's ``face_detection_yunet_2023mar.onnx``) or a Haar
cascade XML. Nothing is downloaded; without a detector only the image flags are computed and the
report says why.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Protocol, Sequence

import numpy as np

from caffe_compat.errors import CaffeCompatError, where

BLUR_VARIANCE = 60.0
DARK_MEAN, BRIGHT_MEAN = 50.0, 205.0
CRUSHED = 0.5  # share of pixels at <= 8 (dark) or >= 247 (overexposed)
SMALL_FACE = 0.25
PROFILE_OFFSET = 0.35  # |nose x - eyes' mid x| / eye distance
DLIB_SIDE = 320  # px: dlib's 80 px window finds faces down to a quarter of this short side
EYES_DARKER = 0.5  # eyes_covered: pixels darker than this share of the cheeks' median grey
EYES_DARK_SHARE = 0.55  # ... over this share of a strip a tenth of the face high
EYE_BAND = (0.2, 0.55)  # rows of a frontal face box searched for that strip
FLAGS = ("no_face", "several_faces", "small_face", "cut_off", "profile", "eyes_covered", "blur", "dark",
         "overexposed")
FRONTAL_CASCADE = "haarcascade_frontalface_default.xml"
PROFILE_CASCADE = "haarcascade_profileface.xml"


@dataclass(frozen=True)
class Face:
    """One detection: box (x, y, w, h) in pixels and whether it looks like a profile."""

    box: tuple[float, float, float, float]
    profile: bool = False


class FaceDetector(Protocol):
    name: str

    def detect(self, bgr: np.ndarray) -> list[Face]: ...


class YuNetDetector:
    """``cv2.FaceDetectorYN`` on a YuNet ONNX model; profile from its five landmarks."""

    def __init__(self, model: Path, score_threshold: float = 0.6) -> None:
        import cv2

        self.name = f"YuNet ({model.name})"
        try:
            self.net = cv2.FaceDetectorYN.create(os.fspath(model), "", (320, 320), score_threshold)
        except cv2.error as exc:
            raise CaffeCompatError(f"{where(model)}: cv2.FaceDetectorYN cannot load it: "
                                   f"{str(exc).strip().splitlines()[-1]}") from None

    def detect(self, bgr: np.ndarray) -> list[Face]:
        h, w = bgr.shape[:2]
        self.net.setInputSize((w, h))
        _, found = self.net.detect(np.ascontiguousarray(bgr))
        faces = []
        for row in found if found is not None else ():
            x, y, fw, fh = (float(v) for v in row[:4])
            right_eye, left_eye, nose = row[4:6], row[6:8], row[8:10]
            eyes = float(np.hypot(*(left_eye - right_eye)))
            offset = abs(float(nose[0]) - (float(right_eye[0]) + float(left_eye[0])) / 2)
            faces.append(Face((x, y, fw, fh), profile=eyes < 1 or offset / eyes > PROFILE_OFFSET))
        return faces


class DlibDetector:
    """dlib's built-in HOG face detector (``dlib.get_frontal_face_detector``, shipped inside the
    ``dlib-bin`` wheel: nothing to download). It is five HOG filters; a face found by the left-
    or right-looking one is a profile. Its window is 80 px, so pictures are scaled to a short
    side of :data:`DLIB_SIDE` (faces down to a quarter of it are found; smaller ones read as
    ``no_face``, as they would be ``small_face`` anyway) and larger ones down to twice that."""

    PROFILE_FILTERS = (1, 2)  # the sub-detectors looking left and right

    def __init__(self) -> None:
        import dlib

        self.name = f"dlib {dlib.__version__} HOG (frontal, left, right)"
        self.detector = dlib.get_frontal_face_detector()

    def detect(self, bgr: np.ndarray) -> list[Face]:
        import cv2

        grey = _grey(bgr)
        short = min(grey.shape)
        scale = DLIB_SIDE / short if short < DLIB_SIDE else min(1.0, 2 * DLIB_SIDE / short)
        if scale != 1:
            size = (max(1, round(grey.shape[1] * scale)), max(1, round(grey.shape[0] * scale)))
            grey = cv2.resize(grey, size, interpolation=cv2.INTER_LINEAR if scale > 1 else cv2.INTER_AREA)
        boxes, _, filters = self.detector.run(grey, 0, 0.0)
        return [Face((b.left() / scale, b.top() / scale, b.width() / scale, b.height() / scale),
                     profile=int(k) in self.PROFILE_FILTERS) for b, k in zip(boxes, filters)]


class HaarDetector:
    """OpenCV Haar cascades (OpenCV 4 wheels ship them); a profile cascade, when given, flags
    faces the frontal one misses, in either direction (it is run on the mirrored image too)."""

    def __init__(self, frontal: Path, profile: Path | None = None) -> None:
        import cv2

        if not hasattr(cv2, "CascadeClassifier"):
            raise CaffeCompatError(f"{where(frontal)}: this OpenCV ({cv2.__version__}) has no CascadeClassifier "
                                   "(OpenCV 5 dropped Haar cascades): give a YuNet .onnx model instead")
        self.name = f"Haar cascades ({frontal.name}{', ' + profile.name if profile else ''})"
        self.frontal = self._load(cv2, frontal)
        self.profile = self._load(cv2, profile) if profile is not None else None

    @staticmethod
    def _load(cv2, path: Path):
        cascade = cv2.CascadeClassifier(os.fspath(path))
        if cascade.empty():
            raise CaffeCompatError(f"{where(path)}: not a cascade OpenCV can load")
        return cascade

    def detect(self, bgr: np.ndarray) -> list[Face]:
        import cv2

        grey = cv2.equalizeHist(_grey(bgr))
        h, w = grey.shape
        side = max(16, min(h, w) // 8)
        found = self.frontal.detectMultiScale(grey, 1.1, 5, minSize=(side, side))
        faces = [Face(tuple(float(v) for v in box)) for box in found]
        if faces or self.profile is None:
            return faces
        for image, flipped in ((grey, False), (grey[:, ::-1].copy(), True)):
            for x, y, fw, fh in self.profile.detectMultiScale(image, 1.1, 5, minSize=(side, side)):
                faces.append(Face((float(w - x - fw if flipped else x), float(y), float(fw), float(fh)), profile=True))
            if faces:
                break
        return faces


def default_cascades() -> tuple[Path, Path | None] | None:
    """The frontal (and profile) Haar cascades of the installed OpenCV wheel, if it ships them."""
    import cv2

    folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
    if not folder or not hasattr(cv2, "CascadeClassifier"):
        return None
    frontal, profile = Path(folder) / FRONTAL_CASCADE, Path(folder) / PROFILE_CASCADE
    if not frontal.is_file():
        return None
    return frontal, (profile if profile.is_file() else None)


def open_detector(face_model: str | os.PathLike[str] | None) -> tuple[FaceDetector | None, str]:
    """The face detector to use and a line for the report saying which (or why none)."""
    if face_model is not None:
        path = Path(face_model)
        if not path.is_file():
            raise CaffeCompatError(f"--face-model {face_model}: no such file")
        if path.suffix.lower() == ".onnx":
            detector: FaceDetector = YuNetDetector(path)
        elif path.suffix.lower() == ".xml":
            profile = path.with_name(PROFILE_CASCADE)
            detector = HaarDetector(path, profile if profile.is_file() and profile != path else None)
        else:
            raise CaffeCompatError(f"--face-model {face_model}: expected a YuNet .onnx model or a Haar cascade .xml")
        return detector, f"faces found with {detector.name}"
    try:
        detector = DlibDetector()
    except ImportError:
        pass
    else:
        return detector, f"faces found with {detector.name}"
    cascades = default_cascades()
    if cascades is not None:
        detector = HaarDetector(*cascades)
        return detector, f"faces found with OpenCV's {detector.name} from cv2.data.haarcascades"
    import cv2

    accepted = "a YuNet .onnx (e.g. OpenCV Zoo's face_detection_yunet_2023mar.onnx)" + (
        " or a Haar cascade .xml" if hasattr(cv2, "CascadeClassifier") else "")
    return None, (f"no face detector: dlib is not installed (pip install dlib-bin) and this OpenCV wheel "
                  f"({cv2.__version__}) ships no Haar cascades in cv2.data.haarcascades, so no_face / several_faces / small_face / cut_off / profile are not "
                  f"computed (blur, dark and overexposed are); give --face-model with {accepted}")


def _grey(bgr: np.ndarray) -> np.ndarray:
    import cv2

    if bgr.ndim == 2 or bgr.shape[2] == 1:
        return np.ascontiguousarray(bgr.reshape(bgr.shape[:2]))
    return cv2.cvtColor(np.ascontiguousarray(bgr), cv2.COLOR_BGR2GRAY)


def sharpness(bgr: np.ndarray) -> float:
    """Variance of the Laplacian of the grey image at 128 px on the short side."""
    import cv2

    grey = _grey(bgr)
    scale = 128 / min(grey.shape)
    if scale != 1:
        size = (max(1, round(grey.shape[1] * scale)), max(1, round(grey.shape[0] * scale)))
        grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def image_flags(bgr: np.ndarray) -> list[str]:
    """blur / dark / overexposed for one HxW(xC) uint8 BGR image."""
    grey = _grey(bgr)
    flags = []
    if sharpness(bgr) < BLUR_VARIANCE:
        flags.append("blur")
    mean = float(grey.mean())
    if mean < DARK_MEAN or (grey <= 8).mean() > CRUSHED:
        flags.append("dark")
    if mean > BRIGHT_MEAN or (grey >= 247).mean() > CRUSHED:
        flags.append("overexposed")
    return flags


def face_flags(faces: Sequence[Face], height: int, width: int) -> list[str]:
    """no_face / several_faces / small_face / cut_off / profile from the detections."""
    if not faces:
        return ["no_face"]
    flags = ["several_faces"] if len(faces) > 1 else []
    x, y, w, h = max(faces, key=lambda f: f.box[2] * f.box[3]).box
    if max(w, h) < SMALL_FACE * min(height, width):
        flags.append("small_face")
    margin = 0.02 * max(w, h)
    if x < -margin or y < -margin or x + w > width + margin or y + h > height + margin:
        flags.append("cut_off")
    if any(f.profile for f in faces):
        flags.append("profile")
    return flags


def eyes_covered(bgr: np.ndarray, face: Face) -> bool:
    """Sunglasses or a hand over the eyes, from region contrast (no landmark model is shipped):
    somewhere in the band where a frontal box holds the eyes, a strip a tenth of the face high
    is mostly much darker than the cheeks (open eyes and brows darken only a small part of
    any such strip). The strip is searched because the box shifts when the eyes are hidden."""
    if face.profile:
        return False
    grey = _grey(bgr).astype(np.float32)
    x, y, w, h = face.box

    def rows(top: float, bottom: float, left: float, right: float) -> np.ndarray:
        return grey[max(0, int(y + top * h)):max(0, int(y + bottom * h)), max(0, int(x + left * w)):max(0, int(x + right * w))]

    eyes, cheeks = rows(*EYE_BAND, 0.15, 0.85), rows(0.55, 0.75, 0.25, 0.75)
    strip = max(1, int(0.1 * h))
    if eyes.shape[0] < strip or eyes.size < 16 or cheeks.size < 16:
        return False
    dark_rows = (eyes < EYES_DARKER * float(np.median(cheeks))).mean(axis=1)
    windows = np.convolve(dark_rows, np.ones(strip) / strip, mode="valid")
    return float(windows.max()) > EYES_DARK_SHARE


def quality_flags(images: Iterable[np.ndarray], detector: FaceDetector | None,
                  tick: Callable[[], None] = lambda: None) -> list[tuple[str, ...]]:
    """The flags of every image, in :data:`FLAGS` order."""
    out = []
    for bgr in images:
        flags = set(image_flags(bgr))
        if detector is not None:
            faces = detector.detect(bgr)
            flags.update(face_flags(faces, bgr.shape[0], bgr.shape[1]))
            if faces and eyes_covered(bgr, max(faces, key=lambda f: f.box[2] * f.box[3])):
                flags.add("eyes_covered")
        out.append(tuple(f for f in FLAGS if f in flags))
        tick()
    return out
