"""Step 2: download the videos named by the clean sheet, concurrently and resumably.

Tens of thousands of downloads from third-party sites fail in every way a server can fail,
so each URL is retried with exponential backoff on transient errors (connection drops, 5xx,
a body shorter than its Content-Length), a partial body is kept under a hidden temporary
name and resumed with an HTTP Range request, and finished files are skipped on a rerun.
A URL is either the media itself or an HTML page naming it (``og:video``, ``<video src>``,
``<source src>``); sites that need more register their own resolver with
:func:`register_resolver`. Files are named ``<video id><ext>``: a ``video_id`` column must
hold safe ids (letters, digits, ``_`` and ``-``), and whatever the server sends
(Content-Disposition included) can never choose a path. Each attempt has an overall deadline
(``max_time``, enforced by closing its connection), not only a per-read timeout, so a server
dribbling a byte at a time cannot hang the run; an empty body is never recorded as done.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from typing import Callable
from urllib.parse import urljoin, urlsplit

from tqdm import tqdm

from caffe_compat.errors import CaffeCompatError, where
from caffe_compat.progress import bar_shown
from caffe_compat.workflow.media import VIDEO_EXTENSIONS, is_safe_id, unique_video_ids
from caffe_compat.workflow.tables import format_table, make_folder, read_csv, write_csv

MANIFEST_FIELDS = ("row", "video_id", "url", "media_url", "status", "file", "bytes", "attempts", "error")
MANIFEST_NAME = "download_manifest.csv"
STATUS_DOWNLOADED, STATUS_SKIPPED, STATUS_FAILED = "downloaded", "skipped", "failed"

_CONTENT_TYPE_EXT = {
    "video/mp4": ".mp4", "video/webm": ".webm", "video/x-flv": ".flv", "video/quicktime": ".mov",
    "video/x-msvideo": ".avi", "video/avi": ".avi", "video/x-matroska": ".mkv", "video/mp2t": ".ts",
    "video/3gpp": ".3gp", "video/mpeg": ".mpg", "video/x-ms-wmv": ".wmv",
}
_CHUNK = 1 << 20
_MAX_PAGE_BYTES = 4 << 20
_USER_AGENT = "caffe-compat-downloader/1"

# A resolver turns a page URL into the media URL; it may fetch text with the given function.
Resolver = Callable[[str, Callable[[str], str]], str]
_RESOLVERS: dict[str, Resolver] = {}


def register_resolver(host: str) -> Callable[[Resolver], Resolver]:
    """Decorator: use ``resolver`` for URLs on ``host`` and its subdomains. For example::

        @register_resolver("video.example.com")
        def resolve(url: str, fetch_text: Callable[[str], str]) -> str:
            return re.search(r'"playAddr":"([^"]+)"', fetch_text(url)).group(1)

    An exception raised by a resolver fails that URL (named in the manifest), not the run.
    """

    def decorate(resolver: Resolver) -> Resolver:
        _RESOLVERS[host.lower().lstrip(".")] = resolver
        return resolver

    return decorate


def resolver_for(url: str) -> Resolver | None:
    """The registered resolver for ``url``'s host (most specific host suffix wins), if any."""
    host = (urlsplit(url).hostname or "").lower()
    labels = host.split(".")
    for i in range(len(labels)):
        if (resolver := _RESOLVERS.get(".".join(labels[i:]))) is not None:
            return resolver
    return None


@dataclass(frozen=True)
class DownloadOptions:
    """Concurrency and retry policy. A retry waits ``backoff * 2**(attempt-1)`` seconds."""

    jobs: int = 4
    retries: int = 3
    backoff: float = 1.0
    timeout: float = 30.0  # per network read (and connect)
    progress: bool | None = None  # None: a bar only when stderr is a terminal
    max_time: float = 1800.0  # per attempt, everything included
    # curl's --speed-limit/--speed-time: a body arriving slower than ``speed_limit`` bytes/s for
    # ``speed_time`` seconds (None: ``timeout``) is cut off and retried; a server trickling a byte
    # every half second would otherwise hold a worker for the whole ``max_time``.
    speed_limit: float = 1024.0
    speed_time: float | None = None

    @property
    def slow_seconds(self) -> float:
        return self.timeout if self.speed_time is None else self.speed_time


@dataclass
class DownloadResult:
    """One manifest row per input row, plus status counts."""

    rows: list[dict[str, str]]
    manifest: Path | None = None
    counts: Counter = field(default_factory=Counter)

    def table(self) -> str:
        return format_table(("status", "videos"), [*self.counts.most_common(), ("total", len(self.rows))])


class _Retryable(Exception):
    """A failure worth another attempt (network, 5xx, truncated body)."""


class _RangeRejected(_Retryable):
    """The server refused to resume (416): the partial file is dropped and the next try starts over."""


