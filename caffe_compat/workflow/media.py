"""Video identity shared by every workflow step.

A video's id is derived once from its URL and then names the downloaded file
(``<id>.mp4``), its frames (``<id>_<frameidx>.jpg``) and its rows in every manifest, so
the steps can be joined without a database. Ids are restricted to ``[A-Za-z0-9_-]`` so
they can never escape a folder and never contain the space or tab that Caffe's list-file
parser splits on.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import PurePosixPath
from urllib.parse import parse_qs, unquote, urlsplit

# Container formats a download may be saved as; frame extraction scans folders for these.
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".flv", ".ts", ".3gp", ".mpg", ".mpeg", ".wmv")

# Query parameters that carry a video's id on common video sites (``watch?v=...``).
_ID_PARAMS = ("id", "vid", "v", "video_id", "item_id", "aweme_id")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_MAX_ID_LEN = 64


def url_hash(url: str, length: int = 10) -> str:
    """A short stable digest of ``url``: used when a URL carries no usable id, or two collide."""
    return hashlib.sha1(url.encode("utf-8")).hexdigest()[:length]


def sanitize_id(text: str) -> str:
    """Reduce ``text`` to a file-name-safe id (may return ``""``)."""
    return _UNSAFE.sub("-", text).strip("-.")[:_MAX_ID_LEN]


def is_safe_id(text: str) -> bool:
    """Whether ``text`` can name files as an id: only ``[A-Za-z0-9_-]``, so no ``/`` or ``..``
    (up to 128 characters: a sanitised id plus a hash suffix fits)."""
    return _SAFE_ID.fullmatch(text) is not None


def video_id_from_url(url: str) -> str:
    """The id a video is known by: an id query parameter, else the last path segment's stem.

    Falls back to a hash of the URL when neither gives a safe non-empty name.
    """
    parts = urlsplit(url.strip())
    query = parse_qs(parts.query)
    for key in _ID_PARAMS:
        if query.get(key) and (vid := sanitize_id(unquote(query[key][0]))):
            return vid
    segments = [s for s in unquote(parts.path).split("/") if s]
    if segments:
        stem = PurePosixPath(segments[-1])
        name = stem.stem if stem.suffix.lower() in VIDEO_EXTENSIONS + (".html", ".htm", ".php") else stem.name
        if vid := sanitize_id(name):
            return vid
    return url_hash(url)


def unique_video_ids(urls: list[str]) -> list[str]:
    """Ids for ``urls`` in order, a hash suffix added where two different URLs share an id
    (compared without case, as file names are on macOS and Windows)."""
    owner: dict[str, str] = {}
    ids = []
    for url in urls:
        vid = video_id_from_url(url)
        if owner.setdefault(vid.lower(), url) != url:
            vid = f"{vid}-{url_hash(url)}"
            owner.setdefault(vid.lower(), url)
        ids.append(vid)
    return ids


def video_id_of_frame(frame_name: str) -> str:
    """The video id in a frame file name ``<videoid>_<frameidx>.jpg`` (ids may contain ``_``)."""
    return PurePosixPath(frame_name).stem.rsplit("_", 1)[0]
