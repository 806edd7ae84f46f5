"""A loopback image server for load tests: many generated JPEGs, injected latency and failures.

:class:`ImageServer` listens on 127.0.0.1, one port per simulated host, and serves:

* ``/img/NNNNNN.jpg`` for ``0 <= NNNNNN < image_count``: a distinct 256x192 JPEG (about
  15 KB) generated from the index, so every run serves the same bytes. Images are kept in
  memory once generated (:meth:`ImageServer.prepare` generates them all ahead of a timed run);
* ``/pages/NNNN.html``: a page of ``images_per_page`` figures whose captions name a lesion
  class, spread over all hosts, and ``/index.html``, which links to every page. Pages are
  on host 0 only, so a crawler that starts at ``index_url`` finds every image;
* ``/robots.txt``: allows everything.

Every response waits ``latency_s`` seconds first (a fixed value or a ``(low, high)`` uniform
range). A seeded share ``failure_rate`` of the image URLs fail in one of three ways,
chosen by the index (see :meth:`ImageServer.failure_of`):

* ``503_once``: HTTP 503 on the first request, the image on later ones;
* ``404``: HTTP 404 on every request;
* ``reset_once``: the first connection is reset (TCP RST) after the request is read, the
  image is served on later requests.

The server counts, per Host header, the requests served and the peak number of requests in
progress at once. A request is in progress from when its request line and headers are read
until just before its response is sent, a window that lies inside the client's own
request-to-response window, so the peak never overstates the client's concurrency. It also
counts the peak number of open connections per host, which a client with idle keep-alive
connections can push above its number of requests in progress.

Run it on its own to look at it in a browser or with curl::

    .venv/bin/python benchmarks/image_server.py --images 100 --latency-ms 20 100
"""

from __future__ import annotations

import argparse
import hashlib
import html
import http.server
import io
import random
import socket
import socketserver
import struct
import sys
import threading
import time
import urllib.parse
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

IMAGE_SIZE = (256, 192)
FAILURE_KINDS: tuple[str, ...] = ("503_once", "404", "reset_once")
CAPTIONS: tuple[str, ...] = (
    "Malignant melanoma on the back",
    "Melanocytic nevus of the arm",
    "Basal cell carcinoma of the nose",
    "Seborrheic keratosis on the chest",
    "Dermatofibroma of the shin",
)


def generate_jpeg(index: int, seed: int = 0, size: tuple[int, int] = IMAGE_SIZE) -> bytes:
    """Return a JPEG of a skin-coloured field with a dark blob and fine noise, distinct per index."""
    rng = np.random.default_rng([seed, index])
    width, height = size
    coarse = rng.normal(0, 14, size=(6, 8, 3)) + np.array([200, 150, 130]) + rng.integers(-25, 25, size=3)
    field_image = Image.fromarray(np.clip(coarse, 0, 255).astype(np.uint8)).resize(size, Image.Resampling.BICUBIC)
    pixels = np.asarray(field_image, dtype=np.float32)

    rows, columns = np.mgrid[0:height, 0:width]
    centre_x, centre_y = rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height
    radius_x, radius_y = rng.uniform(0.08, 0.25) * width, rng.uniform(0.08, 0.25) * height
    distance = ((columns - centre_x) / radius_x) ** 2 + ((rows - centre_y) / radius_y) ** 2
    blob = np.clip(1.2 - distance, 0, 1)[..., None]
    pixels = pixels * (1 - 0.6 * blob) + rng.normal(0, 9, size=pixels.shape)

    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=88)
    return buffer.getvalue()


@dataclass
class ServerStats:
    """Request counts and peaks since the last :meth:`ImageServer.reset_stats`."""

    requests_by_host: Counter[str] = field(default_factory=Counter)
    image_requests_by_host: Counter[str] = field(default_factory=Counter)
    # "200", "503", "404", "reset" (by the server), "client_reset" (a connection the client reset)
    responses_by_kind: Counter[str] = field(default_factory=Counter)
    peak_in_progress_by_host: dict[str, int] = field(default_factory=dict)
    peak_connections_by_host: dict[str, int] = field(default_factory=dict)
    first_image_request_at: float | None = None  # time.monotonic()
    last_image_response_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        window = None
        if self.first_image_request_at is not None and self.last_image_response_at is not None:
            window = self.last_image_response_at - self.first_image_request_at
        return {
            "requests_by_host": dict(self.requests_by_host),
            "image_requests_by_host": dict(self.image_requests_by_host),
            "responses_by_kind": dict(self.responses_by_kind),
            "peak_in_progress_by_host": dict(self.peak_in_progress_by_host),
            "peak_connections_by_host": dict(self.peak_connections_by_host),
            "image_window_s": window,
        }


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Listener
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes. With Nagle's algorithm on, the body then waits
    # for the client's delayed ACK (40 ms on Linux) on every keep-alive request. Web servers
    # such as nginx set TCP_NODELAY too.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature fixed by the base class
        pass

    def setup(self) -> None:
        super().setup()
        self._host: str | None = None

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass  # the connection was reset on purpose
        if self._host is not None:
            self.server.owner._connection_closed(self._host)

    def do_GET(self) -> None:  # noqa: N802 - name fixed by http.server
        owner = self.server.owner
        host = (self.headers.get("Host") or f"127.0.0.1:{self.server.server_address[1]}").lower()
        if self._host is None:
            self._host = host
            owner._connection_opened(host)
        path = urllib.parse.urlsplit(self.path).path

        owner._request_started(host, path)
        try:
            time.sleep(owner._latency_for(path))
            status, body, content_type = owner._response_for(path)
        finally:
            owner._request_finished(host, path)

        if status == "reset":
            # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return
        self.send_response(int(status))
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        if path.startswith("/img/"):
            owner._image_response_sent()


