"""The fetcher against servers that misbehave: redirect loops, 429 and 5xx, resets, trickles, lying lengths, gzip.

Every case runs against a real server on 127.0.0.1 (tests/hostile_server.py). Timing bounds are
loose on purpose, because the tests share a small, loaded machine.
"""

from __future__ import annotations

import email.utils
import gzip
import time
import zlib
from typing import Any

import pytest
from hostile_server import Exchange, HostileServer, head

from dermcan.http_fetching import Fetcher, HostGate, HostPolicy, HttpSettings

LOOPBACK = ("127.0.0.0/8",)


def _settings(**overrides: Any) -> HttpSettings:
    values: dict[str, Any] = dict(
        user_agent="dermcan-test", connect_timeout_s=2.0, read_timeout_s=1.0, total_timeout_s=10.0,
        max_redirects=3, max_retries=2, max_timeout_retries=0, backoff_s=0.01, max_backoff_s=5.0,
        retry_statuses=frozenset({429, 500, 502, 503, 504}),
        politeness=HostPolicy(delay_s=0.0, max_per_host=4), max_crawl_delay_s=1.0,
        max_url_length=2048, allowed_private_networks=LOOPBACK,
    )
    values.update(overrides)
    return HttpSettings(**values)


def _fetcher(**overrides: Any) -> Fetcher:
    settings = _settings(**overrides)
    return Fetcher(settings, HostGate(settings.politeness))


@pytest.fixture()
def server():
    with HostileServer() as running:
        yield running


def _fetch(server: HostileServer, path: str, *, max_bytes: int = 1_000_000, **overrides: Any):
    fetcher = _fetcher(**overrides)
    try:
        return fetcher.fetch(server.url(path), max_bytes=max_bytes)
    finally:
        fetcher.close()


# -- redirects ---------------------------------------------------------------------------


def test_redirect_loop_stops_at_limit(server: HostileServer) -> None:
    server.route("/a", lambda exchange: exchange.respond(302, headers={"Location": "/b"}))
    server.route("/b", lambda exchange: exchange.respond(302, headers={"Location": "/a"}))

    result = _fetch(server, "/a", max_redirects=3)

    assert result.status == "too_many_redirects"
    assert "more than 3 redirects" in result.reason
    assert len(server.exchanges()) == 4  # the first request and three redirects


def test_redirect_chain_limit(server: HostileServer) -> None:
    for hop in range(6):
        server.route(f"/hop{hop}", lambda exchange, hop=hop: exchange.respond(301, headers={"Location": f"/hop{hop + 1}"}))
    server.route("/hop6", lambda exchange: exchange.respond(200, b"end"))

    within = _fetch(server, "/hop3", max_redirects=3)
    beyond = _fetch(server, "/hop2", max_redirects=3)

    assert within.status == "ok"
    assert within.content == b"end"
    assert within.final_url == server.url("/hop6")
    assert beyond.status == "too_many_redirects"


def test_redirect_to_file_scheme_is_rejected(server: HostileServer) -> None:
    server.route("/jump", lambda exchange: exchange.respond(302, headers={"Location": "file:///etc/passwd"}))

    result = _fetch(server, "/jump")

    assert result.status == "http_error"
    assert "redirect target file:///etc/passwd" in result.reason
    assert "scheme file:" in result.reason


# -- 429, Retry-After and 5xx -------------------------------------------------------------


def _busy_once(retry_after: str):
    """Return a route that responds 429 with ``retry_after`` the first time and 200 afterwards."""
    calls: list[str] = []

    def route(exchange: Exchange) -> None:
        calls.append(exchange.path)
        if len(calls) == 1:
            exchange.respond(429, b"slow down", {"Retry-After": retry_after})
        else:
            exchange.respond(200, b"welcome")

    return route


def _gap(server: HostileServer, path: str) -> float:
    first, second = server.exchanges(path)[:2]
    return second.arrived - first.arrived


def test_retry_after_seconds_is_honoured(server: HostileServer) -> None:
    server.route("/busy", _busy_once("1"))

    result = _fetch(server, "/busy")

    assert result.status == "ok"
    assert result.attempts == 2
    assert 0.95 <= _gap(server, "/busy") < 4.0


def test_retry_after_http_date_is_honoured(server: HostileServer) -> None:
    # Whole seconds only: the wait is between 1 and 2 s after the date is written.
    server.route("/busy", _busy_once(email.utils.formatdate(int(time.time()) + 2, usegmt=True)))

    result = _fetch(server, "/busy")

    assert result.status == "ok"
    assert result.attempts == 2
    assert 0.9 <= _gap(server, "/busy") < 4.0


