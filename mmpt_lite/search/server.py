"""The local web app: a search page, a JSON search API, thumbnails and the indexed videos with HTTP Range.

Routes (GET; HEAD for the same):

    /                      the page (webpage.INDEX_HTML), /app.js, /app.css
    /api/info              index summary (JSON)
    /api/search?q=&k=&per_file=   hits (JSON); q at most MAX_QUERY_CHARS characters, else 400 (not truncated:
                           the user should see that the query was not the one searched); k in 1..MAX_K
    /thumb/<window id>.jpg the window's thumbnail strip
    /video/<file id>       the file's bytes, Range requests answered with 206 so the browser can seek

What is served is chosen by an id of the loaded index only, never by a client path: anything else in the URL
is a 404, and a file is served only if it still resolves (symlinks followed) to a regular file inside the
indexed folder. Bound to 127.0.0.1 by default; on a loopback address the Host header must name it too, so a
web page elsewhere cannot reach the app through DNS rebinding.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import sys
import threading
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from mmpt_lite.search.query import SearchIndex
from mmpt_lite.search.thumbs import thumbnail_strip
from mmpt_lite.search.webpage import APP_CSS, APP_JS, INDEX_HTML

MAX_QUERY_CHARS = 200
MAX_K = 50
CHUNK_BYTES = 256 * 1024
VIDEO_TYPES = {".mp4": "video/mp4", ".m4v": "video/mp4", ".webm": "video/webm", ".mkv": "video/x-matroska",
               ".avi": "video/x-msvideo", ".mov": "video/quicktime"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "media-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_THUMB = re.compile(r"^/thumb/(\d{1,12})\.jpg$")
_VIDEO = re.compile(r"^/video/(\d{1,12})$")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class RangeNotSatisfiable(Exception):
    pass


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) inclusive byte positions of a single ``Range: bytes=`` request, or None to send the whole
    file (no header, several ranges, or a header that does not parse: RFC 9110 says to ignore it).
    RangeNotSatisfiable when the range starts at or past the end."""
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if match is None or (not match.group(1) and not match.group(2)):
        return None
    first, last = match.groups()
    if not first:  # suffix: the last N bytes
        length = int(last)
        if length == 0 or size == 0:
            raise RangeNotSatisfiable
        return max(0, size - length), size - 1
    first = int(first)
    if last and int(last) < first:
        return None
    if first >= size:
        raise RangeNotSatisfiable
    return first, min(int(last) if last else size - 1, size - 1)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class SearchApp:
    """What every request thread shares: the index and a small cache of thumbnails."""

    def __init__(self, index: SearchIndex, *, thumb_cache: int = 512):
        self.index = index
        self.allowed_hosts: set[str] | None = None
        self._thumbs: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._thumb_cache, self._thumb_lock = thumb_cache, threading.Lock()

    def thumbnail(self, window_id: int) -> bytes:
        file_id, start, end = self.index.window(window_id)
        key = (self.index.header["generation"], window_id)
        with self._thumb_lock:
            if key in self._thumbs:
                self._thumbs.move_to_end(key)
                return self._thumbs[key]
        jpeg = thumbnail_strip(self.index.file_path(file_id), start, end,
                               decoder=self.index.header["protocol"].get("decoder", "pyav"))
        with self._thumb_lock:
            self._thumbs[key] = jpeg
            while len(self._thumbs) > self._thumb_cache:
                self._thumbs.popitem(last=False)
        return jpeg

    def info(self) -> dict:
        header = self.index.header
        return {"files": len(self.index.files), "windows": self.index.num_windows,
                "window_seconds": header["protocol"]["window_seconds"], "video_root": header["video_root"],
                "checkpoint": header["checkpoint"]["description"], "generation": header["generation"]}

    def search(self, params: dict[str, list[str]]) -> tuple[int, dict]:
        """(HTTP status, JSON body) for /api/search."""
        text = (params.get("q") or [""])[0]
        if not text.strip():
            return 400, {"error": "empty query: type what you are looking for"}
        if len(text) > MAX_QUERY_CHARS:
            return 400, {"error": f"query too long: {len(text)} characters, at most {MAX_QUERY_CHARS}"}
        try:
            k = int((params.get("k") or ["10"])[0])
        except ValueError:
            return 400, {"error": "k must be a whole number"}
        if not 1 <= k <= MAX_K:
            return 400, {"error": f"k must be between 1 and {MAX_K}"}
        per_file = (params.get("per_file") or ["1"])[0] != "0"
        self.index.refresh()
        hits = self.index.search(text, k, per_file=per_file)
        return 200, {"query": text, "k": k, "per_file": per_file, "results": [h.to_json() for h in hits]}