class _Listener(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # the default of 5 drops connections when many clients connect at once
    owner: ImageServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that closes a keep-alive connection with unread data resets it; count that
        # instead of printing a traceback.
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionResetError, BrokenPipeError)):
            self.owner._count_response("client_reset")
            return
        super().handle_error(request, client_address)


class ImageServer:
    """Serves ``image_count`` generated JPEGs on ``hosts`` loopback ports; see the module docstring.

    Use it as a context manager. ``latency_s`` is seconds before each response, or a
    ``(low, high)`` pair for a uniform draw per request.
    """

    def __init__(
        self,
        image_count: int,
        *,
        hosts: int = 1,
        latency_s: float | tuple[float, float] = 0.0,
        failure_rate: float = 0.0,
        images_per_page: int = 100,
        seed: int = 0,
    ) -> None:
        if image_count < 1:
            raise ValueError(f"image_count must be >= 1, got {image_count}")
        if hosts < 1:
            raise ValueError(f"hosts must be >= 1, got {hosts}")
        if not 0.0 <= failure_rate <= 1.0:
            raise ValueError(f"failure_rate must be in [0, 1], got {failure_rate}")
        self.image_count = image_count
        self.host_count = hosts
        self.latency_s = latency_s
        self.failure_rate = failure_rate
        self.images_per_page = images_per_page
        self.seed = seed
        self._images: dict[int, bytes] = {}
        self._lock = threading.Lock()
        self._attempts: Counter[str] = Counter()
        self._in_progress: Counter[str] = Counter()
        self._connections: Counter[str] = Counter()
        self.stats = ServerStats()
        self._listeners: list[_Listener] = []
        self._threads: list[threading.Thread] = []

    # -- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> ImageServer:
        for _ in range(self.host_count):
            listener = _Listener(("127.0.0.1", 0), _Handler)
            listener.owner = self
            thread = threading.Thread(target=listener.serve_forever, name="image-server", daemon=True)
            thread.start()
            self._listeners.append(listener)
            self._threads.append(thread)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for listener in self._listeners:
            listener.shutdown()
            listener.server_close()
        for thread in self._threads:
            thread.join(timeout=5)

    def prepare(self) -> None:
        """Generate every image now, so that no timed run pays for it."""
        for index in range(self.image_count):
            self.image_bytes(index)

    def reset_stats(self) -> None:
        """Forget counts and first attempts, so that the next client sees the same failures."""
        with self._lock:
            self._attempts.clear()
            self.stats = ServerStats()

    # -- URLs and expectations ------------------------------------------------------------

    @property
    def origins(self) -> list[str]:
        return [f"http://127.0.0.1:{listener.server_address[1]}" for listener in self._listeners]

    @property
    def index_url(self) -> str:
        return self.origins[0] + "/index.html"

    def image_url(self, index: int) -> str:
        return f"{self.origins[index % self.host_count]}/img/{index:06d}.jpg"

    def image_urls(self) -> list[str]:
        return [self.image_url(index) for index in range(self.image_count)]

    def failure_of(self, index: int) -> str | None:
        """Return the failure kind of image ``index`` (one of FAILURE_KINDS), or None."""
        digest = hashlib.sha256(f"{self.seed}:{index}".encode()).digest()
        draw = int.from_bytes(digest[:8], "big") / 2**64
        if draw >= self.failure_rate:
            return None
        return FAILURE_KINDS[digest[8] % len(FAILURE_KINDS)]

    def permanently_failing(self) -> set[str]:
        """Return the image URLs that fail on every request (the ``404`` kind)."""
        return {self.image_url(index) for index in range(self.image_count) if self.failure_of(index) == "404"}

    def image_bytes(self, index: int) -> bytes:
        data = self._images.get(index)
        if data is None:
            data = generate_jpeg(index, self.seed)
            self._images[index] = data
        return data

    # -- request handling (called from the server's threads) ------------------------------

    def _latency_for(self, path: str) -> float:
        if isinstance(self.latency_s, (int, float)):
            return float(self.latency_s)
        low, high = self.latency_s
        return random.uniform(low, high)

    def _response_for(self, path: str) -> tuple[str, bytes, str]:
        if path == "/robots.txt":
            return "200", b"User-agent: *\nAllow: /\n", "text/plain"
        if path == "/index.html":
            return "200", self._index_page().encode(), "text/html; charset=utf-8"
        if path.startswith("/pages/") and path.endswith(".html"):
            number = _number_in(path, "/pages/", ".html")
            if number is not None and number < self._page_count():
                return "200", self._image_page(number).encode(), "text/html; charset=utf-8"
        if path.startswith("/img/") and path.endswith(".jpg"):
            index = _number_in(path, "/img/", ".jpg")
            if index is not None and index < self.image_count:
                return self._image_response(path, index)
        self._count_response("404")
        return "404", b"not found\n", "text/plain"

    def _image_response(self, path: str, index: int) -> tuple[str, bytes, str]:
        with self._lock:
            self._attempts[path] += 1
            attempt = self._attempts[path]
        failure = self.failure_of(index)
        if failure == "404":
            outcome = "404"
        elif failure == "503_once" and attempt == 1:
            outcome = "503"
        elif failure == "reset_once" and attempt == 1:
            outcome = "reset"
        else:
            outcome = "200"
        self._count_response(outcome)
        if outcome == "200":
            return "200", self.image_bytes(index), "image/jpeg"
        if outcome == "reset":
            return "reset", b"", ""
        return outcome, f"HTTP {outcome}\n".encode(), "text/plain"

    def _count_response(self, kind: str) -> None:
        with self._lock:
            self.stats.responses_by_kind[kind] += 1

    def _request_started(self, host: str, path: str) -> None:
        with self._lock:
            self.stats.requests_by_host[host] += 1
            self._in_progress[host] += 1
            peaks = self.stats.peak_in_progress_by_host
            peaks[host] = max(peaks.get(host, 0), self._in_progress[host])
            if path.startswith("/img/"):
                self.stats.image_requests_by_host[host] += 1
                if self.stats.first_image_request_at is None:
                    self.stats.first_image_request_at = time.monotonic()

    def _request_finished(self, host: str, path: str) -> None:
        with self._lock:
            self._in_progress[host] -= 1

    def _image_response_sent(self) -> None:
        with self._lock:
            self.stats.last_image_response_at = time.monotonic()

    def _connection_opened(self, host: str) -> None:
        with self._lock:
            self._connections[host] += 1
            peaks = self.stats.peak_connections_by_host
            peaks[host] = max(peaks.get(host, 0), self._connections[host])

    def _connection_closed(self, host: str) -> None:
        with self._lock:
            self._connections[host] -= 1

    # -- pages ----------------------------------------------------------------------------

    def _page_count(self) -> int:
        return -(-self.image_count // self.images_per_page)

    def _index_page(self) -> str:
        links = "".join(
            f'<li><a href="/pages/{number:04d}.html">Atlas page {number}</a></li>\n'
            for number in range(self._page_count())
        )
        return _html("Skin lesion atlas", f"<ul>\n{links}</ul>\n")

    def _image_page(self, number: int) -> str:
        first = number * self.images_per_page
        figures = []
        for index in range(first, min(first + self.images_per_page, self.image_count)):
            caption = f"{CAPTIONS[index % len(CAPTIONS)]}, case {index}"
            figures.append(
                f'<figure><img src="{html.escape(self.image_url(index))}" alt="">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>\n"
            )
        return _html(f"Atlas page {number}", "".join(figures))


def _number_in(path: str, prefix: str, suffix: str) -> int | None:
    digits = path[len(prefix) : -len(suffix)]
    return int(digits) if digits.isdigit() else None


def _html(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title></head><body>\n{body}</body></html>\n"
    )


def latency_from_milliseconds(values: Sequence[float]) -> float | tuple[float, float]:
    """Turn one value (fixed) or two (uniform range) in milliseconds into ``latency_s``."""
    if len(values) == 1:
        return values[0] / 1000
    if len(values) == 2 and values[0] <= values[1]:
        return values[0] / 1000, values[1] / 1000
    raise ValueError(f"latency takes one value or a low and a high value in ms, got {list(values)}")


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve generated JPEGs on 127.0.0.1 until interrupted.")
    parser.add_argument("--images", type=int, default=100, help="number of images (default 100)")
    parser.add_argument("--hosts", type=int, default=1, help="number of ports, one per host (default 1)")
    parser.add_argument("--latency-ms", type=float, nargs="+", default=[50.0],
                        help="fixed latency, or low and high of a uniform range, in ms (default 50)")
    parser.add_argument("--failure-rate", type=float, default=0.05, help="share of failing image URLs (default 0.05)")
    arguments = parser.parse_args()
    with ImageServer(
        arguments.images, hosts=arguments.hosts, latency_s=latency_from_milliseconds(arguments.latency_ms),
        failure_rate=arguments.failure_rate,
    ) as server:
        print(f"serving {server.index_url} and {arguments.images} images; Ctrl-C stops", flush=True)
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
