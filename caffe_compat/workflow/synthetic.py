"""A small synthetic stand-in for the legacy data: videos of drawn faces and an annotation sheet.

WHY: the real videos and scores are private, yet every workflow step (and the demo) must run on
a fresh machine. Each synthetic person has visible features (eye size, smile, skin clarity, hair)
and the human score is a fixed function of them plus rater noise, so a net can learn it from the
frames. The sheet mixes clean rows with the noisy rows the legacy sheet had (deleted videos, no
face, several people, partial face, possibly not the uploader, score "-") and serves everything
from a local HTTP server so the download step is exercised for real (direct media URLs and HTML
pages naming the video in ``<video src>`` or ``og:video``).
"""

from __future__ import annotations

import contextlib
import csv
import http.server
import io
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qs, urlsplit

import cv2
import numpy as np

from caffe_compat.atomic import atomic_write_bytes
from caffe_compat.errors import CaffeCompatError
from caffe_compat.progress import progress_bar

SCORE_MIN, SCORE_MAX = 60, 99
#: Column headers of the legacy sheet (the annotation step also accepts English ones).
SHEET_HEADERS = ("视频链接", "人工评价颜值", "人工识别性别", "人工推测年龄（数字）", "备注")
#: Remarks of rows the legacy workflow drops, and one harmless remark that must be kept.
NOISY_REMARKS = ("已删除", "未露脸", "多人出镜", "人脸不全", "疑似非本人作品")
HARMLESS_REMARK = "光线较暗"


@dataclass(frozen=True)
class Person:
    """Visible features in [0, 1] and the score a rater gave them."""

    eyes: float
    smile: float
    clarity: float
    female: bool
    age: int
    score: int


@dataclass(frozen=True)
class SyntheticVideo:
    """One sheet row: the video id, its person, the remark and how its URL is served."""

    video_id: str
    person: Person
    remark: str = ""
    score_text: str | None = None  # overrides the sheet's score cell (e.g. "-")
    url_kind: str = "media"  # media | page | og (HTML page with og:video) | missing


def rated_score(eyes: float, smile: float, clarity: float, noise: float) -> int:
    """The human score: mostly eyes and smile, some skin clarity, plus rater noise; 60..99."""
    quality = 0.4 * eyes + 0.35 * smile + 0.25 * clarity
    return int(np.clip(round(SCORE_MIN + (SCORE_MAX - SCORE_MIN) * quality + noise), SCORE_MIN, SCORE_MAX))


def _person(rng: np.random.Generator) -> Person:
    # Beta(2, 3.5) features give the legacy histogram's shape: most scores in the low 70s.
    eyes, smile, clarity = (float(v) for v in rng.beta(2.0, 3.5, size=3))
    return Person(eyes, smile, clarity, bool(rng.random() < 0.6), int(rng.integers(18, 41)),
                  rated_score(eyes, smile, clarity, float(rng.normal(0, 1.5))))


# --------------------------------------------------------------------------- drawing