class SearchHandler(BaseHTTPRequestHandler):
    server_version = "mmpt-lite-search"
    protocol_version = "HTTP/1.1"  # keep-alive: the video element issues many range requests while seeking
    app: SearchApp  # set on the subclass made by make_server
    verbose = False

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's signature)
        if self.verbose:
            sys.stderr.write(f"{self.address_string()} {format % args}\n")

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._dispatch(send_body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch(send_body=False)

    def _dispatch(self, send_body: bool) -> None:
        try:
            self._route(send_body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser dropped the connection (it does so when seeking): nothing to answer
        except Exception as exc:  # one bad request must not stop the server; the client gets a 500
            sys.stderr.write(f"mmpt-lite serve: {self.path[:200]!r}: {type(exc).__name__}: {exc}\n")
            try:
                self._send(500, b"internal error\n", "text/plain; charset=utf-8", send_body)
            except OSError:
                pass

    def _route(self, send_body: bool) -> None:
        allowed = self.app.allowed_hosts
        if allowed is not None and (self.headers.get("Host") or "").lower() not in allowed:
            self._send(403, b"forbidden host\n", "text/plain; charset=utf-8", send_body)
            return
        url = urlsplit(self.path)
        route = url.path
        if route == "/":
            self._send(200, INDEX_HTML.encode(), "text/html; charset=utf-8", send_body)
        elif route == "/app.js":
            self._send(200, APP_JS.encode(), "text/javascript; charset=utf-8", send_body)
        elif route == "/app.css":
            self._send(200, APP_CSS.encode(), "text/css; charset=utf-8", send_body)
        elif route == "/api/info":
            self._json(200, self.app.info(), send_body)
        elif route == "/api/search":
            self._json(*self.app.search(parse_qs(url.query, keep_blank_values=True)), send_body)
        elif match := _THUMB.match(route):
            try:
                jpeg = self.app.thumbnail(int(match.group(1)))
            except LookupError:
                self._send(404, b"not found\n", "text/plain; charset=utf-8", send_body)
                return
            except Exception:  # an unreadable file: the page shows the broken image, the server carries on
                self._send(404, b"no thumbnail\n", "text/plain; charset=utf-8", send_body)
                return
            self._send(200, jpeg, "image/jpeg", send_body, cache=True)
        elif match := _VIDEO.match(route):
            self._video(int(match.group(1)), send_body)
        else:
            self._send(404, b"not found\n", "text/plain; charset=utf-8", send_body)

    def _send(self, status: int, body: bytes, content_type: str, send_body: bool, *, cache: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "private, max-age=300" if cache else "no-store")
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def _json(self, status: int, record: dict, send_body: bool) -> None:
        self._send(status, json.dumps(record).encode(), "application/json; charset=utf-8", send_body)

    def _video(self, file_id: int, send_body: bool) -> None:
        try:
            path = self.app.index.file_path(file_id)
        except LookupError:
            self._send(404, b"not found\n", "text/plain; charset=utf-8", send_body)
            return
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            try:
                byte_range = parse_range(self.headers.get("Range"), size)
            except RangeNotSatisfiable:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            first, last = byte_range if byte_range is not None else (0, size - 1)
            self.send_response(206 if byte_range is not None else 200)
            self.send_header("Content-Type", VIDEO_TYPES.get(Path(path).suffix.lower(), "application/octet-stream"))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(last - first + 1))
            if byte_range is not None:
                self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
            for name, value in SECURITY_HEADERS.items():
                self.send_header(name, value)
            self.end_headers()
            if not send_body:
                return
            f.seek(first)
            left = last - first + 1
            while left > 0:
                chunk = f.read(min(CHUNK_BYTES, left))
                if not chunk:
                    break
                self.wfile.write(chunk)
                left -= len(chunk)


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


def make_server(index: SearchIndex, host: str = "127.0.0.1", port: int = 8000, *,
                verbose: bool = False) -> ThreadingHTTPServer:
    """A bound (not yet serving) server; ``port`` 0 picks a free one (``server.server_address[1]``).
    Raises OSError when the address is in use or cannot be bound."""
    app = SearchApp(index)
    handler = type("BoundSearchHandler", (SearchHandler,), {"app": app, "verbose": verbose})
    server = (_Server6 if ":" in host else _Server)((host, port), handler)
    if is_loopback(host):
        bound = server.server_address[1]
        names = ("127.0.0.1", "localhost", "[::1]", host if ":" not in host else f"[{host}]")
        app.allowed_hosts = {f"{name}:{bound}" for name in names} | (set(names) if bound == 80 else set())
    return server
