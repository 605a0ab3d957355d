"""Step 3: sample still frames from the downloaded videos with OpenCV.

The legacy set kept a frame every 50 frames and at most 10 per video, so a long video
cannot dominate a score class. Optional filters keep only frames a face model can learn
from: exactly one detected face (optionally cropped with a margin) and not blurred
(variance of the Laplacian above a threshold). Frames are named ``<videoid>_<frameidx>.jpg``
and listed in a manifest with the video's score from the clean sheet, which is what
:mod:`caffe_compat.workflow.balance` splits.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from caffe_compat.atomic import atomic_write_bytes
from caffe_compat.errors import CaffeCompatError
from caffe_compat.progress import bar_shown
from caffe_compat.workflow.download import MANIFEST_NAME as DOWNLOAD_MANIFEST
from caffe_compat.workflow.media import VIDEO_EXTENSIONS, sanitize_id
from caffe_compat.workflow.tables import format_table, make_folder, read_csv, write_csv

FRAME_FIELDS = ("video_id", "frame", "frame_index", "score", "sharpness")
VIDEO_FIELDS = ("video_id", "file", "status", "frames_read", "sampled", "kept", "no_face", "several_faces", "blurred")
FRAMES_MANIFEST = "frames_manifest.csv"
VIDEOS_MANIFEST = "videos_manifest.csv"

# A face detector maps a BGR image to face boxes (x, y, width, height).
FaceDetector = Callable[[np.ndarray], Sequence[Sequence[int]]]


def haar_face_detector(cascade: str | os.PathLike[str] | None = None) -> FaceDetector:
    """OpenCV's Viola-Jones detector; ``cascade`` defaults to the frontal-face cascade OpenCV ships.

    OpenCV 5 wheels dropped both ``CascadeClassifier`` and the cascade files, so there this
    raises a clear error pointing at :func:`yunet_face_detector`.
    """
    if not hasattr(cv2, "CascadeClassifier"):
        raise CaffeCompatError(
            f"OpenCV {cv2.__version__} has no Haar cascade detector (removed in OpenCV 5); "
            "pass a YuNet face model instead (--face-model face_detection_yunet.onnx)"
        )
    if cascade is None:
        folder = getattr(getattr(cv2, "data", None), "haarcascades", "")
        cascade = Path(folder) / "haarcascade_frontalface_default.xml"
        if not cascade.is_file():
            raise CaffeCompatError(f"this OpenCV build ships no Haar cascade ({cascade} missing); pass --face-model")
    classifier = cv2.CascadeClassifier(os.fspath(cascade))
    if classifier.empty():
        raise CaffeCompatError(f"{cascade}: not an OpenCV Haar cascade file")

    def detect(image: np.ndarray) -> Sequence[Sequence[int]]:
        grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        return [tuple(int(v) for v in box) for box in classifier.detectMultiScale(grey, 1.1, 5, minSize=(24, 24))]

    return detect


def yunet_face_detector(model: str | os.PathLike[str], score_threshold: float = 0.9) -> FaceDetector:
    """OpenCV's DNN face detector (``cv2.FaceDetectorYN``) with a YuNet ONNX model file."""
    if not Path(model).is_file():
        raise CaffeCompatError(f"{model}: no such face model file")
    try:
        detector = cv2.FaceDetectorYN.create(os.fspath(model), "", (320, 320), score_threshold)
    except cv2.error as exc:
        raise CaffeCompatError(f"{model}: OpenCV cannot load it as a YuNet face model ({str(exc).strip().splitlines()[-1]})") from None

    def detect(image: np.ndarray) -> Sequence[Sequence[int]]:
        detector.setInputSize((image.shape[1], image.shape[0]))
        _, faces = detector.detect(image)
        return [] if faces is None else [tuple(int(round(v)) for v in face[:4]) for face in faces]

    return detect


def face_detector_from_model(model: str | os.PathLike[str] | None) -> FaceDetector:
    """A detector from a model file: ``.xml`` is a Haar cascade, anything else a YuNet ONNX model;
    None means OpenCV's own frontal-face cascade."""
    if model is None or Path(model).suffix.lower() == ".xml":
        return haar_face_detector(model)
    return yunet_face_detector(model)