def _draw_face(img: np.ndarray, p: Person, cx: float, cy: float, scale: float, blink: bool,
               rng: np.random.Generator) -> None:
    """Draw one face of ``p`` centred at (cx, cy); ``scale`` is the face half-height in pixels."""
    def pt(x: float, y: float) -> tuple[int, int]:
        return int(round(cx + x * scale)), int(round(cy + y * scale))

    def ln(v: float) -> int:
        return max(1, int(round(v * scale)))

    hair = (40, 50, 90) if p.female else (30, 30, 30)
    if p.female:  # long hair behind the face
        cv2.ellipse(img, pt(0, 0.25), (ln(0.95), ln(1.2)), 0, 0, 360, hair, -1, cv2.LINE_AA)
    skin = tuple(int(c) for c in np.array([150, 180, 225]) * (0.85 + 0.15 * p.clarity))
    cv2.ellipse(img, pt(0, 0), (ln(0.72), ln(0.95)), 0, 0, 360, skin, -1, cv2.LINE_AA)
    cv2.ellipse(img, pt(0, -0.7), (ln(0.75), ln(0.4)), 0, 180, 360, hair, -1, cv2.LINE_AA)
    # Blemishes: fewer with clearer skin.
    for _ in range(int(round((1.0 - p.clarity) * 14))):
        x, y = rng.uniform(-0.45, 0.45), rng.uniform(-0.1, 0.6)
        cv2.circle(img, pt(x, y), ln(0.045), (70, 90, 140), -1, cv2.LINE_AA)
    eye_w, eye_h = 0.08 + 0.2 * p.eyes, 0.04 + 0.14 * p.eyes
    for side in (-1, 1):
        centre = pt(side * 0.3, -0.15)
        if blink:
            cv2.line(img, pt(side * 0.3 - eye_w, -0.15), pt(side * 0.3 + eye_w, -0.15), (40, 40, 40), ln(0.03))
        else:
            cv2.ellipse(img, centre, (ln(eye_w), ln(eye_h)), 0, 0, 360, (250, 250, 250), -1, cv2.LINE_AA)
            cv2.circle(img, centre, ln(eye_h * 0.8), (60, 40, 20), -1, cv2.LINE_AA)
        cv2.line(img, pt(side * 0.3 - eye_w, -0.32), pt(side * 0.3 + eye_w, -0.34), hair, ln(0.04))
    cv2.line(img, pt(0, -0.05), pt(-0.05, 0.2), (110, 130, 180), ln(0.03))
    # Mouth: the arc opens upwards (a smile) as ``smile`` grows, downwards below 0.3.
    curve = (p.smile - 0.3) * 0.6
    start, end = (0, 180) if curve >= 0 else (180, 360)
    cv2.ellipse(img, pt(0, 0.45), (ln(0.28), ln(max(abs(curve), 0.02))), 0, start, end,
                (60, 60, 170), ln(0.05), cv2.LINE_AA)


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    top, bottom = rng.integers(40, 220, size=3), rng.integers(40, 220, size=3)
    ramp = np.linspace(0, 1, size)[:, None, None]
    bg = (top * (1 - ramp) + bottom * ramp).astype(np.uint8)
    return np.ascontiguousarray(np.broadcast_to(bg, (size, size, 3)))


def render_video(path: Path, video: SyntheticVideo, frames: int, size: int, seed: int) -> None:
    """Write ``frames`` frames of ``video`` (its remark decides the framing) as an MP4 file.

    The backdrop changes every 2 s (a new scene), so it tells nothing about the person: a net
    has to look at the face to learn the score.
    """
    rng = np.random.default_rng(seed)
    # Sensor noise from a few precomputed fields: drawing N(0, 3) per frame costs more than the rest.
    noise = rng.normal(0, 3, (4, size, size, 3)).astype(np.int16)
    tmp = path.with_name(f".{path.stem}.tmp.mp4")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (size, size))
    if not writer.isOpened():
        raise CaffeCompatError(f"{path}: this OpenCV build cannot write MPEG-4 (mp4v) video")
    try:
        for i in range(frames):
            if i % 50 == 0:
                bg = _background(size, rng)
            img = bg.copy()
            sway = np.sin(i / 12.0 + seed)
            cx, cy, scale = size * (0.5 + 0.04 * sway), size * (0.52 + 0.02 * np.cos(i / 9.0)), size * 0.36
            frame_rng = np.random.default_rng(seed)  # the same blemishes on every frame
            blink = i % 40 == 7
            if video.remark == "未露脸":  # no face: a plant-like blob instead
                cv2.circle(img, (int(cx), int(cy)), int(size * 0.2), (40, 140, 40), -1)
            elif video.remark == "多人出镜":
                for dx in (-0.25, 0.25):
                    _draw_face(img, video.person, cx + dx * size, cy, scale * 0.55, blink, frame_rng)
            elif video.remark == "人脸不全":
                _draw_face(img, video.person, size * 0.95, cy, scale, blink, frame_rng)
            else:
                _draw_face(img, video.person, cx, cy, scale, blink, frame_rng)
            writer.write(np.clip(img + noise[i % len(noise)], 0, 255).astype(np.uint8))
    finally:
        writer.release()
    tmp.replace(path)


