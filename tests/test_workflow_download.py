"""Step 2: downloads against a local HTTP server on 127.0.0.1 started by the test."""

from __future__ import annotations

import csv
import hashlib
import re
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caffe_compat.errors import CaffeCompatError
from caffe_compat.workflow import download as dl
from caffe_compat.workflow.download import DownloadOptions, download_videos, media_url_from_html
from caffe_compat.workflow.media import unique_video_ids, video_id_from_url


def body(name: str) -> bytes:
    """Distinct bytes per video, 8 KiB."""
    return hashlib.sha256(name.encode()).digest() * 256


class Handler(BaseHTTPRequestHandler):
    """Routes that fail the ways real video hosts do; every request is logged on the server."""

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        path = urlsplit(self.path).path
        with self.server.lock:
            self.server.hits[path] += 1
            hits = self.server.hits[path]
            self.server.ranges.append((path, self.headers.get("Range")))
        parts = path.strip("/").split("/")
        kind, name = parts[0], parts[-1].rsplit(".", 1)[0]
        if kind == "media":
            return self.media(name, "video/webm" if path.endswith(".webm") else "video/mp4")
        if kind == "redirect":
            return self.redirect(f"/media/{name}.mp4")
        if kind == "redirect2":
            return self.redirect(f"/redirect/{name}")
        if kind == "flaky" and hits <= 2:
            return self.send_error(500)
        if kind == "flaky":
            return self.media(name)
        if kind == "trunc":
            return self.media(name, truncate=hits == 1)
        if kind == "always-trunc":
            return self.media(name, truncate=True)
        if kind == "evil":
            return self.media(name, "application/octet-stream", disposition='attachment; filename="../../evil.sh"')
        if kind == "page":
            return self.html(f'<html><body><video controls src="/media/{name}.mp4"></video></body></html>')
        if kind == "og":
            return self.html(f'<html><head><meta property="og:video" content="{self.server.base}/media/{name}.mp4">'
                             '</head><body>no tag</body></html>')
        if kind == "source":
            return self.html(f'<video><source src="../media/{name}.webm" type="video/webm"></video>')
        if kind == "nothing":
            return self.html("<html><body>This video has been removed</body></html>")
        if kind == "file-scheme":
            return self.html('<video src="file:///etc/passwd"></video>')
        self.send_error(404)

    def redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def html(self, text: str) -> None:
        data = text.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def media(self, name: str, content_type: str = "video/mp4", truncate: bool = False, disposition: str | None = None):
        data = body(name)
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match:
            start = int(match.group(1))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data) - start))
        if disposition:
            self.send_header("Content-Disposition", disposition)
        self.end_headers()
        payload = data[start:]
        self.wfile.write(payload[: len(payload) // 2] if truncate else payload)
        self.close_connection = True


@pytest.fixture()
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.hits = Counter()
    httpd.ranges = []
    httpd.lock = threading.Lock()
    httpd.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def write_clean(path: Path, urls: list[str]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", "video_id", "url", "score"])
        for i, (url, vid) in enumerate(zip(urls, unique_video_ids(urls)), start=2):
            writer.writerow([i, vid, url, 70])
    return path


FAST = DownloadOptions(jobs=4, retries=3, backoff=0.0, timeout=5, progress=False)


def test_every_failure_mode_ends_in_the_manifest(server, tmp_path):
    b = server.base
    urls = [f"{b}/media/v1.mp4", f"{b}/redirect/v2", f"{b}/redirect2/v3", f"{b}/missing.mp4", f"{b}/flaky/v5.mp4",
            f"{b}/trunc/v6.mp4", f"{b}/evil/v7", f"{b}/page/v8.html", f"{b}/og/v9.html", f"{b}/source/v10.html",
            f"{b}/nothing/v11.html", f"{b}/file-scheme/v12.html", "ftp://example.invalid/v13.mp4"]
    clean = write_clean(tmp_path / "clean.csv", urls)
    out = tmp_path / "videos"
    result = download_videos(clean, out, FAST)
    status = {r["video_id"]: r for r in result.rows}
    ok = ["v1", "v2", "v3", "v5", "v6", "v7", "v8", "v9", "v10"]
    assert [vid for vid in status if status[vid]["status"] == "downloaded"] == ok
    for vid in ok:
        path = out / status[vid]["file"]
        assert path.read_bytes() == body(vid), vid
    assert status["v10"]["file"] == "v10.webm" and status["v7"]["file"] == "v7.mp4"
    assert status["missing"]["error"].startswith("HTTP 404") and status["missing"]["attempts"] == "1"
    assert status["v5"]["attempts"] == "3"
    assert "names no video" in status["v11"]["error"] and "names no video" in status["v12"]["error"]
    assert "not an http(s) URL" in status["v13"]["error"]
    assert status["v8"]["media_url"] == f"{b}/media/v8.mp4"
    # the truncated body was resumed with a Range request, not downloaded again
    assert (f"/trunc/v6.mp4", f"bytes={len(body('v6')) // 2}-") in server.ranges
    # nothing but the videos and the manifest; the hostile file name was ignored
    assert sorted(p.name for p in out.iterdir()) == sorted([status[v]["file"] for v in ok] + ["download_manifest.csv"])
    assert not list(tmp_path.parent.rglob("evil.sh"))
    assert result.counts == Counter(downloaded=9, failed=4)
    with open(result.manifest, encoding="utf-8") as handle:
        manifest = list(csv.DictReader(handle))
    assert [m["url"] for m in manifest] == urls and [m["row"] for m in manifest] == [str(i) for i in range(2, 15)]


def test_retries_back_off_exponentially_and_give_up(server, tmp_path):
    clean = write_clean(tmp_path / "clean.csv", [f"{server.base}/flaky/f1.mp4", f"{server.base}/always-trunc/t1.mp4"])
    sleeps: list[float] = []
    result = download_videos(clean, tmp_path / "v", DownloadOptions(jobs=1, retries=2, backoff=0.5, progress=False),
                             sleep=sleeps.append)
    assert [r["status"] for r in result.rows] == ["downloaded", "failed"]
    assert sleeps == [0.5, 1.0, 0.5, 1.0]
    assert "truncated body" in result.rows[1]["error"] and result.rows[1]["attempts"] == "3"
    assert server.hits["/always-trunc/t1.mp4"] == 3
    partial = tmp_path / "v" / ".t1.part"  # kept for the next run to resume
    assert partial.exists() and not (tmp_path / "v" / "t1.mp4").exists()


def test_resume_across_runs_and_skip_finished(server, tmp_path):
    clean = write_clean(tmp_path / "clean.csv", [f"{server.base}/trunc/r1.mp4", f"{server.base}/media/r2.mp4"])
    first = download_videos(clean, tmp_path / "v", DownloadOptions(retries=0, backoff=0, progress=False))
    assert [r["status"] for r in first.rows] == ["failed", "downloaded"]
    assert (tmp_path / "v" / ".r1.part").stat().st_size == len(body("r1")) // 2
    second = download_videos(clean, tmp_path / "v", DownloadOptions(retries=0, backoff=0, progress=False))
    assert [r["status"] for r in second.rows] == ["downloaded", "skipped"]
    assert (tmp_path / "v" / "r1.mp4").read_bytes() == body("r1")
    assert server.ranges[-1] == ("/trunc/r1.mp4", f"bytes={len(body('r1')) // 2}-")
    assert server.hits["/media/r2.mp4"] == 1  # the finished file was not fetched again
    assert not (tmp_path / "v" / ".r1.part").exists()


def test_plugin_resolver_for_a_site(server, tmp_path, monkeypatch):
    def resolve(url: str, fetch_text) -> str:
        page = fetch_text(url.replace("localhost", "127.0.0.1").replace("/watch", "/page/x"))
        assert "<video" in page
        return f"{server.base}/media/{urlsplit(url).query.split('=')[1]}.mp4"

    monkeypatch.setitem(dl._RESOLVERS, "localhost", resolve)
    port = server.server_address[1]
    clean = write_clean(tmp_path / "clean.csv", [f"http://localhost:{port}/watch?v=abc"])
    result = download_videos(clean, tmp_path / "v", FAST)
    assert result.rows[0]["status"] == "downloaded", result.rows[0]
    assert (tmp_path / "v" / "abc.mp4").read_bytes() == body("abc")
    assert dl.resolver_for(f"http://www.localhost:{port}/x") is resolve
    assert dl.resolver_for("http://example.com/x") is None


def test_html_finder_prefers_og_video_and_resolves_relative_urls():
    page = '<video src="b.mp4"></video><meta property="og:video:url" content="/a.mp4">'
    assert media_url_from_html(page, "http://h/p/q.html") == "http://h/a.mp4"
    assert media_url_from_html('<video><source src="c.mp4"></video>', "http://h/p/q.html") == "http://h/p/c.mp4"
    assert media_url_from_html("<p>nothing</p>", "http://h/") is None


def test_bad_input(tmp_path):
    (tmp_path / "c.csv").write_text("link\nhttp://x/a.mp4\n", encoding="utf-8")
    with pytest.raises(CaffeCompatError, match=r"c.csv:1: missing column\(s\) url"):
        download_videos(tmp_path / "c.csv", tmp_path / "v", FAST)
    with pytest.raises(CaffeCompatError, match="--jobs must be at least 1"):
        download_videos(tmp_path / "c.csv", tmp_path / "v", DownloadOptions(jobs=0))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_video_ids_are_always_safe_file_names(tail):
    for url in (f"http://h/{tail}", f"http://h/v?id={tail}", tail):
        vid = video_id_from_url(url)
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", vid), (url, vid)


def test_video_ids_from_urls():
    assert video_id_from_url("https://h/video/12345.mp4?x=1") == "12345"
    assert video_id_from_url("https://h/watch?v=AbC_9") == "AbC_9"
    assert video_id_from_url("https://h/a/../../etc/passwd") == "passwd"
    assert video_id_from_url("https://h/") == video_id_from_url("https://h/")  # stable hash
    ids = unique_video_ids(["http://a/x/1.mp4", "http://b/y/1.mp4", "http://a/x/1.mp4"])
    assert ids[0] == "1" and ids[1].startswith("1-") and ids[2] == "1"
    ids = unique_video_ids(["http://a/AbC.mp4", "http://a/abc.mp4"])
    assert ids[0] == "AbC" and ids[1].startswith("abc-")
