"""A static web server on 127.0.0.1 that behaves like the untidy parts of the real web.

It serves a folder of files and reads an optional ``_routes.json`` in that folder (never served)
with per-path behaviour::

    {
      "redirects": {"/a": "/b", "/b": "/c"},      # 302 Found to the target
      "delays": {"/slow.jpg": 5.0},               # seconds to wait before answering
      "content_types": {"/x.jpg": "image/jpeg"},  # Content-Type to send instead of the guessed one
      "statuses": {"/flaky.jpg": 503}             # answer with this status and an empty body
    }

The demo web and the tests use it; the crawler talks to it over real HTTP.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import logging
import mimetypes
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ROUTES_FILE = "_routes.json"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature fixed by the base class
        log.debug("%s %s", self.address_string(), format % args)

    def do_HEAD(self) -> None:  # noqa: N802 - name fixed by http.server
        self._answer(send_body=False)

    def do_GET(self) -> None:  # noqa: N802 - name fixed by http.server
        self._answer(send_body=True)

    def _answer(self, send_body: bool) -> None:
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        routes = self.server.routes
        self.server.record(path)

        delay = routes.get("delays", {}).get(path)
        if delay:
            time.sleep(float(delay))

        if path in routes.get("redirects", {}):
            self._send(302, b"", "text/plain", {"Location": routes["redirects"][path]}, send_body)
            return
        if path in routes.get("statuses", {}):
            self._send(int(routes["statuses"][path]), b"", "text/plain", {}, send_body)
            return

        file_path = self._resolve(path)
        if file_path is None:
            self._send(404, b"not found", "text/plain", {}, send_body)
            return
        content_type = routes.get("content_types", {}).get(path) or (
            mimetypes.guess_type(file_path.name)[0] or "application/octet-stream"
        )
        if content_type.startswith("text/"):
            content_type += "; charset=utf-8"
        self._send(200, file_path.read_bytes(), content_type, {}, send_body)

    def _resolve(self, path: str) -> Path | None:
        root = self.server.root
        relative = path.lstrip("/") or "index.html"
        candidate = (root / relative).resolve()
        if candidate.is_dir():
            candidate = candidate / "index.html"
        if not candidate.is_relative_to(root) or candidate.name == ROUTES_FILE:
            return None
        return candidate if candidate.is_file() else None

    def _send(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str], send_body: bool
    ) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            if send_body:
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up, for example after its own timeout on a slow path.
            log.debug("client closed the connection during %s", self.path)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path, routes: dict[str, Any]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root
        self.routes = routes
        self.requests: list[str] = []
        self._lock = threading.Lock()

    def record(self, path: str) -> None:
        with self._lock:
            self.requests.append(path)


class LoopbackSite:
    """A running server: ``base_url`` ("http://127.0.0.1:PORT") and the paths requested so far."""

    def __init__(self, server: _Server) -> None:
        self._server = server
        host, port = server.server_address[:2]
        self.base_url = f"http://{host}:{port}"

    @property
    def requests(self) -> list[str]:
        with self._server._lock:
            return list(self._server.requests)

    def url(self, path: str) -> str:
        return self.base_url + "/" + path.lstrip("/")


def load_routes(root: str | Path) -> dict[str, Any]:
    routes_path = Path(root) / ROUTES_FILE
    if not routes_path.exists():
        return {}
    with open(routes_path, encoding="utf-8") as handle:
        return json.load(handle)


@contextlib.contextmanager
def serve_site(root: str | Path, routes: dict[str, Any] | None = None) -> Iterator[LoopbackSite]:
    """Serve the folder ``root`` on 127.0.0.1 at an ephemeral port for the duration of the block.

    ``routes`` overrides the folder's ``_routes.json``.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"cannot serve {root}: not a folder")
    server = _Server(root, routes if routes is not None else load_routes(root))
    thread = threading.Thread(target=server.serve_forever, name="loopback-server", daemon=True)
    thread.start()
    site = LoopbackSite(server)
    log.info("serving %s at %s", root, site.base_url)
    try:
        yield site
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