# --------------------------------------------------------------------------- the set


def plan_videos(n_clean: int, seed: int) -> list[SyntheticVideo]:
    """``n_clean`` usable rows plus one row per noisy remark and one with the score "-"."""
    rng = np.random.default_rng(seed)
    kinds = ("media", "page", "og")
    videos = [SyntheticVideo(f"v{i:04d}", _person(rng), url_kind=kinds[i % len(kinds)])
              for i in range(n_clean)]
    if videos:  # a remark that is not an exclusion reason: the row stays
        videos[0] = SyntheticVideo(videos[0].video_id, videos[0].person, HARMLESS_REMARK)
    for j, remark in enumerate(NOISY_REMARKS):
        videos.append(SyntheticVideo(f"n{j:03d}", _person(rng), remark,
                                     url_kind="missing" if remark == "已删除" else "media"))
    videos.append(SyntheticVideo("n999", _person(rng), score_text="-"))
    order = rng.permutation(len(videos))
    return [videos[i] for i in order]


def render_videos(folder: Path, videos: list[SyntheticVideo], frames: int, size: int, seed: int) -> None:
    """Render every video that the server should have (deleted ones are left out)."""
    folder.mkdir(parents=True, exist_ok=True)
    todo = [v for v in videos if v.url_kind != "missing"]
    for k, video in enumerate(progress_bar(todo, desc="synthetic videos", unit="video", leave=False)):
        render_video(folder / f"{video.video_id}.mp4", video, frames, size, seed * 100003 + k)


def video_url(base_url: str, video: SyntheticVideo) -> str:
    """The sheet's URL of ``video``: a direct media URL or an HTML page naming it."""
    if video.url_kind == "page":
        return f"{base_url}/watch?v={video.video_id}"
    if video.url_kind == "og":
        return f"{base_url}/share/{video.video_id}.html"
    return f"{base_url}/media/{video.video_id}.mp4"


def write_sheet(path: Path, videos: list[SyntheticVideo], base_url: str) -> None:
    """The annotation sheet (UTF-8 CSV with the legacy Chinese headers)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(SHEET_HEADERS)
    for v in videos:
        score = v.score_text if v.score_text is not None else str(v.person.score)
        writer.writerow([video_url(base_url, v), score, "女" if v.person.female else "男",
                         str(v.person.age), v.remark])
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue().encode("utf-8"))


# --------------------------------------------------------------------------- the server


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``/media/<file>``, ``/watch?v=<id>`` (``<video src>``) and ``/share/<id>.html``."""

    media_dir: Path

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        parts = urlsplit(self.path)
        if parts.path.startswith("/media/"):
            name = parts.path[len("/media/"):]
            file = self.media_dir / name
            if "/" in name or not name or not file.is_file():
                self.send_error(404)
                return
            self._send(file.read_bytes(), "video/mp4")
        elif parts.path == "/watch" and (vid := parse_qs(parts.query).get("v", [""])[0]):
            self._send(f'<html><body><video src="/media/{vid}.mp4" controls></video></body></html>'
                       .encode(), "text/html; charset=utf-8")
        elif parts.path.startswith("/share/") and parts.path.endswith(".html"):
            vid = parts.path[len("/share/"):-len(".html")]
            host = f"http://{self.headers.get('Host', '127.0.0.1')}"
            self._send(f'<html><head><meta property="og:video" content="{host}/media/{vid}.mp4">'
                       f"</head><body>video {vid}</body></html>".encode(), "text/html; charset=utf-8")
        else:
            self.send_error(404)

    def _send(self, body: bytes, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """Quiet: the download step reports every URL's status itself."""


@contextlib.contextmanager
def serve(media_dir: Path) -> Iterator[str]:
    """Serve ``media_dir`` on 127.0.0.1 (a free port) while the block runs; yields the base URL."""
    handler = type("SyntheticHandler", (_Handler,), {"media_dir": Path(media_dir)})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="synthetic-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