class _Permanent(Exception):
    """A failure no retry will fix (404, no video on the page, unsupported URL)."""


class _MediaFinder(HTMLParser):
    """Collects candidate media URLs from a page: og:video first, then <video src>, then <source src>."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.og: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k.lower(): (v or "") for k, v in attrs}
        if tag == "meta" and a.get("property", a.get("name", "")).lower() in (
            "og:video", "og:video:url", "og:video:secure_url"
        ) and a.get("content"):
            self.og.append(a["content"])
        elif tag in ("video", "source") and a.get("src"):
            self.tags.append(a["src"])


def media_url_from_html(html: str, page_url: str) -> str | None:
    """The absolute media URL an HTML page names, or None."""
    finder = _MediaFinder()
    finder.feed(html)
    for candidate in finder.og + finder.tags:
        url = urljoin(page_url, candidate.strip())
        if urlsplit(url).scheme in ("http", "https"):
            return url
    return None


class _Watch:
    """The sockets of one attempt, shut down when its deadline passes: a blocked read (or a
    server sending a byte every few seconds, which no per-read timeout catches) then ends."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> "_Watch":
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()

    def add(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            expired = self.expired
        if expired:
            self._shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            self._shut(sock)

    @staticmethod
    def _shut(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    def check(self) -> None:
        if self.expired:
            raise _Retryable(f"gave up after {self.seconds:g} s (--max-time)")


class _SpeedWatch:
    """Bytes received per window of ``seconds``; a whole window below ``limit`` bytes/s is retryable."""

    def __init__(self, limit: float, seconds: float) -> None:
        self.limit, self.seconds = limit, seconds
        self.start, self.bytes = time.monotonic(), 0

    def check(self, count: int, received: int) -> None:
        self.bytes += count
        elapsed = time.monotonic() - self.start
        if elapsed < self.seconds:
            return
        if self.bytes < self.limit * elapsed:
            raise _Retryable(f"slower than {self.limit:g} bytes/s for {elapsed:.0f} s ({self.bytes} bytes; "
                             f"--speed-limit/--speed-time) after {received} bytes")
        self.start, self.bytes = time.monotonic(), 0


def _watched(base: type, watch: _Watch) -> type:
    """``base`` (HTTPConnection or HTTPSConnection) handing its socket to ``watch`` on connect."""

    class Watched(base):  # type: ignore[misc, valid-type]
        def connect(self) -> None:
            super().connect()
            watch.add(self.sock)

    return Watched


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, watch: _Watch) -> None:
        super().__init__()
        self.connection = _watched(http.client.HTTPConnection, watch)

    def http_open(self, req):
        return self.do_open(self.connection, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, watch: _Watch) -> None:
        super().__init__()
        self.connection = _watched(http.client.HTTPSConnection, watch)

    def https_open(self, req):
        return self.do_open(self.connection, req, context=self._context)


def _check_scheme(url: str) -> None:
    if urlsplit(url).scheme not in ("http", "https"):
        raise _Permanent(f"not an http(s) URL: {url!r}")


def _open(url: str, timeout: float, watch: _Watch, offset: int = 0) -> http.client.HTTPResponse:
    """GET ``url`` (from byte ``offset``) within ``watch``'s deadline, classifying failures as
    retryable or permanent."""
    _check_scheme(url)
    headers = {"User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    opener = urllib.request.build_opener(_HTTPHandler(watch), _HTTPSHandler(watch))
    try:
        return opener.open(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:
            raise _RangeRejected(f"HTTP 416 (cannot resume at byte {offset}) from {url}") from None
        if exc.code >= 500 or exc.code in (408, 416, 429):
            raise _Retryable(f"HTTP {exc.code} from {url}") from None
        raise _Permanent(f"HTTP {exc.code} from {url}") from None
    except urllib.error.URLError as exc:
        watch.check()
        raise _Retryable(f"{exc.reason} ({url})") from None
    except (OSError, http.client.HTTPException) as exc:
        watch.check()
        raise _Retryable(f"{type(exc).__name__}: {exc} ({url})") from None


def _is_html(response: http.client.HTTPResponse) -> bool:
    kind = (response.headers.get_content_type() or "").lower()
    return kind in ("text/html", "application/xhtml+xml")


def _read_text(response: http.client.HTTPResponse, watch: _Watch) -> str:
    try:
        data = response.read(_MAX_PAGE_BYTES)
    except (OSError, http.client.HTTPException) as exc:
        watch.check()
        raise _Retryable(f"reading page failed: {exc}") from None
    watch.check()
    return data.decode(response.headers.get_content_charset() or "utf-8", errors="replace")


def _extension(media_url: str, response: http.client.HTTPResponse) -> str:
    """File extension from the media URL's path, else its Content-Type, else ``.mp4``."""
    suffix = PurePosixPath(urlsplit(media_url).path).suffix.lower()
    if suffix in VIDEO_EXTENSIONS:
        return suffix
    return _CONTENT_TYPE_EXT.get(response.headers.get_content_type().lower(), ".mp4")


def finished_file(folder: Path, video_id: str) -> Path | None:
    """The already-downloaded file of ``video_id`` in ``folder``, if any (an empty one is not)."""
    for ext in VIDEO_EXTENSIONS:
        path = folder / f"{video_id}{ext}"
        if path.is_file() and path.stat().st_size:
            return path
    return None


def partial_file(folder: Path, video_id: str) -> Path:
    """Hidden temporary name a download grows under until it is complete."""
    return folder / f".{video_id}.part"


class _Downloader:
    """Downloads one URL at a time into ``folder``; safe to share between threads."""

    def __init__(self, folder: Path, options: DownloadOptions, sleep: Callable[[float], None] = time.sleep):
        self.folder = folder
        self.options = options
        self.sleep = sleep
        # Media URL found for a page on an earlier try of this run: a retry resumes it directly.
        self.resolved: dict[str, str] = {}

    def fetch_text(self, url: str, watch: _Watch) -> str:
        """A page's text within an attempt's deadline (for resolvers)."""
        with _open(url, self.options.timeout, watch) as response:
            return _read_text(response, watch)

    def run(self, video_id: str, url: str) -> dict[str, str]:
        row = {"video_id": video_id, "url": url, "media_url": "", "file": "", "bytes": "", "error": ""}
        done = finished_file(self.folder, video_id)
        if done is not None:
            return {**row, "status": STATUS_SKIPPED, "file": done.name, "bytes": str(done.stat().st_size), "attempts": "0"}
        attempt = 0
        while True:
            attempt += 1
            try:
                media_url, path = self._attempt(video_id, url)
            except _Permanent as exc:
                return {**row, "status": STATUS_FAILED, "attempts": str(attempt), "error": str(exc)}
            except OSError as exc:  # only local file errors get here (network ones are classified)
                raise CaffeCompatError(f"{self.folder}: cannot write the download of {video_id}: {exc}") from None
            except _Retryable as exc:
                if isinstance(exc, _RangeRejected):
                    partial_file(self.folder, video_id).unlink(missing_ok=True)
                if attempt > self.options.retries:
                    return {**row, "status": STATUS_FAILED, "attempts": str(attempt), "error": str(exc)}
                self.sleep(self.options.backoff * 2 ** (attempt - 1))
                continue
            return {**row, "status": STATUS_DOWNLOADED, "media_url": media_url, "file": path.name,
                    "bytes": str(path.stat().st_size), "attempts": str(attempt)}

    def _attempt(self, video_id: str, url: str) -> tuple[str, Path]:
        """One try within ``max_time``: resolve the media URL, fetch it into the partial file,
        rename it when complete."""
        partial = partial_file(self.folder, video_id)
        offset = partial.stat().st_size if partial.exists() else 0
        with _Watch(self.options.max_time) as watch:
            media_url, response = self._open_media(video_id, url, offset, watch)
            self.resolved[video_id] = media_url
            with response:
                if _is_html(response):
                    raise _Permanent(f"{media_url} is an HTML page, not a video")
                ext = _extension(media_url, response)
                self._receive(response, partial, offset, watch)
        final = self.folder / f"{video_id}{ext}"
        os.replace(partial, final)
        return media_url, final

    def _open_media(self, video_id: str, url: str, offset: int,
                    watch: _Watch) -> tuple[str, http.client.HTTPResponse]:
        """The media URL of ``url`` and an open response for it from byte ``offset``.

        Order: a URL resolved on an earlier try, a site's registered resolver, else one GET of
        ``url`` that is the media itself or an HTML page naming it.
        """
        if video_id in self.resolved:
            media_url = self.resolved[video_id]
        elif (resolver := resolver_for(url)) is not None:
            try:
                media_url = resolver(url, lambda page: self.fetch_text(page, watch))
            except (_Retryable, _Permanent):
                raise
            except Exception as exc:  # a plug-in's own failure names the URL, not a traceback
                raise _Permanent(f"resolver for {url} failed: {exc}") from None
        else:
            response = _open(url, self.options.timeout, watch)
            media_url = response.geturl()
            if not _is_html(response) and not offset:
                return media_url, response
            if _is_html(response):
                page = _read_text(response, watch)
                found = media_url_from_html(page, media_url)
                if found is None:
                    response.close()
                    raise _Permanent(f"page {url} names no video (no og:video, <video src> or <source src>)")
                media_url = found
            response.close()
        return media_url, _open(media_url, self.options.timeout, watch, offset)

    def _receive(self, response: http.client.HTTPResponse, partial: Path, offset: int, watch: _Watch) -> None:
        """Stream the body into ``partial`` (appending after a 206); a short or empty body, or
        one still arriving at the deadline, is retryable."""
        if response.status == 206:
            if _range_start(response) != offset:
                partial.unlink(missing_ok=True)
                raise _Retryable(f"server resumed at byte {_range_start(response)}, not {offset}")
            mode = "ab"
        else:  # a full body: the server ignored the Range header, or there was nothing to resume
            mode, offset = "wb", 0
        length = response.headers.get("Content-Length")
        expected = offset + int(length) if length and length.isdigit() else None
        received = offset
        speed = _SpeedWatch(self.options.speed_limit, self.options.slow_seconds)
        with open(partial, mode) as handle:
            while True:
                try:
                    chunk = response.read1(_CHUNK)  # what has arrived: the deadline is checked between reads
                except (OSError, http.client.HTTPException) as exc:
                    watch.check()
                    raise _Retryable(f"connection lost after {received} bytes: {exc}") from None
                watch.check()
                if not chunk:
                    break
                handle.write(chunk)
                received += len(chunk)
                speed.check(len(chunk), received)
            handle.flush()
            os.fsync(handle.fileno())
        if expected is not None and received < expected:
            raise _Retryable(f"truncated body: {received} of {expected} bytes")
        if not received:
            partial.unlink(missing_ok=True)
            raise _Retryable("empty body (0 bytes)")


def _range_start(response: http.client.HTTPResponse) -> int | None:
    """First byte offset of a ``Content-Range: bytes a-b/n`` header."""
    value = response.headers.get("Content-Range", "")
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def read_url_rows(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """Rows of a clean sheet (``url`` column; ``video_id`` and ``row`` used when present).

    A given ``video_id`` names files, so it must be a safe id (see
    :func:`caffe_compat.workflow.media.is_safe_id`): ``../x`` or ``/etc/x`` would write
    outside the output folder.
    """
    rows = read_csv(path, required=("url",))
    if rows and "video_id" not in rows[0]:
        for row, vid in zip(rows, unique_video_ids([r["url"] for r in rows])):
            row["video_id"] = vid
    for number, row in enumerate(rows, start=2):
        vid = row["video_id"]
        if not is_safe_id(vid or ""):
            raise CaffeCompatError(
                f"{where(path, number)}: video_id {vid!r} cannot name a file (use only letters, digits, "
                "'_' and '-', at most 128 characters; or drop the column to derive ids from the URLs)")
    return rows


def download_videos(
    clean_csv: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    options: DownloadOptions = DownloadOptions(),
    manifest: str | os.PathLike[str] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> DownloadResult:
    """Download every URL of ``clean_csv`` into ``out_dir``; write the manifest (default ``out_dir/download_manifest.csv``)."""
    if options.jobs < 1:
        raise CaffeCompatError(f"--jobs must be at least 1, got {options.jobs}")
    if not options.max_time > 0 or not options.timeout > 0:
        raise CaffeCompatError(f"--timeout and --max-time must be positive, got {options.timeout}, {options.max_time}")
    if not options.speed_limit >= 0 or not options.slow_seconds > 0:
        raise CaffeCompatError(f"--speed-limit must be >= 0 and --speed-time positive, got {options.speed_limit}, "
                               f"{options.speed_time}")
    rows = read_url_rows(clean_csv)
    folder = make_folder(out_dir)
    downloader = _Downloader(folder, options, sleep)
    results: list[dict[str, str] | None] = [None] * len(rows)
    first_of_id: dict[str, int] = {}
    with ThreadPoolExecutor(max_workers=options.jobs) as pool:
        futures = {}
        for i, row in enumerate(rows):
            if row["video_id"] in first_of_id:
                results[i] = {"video_id": row["video_id"], "url": row["url"], "status": STATUS_SKIPPED,
                              "attempts": "0", "error": f"same video id as row {rows[first_of_id[row['video_id']]].get('row', '')}"}
                continue
            first_of_id[row["video_id"]] = i
            futures[pool.submit(downloader.run, row["video_id"], row["url"])] = i
        bar = tqdm(as_completed(futures), total=len(futures), desc="download", unit="video", disable=not bar_shown(options.progress))
        try:
            for future in bar:
                results[futures[future]] = future.result()
        except CaffeCompatError:
            pool.shutdown(cancel_futures=True)  # a local disk problem: stop instead of failing every row
            raise
    out_rows = [{"row": src.get("row", str(i + 1)), **res} for i, (src, res) in enumerate(zip(rows, results)) if res]
    result = DownloadResult(rows=out_rows, counts=Counter(r["status"] for r in out_rows))
    result.manifest = Path(manifest) if manifest is not None else folder / MANIFEST_NAME
    write_csv(result.manifest, MANIFEST_FIELDS, out_rows)
    return result