def test_retry_after_is_capped(server: HostileServer) -> None:
    server.route("/busy", _busy_once("120"))

    result = _fetch(server, "/busy", max_backoff_s=0.3)

    assert result.status == "ok"
    assert 0.25 <= _gap(server, "/busy") < 3.0


def _failing(statuses: list[int]):
    remaining = list(statuses)

    def route(exchange: Exchange) -> None:
        if remaining:
            exchange.respond(remaining.pop(0), b"unavailable")
        else:
            exchange.respond(200, b"recovered")

    return route


def test_5xx_burst_then_success(server: HostileServer) -> None:
    server.route("/flaky", _failing([503, 502, 500]))

    result = _fetch(server, "/flaky", max_retries=3)

    assert result.status == "ok"
    assert result.content == b"recovered"
    assert result.attempts == 4


def test_5xx_burst_beyond_retries(server: HostileServer) -> None:
    server.route("/flaky", _failing([503, 503, 503]))

    result = _fetch(server, "/flaky", max_retries=2)

    assert result.status == "http_error"
    assert result.http_status == 503
    assert result.transient
    assert result.attempts == 3
    assert len(server.exchanges("/flaky")) == 3


# -- connection resets ----------------------------------------------------------------------


@pytest.mark.parametrize("sent", [b"HTTP/1.1 20", b"HTTP/1.1 200 OK\r\nContent-Ty"], ids=["status", "header"])
def test_close_mid_headers(server: HostileServer, sent: bytes) -> None:
    server.route("/cut", lambda exchange: exchange.send(sent))

    result = _fetch(server, "/cut", max_retries=1)

    assert result.status == "http_error"
    assert "connection" in result.reason or "malformed response head" in result.reason
    assert result.transient
    assert len(server.exchanges("/cut")) == 2


def test_reset_mid_headers_then_success(server: HostileServer) -> None:
    calls: list[str] = []

    def route(exchange: Exchange) -> None:
        calls.append(exchange.path)
        if len(calls) == 1:
            exchange.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n")
            exchange.reset()
        else:
            exchange.respond(200, b"whole")

    server.route("/reset", route)

    result = _fetch(server, "/reset", max_retries=1)

    assert result.status == "ok"
    assert result.content == b"whole"
    assert result.attempts == 2


@pytest.mark.parametrize("reset", [False, True], ids=["close", "reset"])
def test_connection_lost_mid_body(server: HostileServer, reset: bool) -> None:
    def route(exchange: Exchange) -> None:
        exchange.send(head(200, {"Content-Length": "10000", "Connection": "close"}) + b"x" * 100)
        time.sleep(0.05)
        if reset:
            exchange.reset()

    server.route("/half", route)

    result = _fetch(server, "/half", max_retries=0)

    assert result.status == "http_error"
    assert "connection broken during the body" in result.reason
    assert result.transient


# -- total timeout against a trickle --------------------------------------------------------


def _trickle(prefix: bytes, *, interval_s: float = 0.05, limit_s: float = 15.0):
    def route(exchange: Exchange) -> None:
        exchange.send(prefix)
        stop = time.monotonic() + limit_s
        while time.monotonic() < stop and exchange.send(b"a"):
            time.sleep(interval_s)

    return route


@pytest.mark.parametrize("part", ["body", "headers"])
def test_trickle_ends_near_total_timeout(server: HostileServer, part: str) -> None:
    # One byte per 0.05 s never trips the 1 s read timeout; only the 1.5 s total timeout ends it.
    if part == "body":
        prefix = head(200, {"Content-Length": "100000", "Connection": "close"})
    else:
        prefix = b"HTTP/1.1 200 OK\r\nX-Padding: "
    server.route("/trickle", _trickle(prefix))

    started = time.monotonic()
    result = _fetch(server, "/trickle", read_timeout_s=1.0, total_timeout_s=1.5)
    elapsed = time.monotonic() - started

    assert result.status == "timeout"
    assert "over 1.5 s" in result.reason
    assert 1.4 <= elapsed < 5.0
    exchange = server.exchanges("/trickle")[0]
    assert exchange.finished.wait(5.0)
    assert exchange.client_gone


def test_trickle_within_total_timeout_completes(server: HostileServer) -> None:
    body = b"b" * 20

    def route(exchange: Exchange) -> None:
        exchange.send(head(200, {"Content-Length": str(len(body)), "Connection": "close"}))
        for byte in body:
            exchange.send(bytes([byte]))
            time.sleep(0.02)

    server.route("/slowish", route)

    result = _fetch(server, "/slowish", read_timeout_s=1.0, total_timeout_s=10.0)

    assert result.status == "ok"
    assert result.content == body


# -- lying Content-Length -------------------------------------------------------------------


