"""Step 3: frame sampling, face and blur filters, and clear messages for bad input."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from caffe_compat.cli import main
from caffe_compat.errors import CaffeCompatError
from caffe_compat.workflow.frames import (
    FrameOptions,
    crop_face,
    extract_frames,
    face_detector_from_model,
    sharpness,
)
from tests.workflow_util import frame_value, write_video

QUIET = dict(progress=False)


def read_manifest(path):
    with open(path, encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_every_nth_frame_at_most_max_per_video(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "v1.avi", 120)
    write_video(videos / "v2.mp4", 30, fourcc="mp4v")
    (videos / "download_manifest.csv").write_text("x\n")
    (videos / "notes.txt").write_text("x\n")
    result = extract_frames(videos, tmp_path / "frames", FrameOptions(every=10, max_frames=5, **QUIET))
    names = [f["frame"] for f in result.frames]
    assert names == [f"v1_{i}.jpg" for i in (0, 10, 20, 30, 40)] + [f"v2_{i}.jpg" for i in (0, 10, 20)]
    for frame in result.frames:
        image = cv2.imread(str(tmp_path / "frames" / frame["frame"]))
        assert abs(float(image.mean()) - frame_value(int(frame["frame_index"]))) < 6, frame
    assert [(v.video_id, v.kept, v.sampled) for v in result.videos] == [("v1", 5, 5), ("v2", 3, 3)]
    assert result.videos[0].frames_read == 41  # stops reading once the video has its 5 frames
    assert "ignored 1 file(s) without a video extension: notes.txt" in result.messages[0]
    rows = read_manifest(result.manifest)
    assert [r["frame"] for r in rows] == names and all(r["score"] == "" for r in rows)
    summary = read_manifest(tmp_path / "frames" / "videos_manifest.csv")
    assert [(r["video_id"], r["kept"]) for r in summary] == [("v1", "5"), ("v2", "3")]
    assert "frames kept" in result.table()
    parallel = extract_frames(videos, tmp_path / "frames3", FrameOptions(every=10, max_frames=5, jobs=3, **QUIET))
    assert parallel.frames == result.frames


def test_scores_come_from_the_clean_sheet(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for vid in ("a", "b", "c"):
        write_video(videos / f"{vid}.avi", 12)
    sheet = tmp_path / "clean.csv"
    sheet.write_text("row,video_id,url,score\n2,a,http://h/a.mp4,61\n3,b,http://h/b.mp4,99\n", encoding="utf-8")
    result = extract_frames(videos, tmp_path / "f", FrameOptions(every=5, max_frames=10, **QUIET), annotations=sheet)
    assert [(f["frame"], f["score"]) for f in result.frames] == [
        ("a_0.jpg", "61"), ("a_5.jpg", "61"), ("a_10.jpg", "61"), ("b_0.jpg", "99"), ("b_5.jpg", "99"), ("b_10.jpg", "99")]
    assert any("c.avi: skipped, video id 'c' is not in" in m for m in result.messages)


def test_a_file_that_is_not_a_video(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "good.avi", 5)
    (videos / "broken.mp4").write_bytes(b"<html>404 not found</html>" * 20)
    result = extract_frames(videos, tmp_path / "f", FrameOptions(every=1, max_frames=2, **QUIET))
    assert [f["frame"] for f in result.frames] == ["good_0.jpg", "good_1.jpg"]
    assert [v.status for v in result.videos] == ["not a video (OpenCV cannot open it)", "ok"]
    assert any(m.endswith("broken.mp4: not a video (OpenCV cannot open it)") for m in result.messages)
    with pytest.raises(CaffeCompatError, match=r"none of the 1 file\(s\) could be read as a video .*broken.mp4: not a video"):
        extract_frames(videos / "broken.mp4", tmp_path / "g", FrameOptions(**QUIET))
    assert not (tmp_path / "g" / "frames_manifest.csv").exists()


def test_empty_or_missing_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CaffeCompatError, match=r"empty: no video files in this folder \(looked for .mp4"):
        extract_frames(tmp_path / "empty", tmp_path / "f", FrameOptions(**QUIET))
    with pytest.raises(CaffeCompatError, match="no such file or folder"):
        extract_frames(tmp_path / "absent", tmp_path / "f", FrameOptions(**QUIET))
    with pytest.raises(CaffeCompatError, match="--every and --max must be at least 1"):
        extract_frames(tmp_path / "empty", tmp_path / "f", FrameOptions(every=0))
    runner = CliRunner()
    out = runner.invoke(main, ["workflow", "extract-frames", str(tmp_path / "empty"), "-o", str(tmp_path / "f")])
    assert out.exit_code == 1 and "no video files in this folder" in out.output and "Traceback" not in out.output


def squares(count: int, size=(96, 64)) -> np.ndarray:
    """A black frame with ``count`` white 12x12 squares ("faces")."""
    w, h = size
    image = np.zeros((h, w, 3), np.uint8)
    for k in range(count):
        image[20:32, 10 + 30 * k: 22 + 30 * k] = 255
    return image


def white_blob_detector(image: np.ndarray):
    """Boxes of white blobs: a real detector of this test's drawn faces."""
    mask = (cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) > 128).astype(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask)
    return [tuple(int(v) for v in stats[i][:4]) for i in range(1, n) if stats[i][4] > 20]


