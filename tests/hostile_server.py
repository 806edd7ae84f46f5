"""A raw-socket HTTP server on 127.0.0.1 whose routes misbehave on purpose, for the crawler's fault tests.

Each route is a function that gets an :class:`Exchange` (the parsed request and the client
socket) and writes whatever bytes it likes: a partial status line, a lying Content-Length, a
trickle, a reset. The server logs every request (path and arrival time) and counts the bytes each
exchange sent before the client hung up, so tests can check what the client did on the wire.

    with HostileServer() as server:
        server.route("/x", lambda exchange: exchange.respond(200, b"hello"))
        fetcher.fetch(server.url("/x"), ...)
"""

from __future__ import annotations

import socket
import socketserver
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

# A route handles one request; its return value is ignored.
Route = Callable[["Exchange"], object]


@dataclass
class Exchange:
    """One request on a connection, with the socket to write the response to."""

    method: str
    path: str
    headers: dict[str, str]
    arrived: float  # time.monotonic() when the request head was complete
    sock: socket.socket
    sent: int = 0  # body and head bytes written so far
    client_gone: bool = False  # True once a write failed because the client closed
    keep_alive: bool = False  # set by a route to read the next request on this connection
    finished: threading.Event = field(default_factory=threading.Event)

    def send(self, data: bytes) -> bool:
        """Write ``data``; return False (and set ``client_gone``) when the client has hung up."""
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            self.client_gone = True
            return False
        self.sent += len(data)
        return True

    def respond(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
                *, keep_alive: bool = False) -> None:
        """Send a complete response with a correct Content-Length (unless ``headers`` sets one)."""
        all_headers = {"Content-Length": str(len(body)), "Connection": "keep-alive" if keep_alive else "close"}
        all_headers.update(headers or {})
        self.keep_alive = keep_alive
        self.send(head(status, all_headers) + body)

    def reset(self) -> None:
        """Close the connection with a TCP reset (RST) instead of an orderly close."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} Status"] + [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        sock: socket.socket = self.request
        self.server.count_connection()
        buffer = b""
        while True:
            while b"\r\n\r\n" not in buffer:
                try:
                    data = sock.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                buffer += data
            raw_head, buffer = buffer.split(b"\r\n\r\n", 1)
            exchange = _parse(raw_head, sock)
            self.server.log(exchange)
            routes = self.server.routes
            route = routes.get(exchange.path.split("?", 1)[0]) or routes.get("*", _not_found)
            try:
                route(exchange)
            except OSError:
                return
            finally:
                exchange.finished.set()
            if not exchange.keep_alive:
                return

    def finish(self) -> None:
        try:
            self.request.close()
        except OSError:
            pass


def _parse(raw_head: bytes, sock: socket.socket) -> Exchange:
    lines = raw_head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Exchange(method, path, headers, time.monotonic(), sock)


def _not_found(exchange: Exchange) -> None:
    exchange.respond(404, b"not found")


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes: dict[str, Route] = {}
        self.exchanges: list[Exchange] = []
        self.connections = 0
        self._lock = threading.Lock()

    def log(self, exchange: Exchange) -> None:
        with self._lock:
            self.exchanges.append(exchange)

    def count_connection(self) -> None:
        with self._lock:
            self.connections += 1


class HostileServer:
    """A threaded raw-socket server on 127.0.0.1 at an ephemeral port; see the module docstring."""

    def __init__(self) -> None:
        self._server = _Server()
        self._thread = threading.Thread(target=self._server.serve_forever, name="hostile-server", daemon=True)

    def __enter__(self) -> HostileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def route(self, path: str, handler: Route) -> None:
        """Serve requests for ``path`` (without query) with ``handler``. Path ``*`` serves all others."""
        self._server.routes[path] = handler

    def exchanges(self, path: str | None = None) -> list[Exchange]:
        """Return the requests received so far, in arrival order (only those for ``path`` if given)."""
        with self._server._lock:
            logged = list(self._server.exchanges)
        return [exchange for exchange in logged if path is None or exchange.path.split("?", 1)[0] == path]

    @property
    def paths(self) -> list[str]:
        return [exchange.path for exchange in self.exchanges()]

    @property
    def connections(self) -> int:
        """Connections accepted so far, whether or not a request arrived on them."""
        with self._server._lock:
            return self._server.connections