def test_content_length_longer_than_body(server: HostileServer) -> None:
    server.route("/short", lambda exchange: exchange.send(
        head(200, {"Content-Length": "5000", "Connection": "close"}) + b"y" * 1000))

    result = _fetch(server, "/short", max_retries=0)

    assert result.status == "http_error"
    assert "connection broken during the body" in result.reason
    assert result.content == b""


def test_content_length_shorter_than_body(server: HostileServer) -> None:
    # The extra bytes must not be read as the next response on the kept-alive connection.
    def route(exchange: Exchange) -> None:
        exchange.send(head(200, {"Content-Length": "100", "Connection": "keep-alive"}) + b"z" * 1000)
        exchange.keep_alive = True

    server.route("/long", route)
    server.route("/next", lambda exchange: exchange.respond(200, b"next body"))
    fetcher = _fetcher(max_retries=0)
    try:
        first = fetcher.fetch(server.url("/long"), max_bytes=1_000_000)
        second = fetcher.fetch(server.url("/next"), max_bytes=1_000_000)
    finally:
        fetcher.close()

    assert first.status == "ok"
    assert first.content == b"z" * 100
    assert second.status == "ok"
    assert second.content == b"next body"


def test_declared_length_over_limit(server: HostileServer) -> None:
    server.route("/huge", lambda exchange: exchange.send(
        head(200, {"Content-Length": "50000000", "Connection": "close"}) + b"q" * 1000))

    result = _fetch(server, "/huge", max_bytes=10_000)

    assert result.status == "too_large"
    assert "Content-Length 50000000" in result.reason


# -- gzip -----------------------------------------------------------------------------------


def test_gzip_body_is_decoded(server: HostileServer) -> None:
    original = b"clinical photograph " * 500
    server.route("/gz", lambda exchange: exchange.respond(200, gzip.compress(original), {"Content-Encoding": "gzip"}))

    result = _fetch(server, "/gz")

    assert result.status == "ok"
    assert result.content == original


def _gzip_of_zeros(size: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: gzip container
    block = bytes(1 << 20)
    pieces = [compressor.compress(block) for _ in range(size >> 20)]
    return b"".join(pieces) + compressor.flush()


def test_gzip_bomb_cut_off_by_decoded_size(server: HostileServer) -> None:
    bomb = _gzip_of_zeros(100 << 20)  # 100 MiB of zeros in about 100 KiB
    max_bytes = 1 << 20
    assert len(bomb) < max_bytes  # the limit is passed only by the decoded bytes
    server.route("/bomb", lambda exchange: exchange.respond(200, bomb, {"Content-Encoding": "gzip"}))

    result = _fetch(server, "/bomb", max_bytes=max_bytes)

    assert result.status == "too_large"
    assert "exceeded the limit of 1048576 bytes" in result.reason


# -- a body far over the limit without Content-Length ----------------------------------------


def test_endless_body_cut_off_early(server: HostileServer) -> None:
    full_body = 256 << 20
    chunk = b"\xff" * 65536

    def route(exchange: Exchange) -> None:
        exchange.send(head(200, {"Content-Type": "image/jpeg", "Connection": "close"}))
        while exchange.sent < full_body and exchange.send(chunk):
            pass

    server.route("/endless", route)

    result = _fetch(server, "/endless", max_bytes=1 << 20)

    assert result.status == "too_large"
    exchange = server.exchanges("/endless")[0]
    assert exchange.finished.wait(10.0)
    assert exchange.client_gone
    # What was sent is the 1 MiB read plus what socket buffers absorbed, far below 256 MiB.
    assert exchange.sent < 32 << 20


# -- environment: proxies and .netrc -------------------------------------------------------


def test_proxy_from_environment_is_used(server: HostileServer, monkeypatch: pytest.MonkeyPatch) -> None:
    server.route("/photo", lambda exchange: exchange.respond(200, b"direct"))
    with HostileServer() as proxy:
        proxy.route("*", lambda exchange: exchange.respond(200, b"via proxy"))
        monkeypatch.setenv("HTTP_PROXY", proxy.base_url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)

        through_proxy = _fetch(server, "/photo")
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        bypassed = _fetch(server, "/photo")
        proxied_paths = proxy.paths

    assert through_proxy.status == "ok"
    assert through_proxy.content == b"via proxy"
    assert proxied_paths == [server.url("/photo")]
    assert bypassed.status == "ok"
    assert bypassed.content == b"direct"


def test_netrc_credentials_not_sent(
    server: HostileServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login reader password secret\n", encoding="utf-8")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    server.route("/photo", lambda exchange: exchange.respond(200, b"body"))

    result = _fetch(server, "/photo")

    assert result.status == "ok"
    assert "authorization" not in server.exchanges("/photo")[0].headers