def test_face_filter_keeps_exactly_one_face_and_crops_with_margin(tmp_path):
    faces_per_frame = [1, 0, 2, 1, 3, 1, 0, 1]
    video = write_video(tmp_path / "faces.avi", len(faces_per_frame), size=(96, 64), draw=lambda i: squares(faces_per_frame[i]))
    options = FrameOptions(every=1, max_frames=10, face_detector=white_blob_detector, crop_margin=0.5, jobs=2, **QUIET)
    result = extract_frames(video, tmp_path / "f", options)
    assert [int(f["frame_index"]) for f in result.frames] == [0, 3, 5, 7]
    record = result.videos[0]
    assert (record.sampled, record.no_face, record.several_faces, record.kept) == (8, 2, 2, 4)
    crop = cv2.imread(str(tmp_path / "f" / "faces_0.jpg"))
    assert crop.shape[:2] == (24, 24)  # 12x12 box grown by 6 px on every side


def test_crop_is_clipped_to_the_image():
    image = np.zeros((50, 40, 3), np.uint8)
    assert crop_face(image, (30, 40, 10, 10), 1.0).shape[:2] == (20, 20)  # rows 30..50, cols 20..40


def test_blur_filter_uses_variance_of_laplacian(tmp_path):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    sharp, flat = noise, cv2.GaussianBlur(noise, (0, 0), 4)
    assert sharpness(sharp) > 10 * sharpness(flat)
    video = write_video(tmp_path / "blur.avi", 6, draw=lambda i: sharp if i % 2 else flat)
    threshold = (sharpness(sharp) * sharpness(flat)) ** 0.5
    result = extract_frames(video, tmp_path / "f", FrameOptions(every=1, max_frames=10, min_sharpness=threshold, **QUIET))
    assert [int(f["frame_index"]) for f in result.frames] == [1, 3, 5]
    assert result.videos[0].blurred == 3


def test_face_detector_models_give_clear_errors(tmp_path):
    if hasattr(cv2, "CascadeClassifier"):
        assert callable(face_detector_from_model(None))
    else:  # OpenCV 5 wheels ship no Haar cascade
        with pytest.raises(CaffeCompatError, match="no Haar cascade detector .*--face-model"):
            face_detector_from_model(None)
    with pytest.raises(CaffeCompatError, match="no such face model file"):
        face_detector_from_model(tmp_path / "yunet.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"garbage")
    with pytest.raises(CaffeCompatError, match="OpenCV cannot load it as a YuNet face model"):
        face_detector_from_model(tmp_path / "bad.onnx")