@dataclass(frozen=True)
class FrameOptions:
    """Sampling and filters. ``crop_margin`` (a fraction of the face box added on each side)
    crops to the face; ``min_sharpness`` drops frames whose Laplacian variance is lower;
    ``jobs`` videos are decoded at once."""

    every: int = 50
    max_frames: int = 10
    face_detector: FaceDetector | None = None
    crop_margin: float | None = None
    min_sharpness: float | None = None
    jpeg_quality: int = 95
    jobs: int = 1
    progress: bool | None = None  # None: a bar only when stderr is a terminal


@dataclass
class VideoFrames:
    """What happened to one video (``status`` is ``ok`` or why it was not read)."""

    video_id: str
    file: str
    status: str = "ok"
    frames_read: int = 0
    sampled: int = 0
    kept: int = 0
    no_face: int = 0
    several_faces: int = 0
    blurred: int = 0


@dataclass
class FramesResult:
    """Kept frames (rows with :data:`FRAME_FIELDS`), per-video outcomes and notices."""

    frames: list[dict[str, str]] = field(default_factory=list)
    videos: list[VideoFrames] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    manifest: Path | None = None

    def table(self) -> str:
        """Counts of videos by status and of sampled frames by outcome."""
        status = Counter(v.status for v in self.videos)
        read = [v for v in self.videos if v.status == "ok"]
        body = [(f"videos {s}", n) for s, n in status.most_common()]
        body += [
            ("frames sampled", sum(v.sampled for v in read)),
            ("dropped: no face", sum(v.no_face for v in read)),
            ("dropped: several faces", sum(v.several_faces for v in read)),
            ("dropped: blurred", sum(v.blurred for v in read)),
            ("frames kept", len(self.frames)),
        ]
        return format_table(("count", "n"), body)


def sharpness(image: np.ndarray) -> float:
    """Variance of the Laplacian of the grey image: low for blurred frames."""
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def crop_face(image: np.ndarray, box: Sequence[int], margin: float) -> np.ndarray:
    """The face box grown by ``margin`` times its size on each side, clipped to the image."""
    x, y, w, h = (int(v) for v in box[:4])
    dx, dy = int(round(w * margin)), int(round(h * margin))
    top, left = max(0, y - dy), max(0, x - dx)
    bottom, right = min(image.shape[0], y + h + dy), min(image.shape[1], x + w + dx)
    return image[top:bottom, left:right]


def list_videos(source: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> tuple[list[Path], list[str]]:
    """Video files of a folder (by extension, sorted; the download manifest aside) or the given
    files, plus a notice naming other files found in the folder."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_file():
            return [path], []
        if not path.is_dir():
            raise CaffeCompatError(f"{path}: no such file or folder")
        entries = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".") and p.name != DOWNLOAD_MANIFEST)
        videos = [p for p in entries if p.suffix.lower() in VIDEO_EXTENSIONS]
        others = [p.name for p in entries if p.suffix.lower() not in VIDEO_EXTENSIONS]
        if not videos:
            raise CaffeCompatError(f"{path}: no video files in this folder (looked for {', '.join(VIDEO_EXTENSIONS)})")
        notes = [f"{path}: ignored {len(others)} file(s) without a video extension: {', '.join(others[:5])}"
                 + (" ..." if len(others) > 5 else "")] if others else []
        return videos, notes
    videos = [Path(p) for p in source]
    if not videos:
        raise CaffeCompatError("no video files given")
    return videos, []


def _scores(annotations: str | os.PathLike[str] | None) -> dict[str, str] | None:
    if annotations is None:
        return None
    return {row["video_id"]: row["score"] for row in read_csv(annotations, required=("video_id", "score"))}


def extract_frames(
    videos: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    options: FrameOptions = FrameOptions(),
    annotations: str | os.PathLike[str] | None = None,
) -> FramesResult:
    """Write sampled frames of every video into ``out_dir`` plus ``frames_manifest.csv`` and
    ``videos_manifest.csv``. With ``annotations`` (the clean sheet) each frame gets its video's
    score and videos missing from the sheet are skipped. A file OpenCV cannot decode is reported
    by name and skipped; when nothing at all can be read it is an error."""
    if options.every < 1 or options.max_frames < 1:
        raise CaffeCompatError(f"--every and --max must be at least 1 (got {options.every}, {options.max_frames})")
    paths, messages = list_videos(videos)
    scores = _scores(annotations)
    created = not Path(out_dir).exists()
    out = make_folder(out_dir)
    result = FramesResult(messages=messages)
    tasks: list[tuple[Path, VideoFrames, str]] = []
    seen: dict[str, Path] = {}
    for path in paths:
        video_id = sanitize_id(path.stem) or "video"
        record = VideoFrames(video_id=video_id, file=str(path))
        result.videos.append(record)
        if video_id in seen:
            record.status = "duplicate id"
            result.messages.append(f"{path}: skipped, same video id {video_id!r} as {seen[video_id]}")
        elif scores is not None and video_id not in scores:
            record.status = "not in sheet"
            result.messages.append(f"{path}: skipped, video id {video_id!r} is not in {annotations}")
        else:
            tasks.append((path, record, "" if scores is None else scores[video_id]))
        seen.setdefault(video_id, path)
    options = _serialised_detector(options)
    with ThreadPoolExecutor(max_workers=max(1, options.jobs)) as pool:  # OpenCV decodes without the GIL
        done = pool.map(lambda task: _sample_video(*task, out, options), tasks)
        for (path, record, _), frames in tqdm(zip(tasks, done), total=len(tasks), desc="frames", unit="video",
                                              disable=not bar_shown(options.progress)):
            result.frames.extend(frames)
            if record.status != "ok":
                result.messages.append(f"{path}: {record.status}")
    if not any(v.status == "ok" for v in result.videos):
        if created and not any(out.iterdir()):
            out.rmdir()  # a failed run leaves nothing behind
        raise CaffeCompatError(f"{videos}: none of the {len(paths)} file(s) could be read as a video ({result.messages[-1]})")
    result.manifest = out / FRAMES_MANIFEST
    write_csv(result.manifest, FRAME_FIELDS, result.frames)
    write_csv(out / VIDEOS_MANIFEST, VIDEO_FIELDS, [vars(v) for v in result.videos])
    return result


def _serialised_detector(options: FrameOptions) -> FrameOptions:
    """``options`` with its face detector behind a lock: OpenCV detectors keep per-call state."""
    detector = options.face_detector
    if detector is None:
        return options
    lock = threading.Lock()

    def locked(image: np.ndarray) -> Sequence[Sequence[int]]:
        with lock:
            return detector(image)

    return replace(options, face_detector=locked)


def _sample_video(path: Path, record: VideoFrames, score: str, out: Path, options: FrameOptions) -> list[dict[str, object]]:
    """Read ``path`` frame by frame, saving every ``every``-th frame that passes the filters;
    returns their manifest rows and fills in ``record``."""
    frames: list[dict[str, object]] = []
    capture = cv2.VideoCapture(os.fspath(path))
    try:
        if not capture.isOpened():
            record.status = "not a video (OpenCV cannot open it)"
            return frames
        index = -1
        while record.kept < options.max_frames and capture.grab():
            index += 1
            record.frames_read += 1
            if index % options.every:
                continue
            ok, frame = capture.retrieve()
            if not ok or frame is None:
                continue
            record.sampled += 1
            kept = _filtered(frame, record, options)
            if kept is None:
                continue
            image, sharp = kept
            name = f"{record.video_id}_{index}.jpg"
            ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, options.jpeg_quality])
            if not ok:
                raise CaffeCompatError(f"{path}: frame {index} could not be encoded as JPEG")
            atomic_write_bytes(out / name, data.tobytes())
            record.kept += 1
            frames.append({"video_id": record.video_id, "frame": name, "frame_index": index,
                           "score": score, "sharpness": f"{sharp:.2f}"})
        if record.frames_read == 0:
            record.status = "not a video (no frame could be decoded)"
    finally:
        capture.release()
    return frames


def _filtered(frame: np.ndarray, record: VideoFrames, options: FrameOptions) -> tuple[np.ndarray, float] | None:
    """The frame (or its face crop) and its sharpness if it passes the filters, else None (counted)."""
    image = frame
    if options.face_detector is not None:
        boxes = list(options.face_detector(frame))
        if not boxes:
            record.no_face += 1
            return None
        if len(boxes) > 1:
            record.several_faces += 1
            return None
        if options.crop_margin is not None:
            image = crop_face(frame, boxes[0], options.crop_margin)
    sharp = sharpness(image)
    if options.min_sharpness is not None and sharp < options.min_sharpness:
        record.blurred += 1
        return None
    return image, sharp
