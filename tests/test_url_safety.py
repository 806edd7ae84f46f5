"""URL checks before any request: schemes, length, IDN, non-public addresses, DNS failure, path traversal.

Host names other than loopback never reach a real DNS server here: tests that need a name to
resolve replace ``socket.getaddrinfo`` with a table (the only stand-in for the live internet),
and requests go to servers on 127.0.0.1.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from crawl_sites import ORIGIN, crawl_params, figure, jpeg_bytes, page, textured_image
from hostile_server import Exchange, HostileServer

from dermcan.crawling import CrawlConfig, Crawler, open_journal
from dermcan.http_fetching import Fetcher, HostGate
from dermcan.page_parsing import ImageCandidate
from dermcan.url_safety import AddressPolicy, ascii_host, ascii_url, check_url_form, parse_networks

UNSAFE_SCHEMES = [
    "file:///etc/passwd",
    "ftp://ftp.example.test/melanoma.jpg",
    "data:image/png;base64,iVBORw0KGgo=",
    "javascript:alert(1)",
    "mailto:someone@example.test",
]
PUBLIC_ADDRESS = "93.184.215.14"


def _fake_dns(monkeypatch: pytest.MonkeyPatch, table: dict[str, str | Callable[[], str]]) -> list[str]:
    """Resolve the names in ``table`` (to an address, or a function returning one per call); reject others.

    Numeric addresses resolve as usual. Returns the list of names looked up, in order.
    """
    original = socket.getaddrinfo
    looked_up: list[str] = []

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any):
        name = host.decode() if isinstance(host, bytes) else str(host)
        looked_up.append(name)
        if name in table:
            entry = table[name]
            address = entry() if callable(entry) else entry
            return original(address, port, *args, **kwargs)
        try:
            socket.inet_pton(socket.AF_INET6 if ":" in name else socket.AF_INET, name)
        except OSError:
            raise socket.gaierror(socket.EAI_NONAME, f"{name} is not in the test's DNS table") from None
        return original(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return looked_up


def _jpeg_route(seed: int = 1, headers: dict[str, str] | None = None):
    body = jpeg_bytes(textured_image(seed))
    return lambda exchange: exchange.respond(200, body, {"Content-Type": "image/jpeg", **(headers or {})})


def _crawler(tmp_path: Path, connect_to: dict[str, str], **overrides: Any) -> Crawler:
    config = CrawlConfig.from_params(crawl_params(**overrides))
    store = config.open_image_store(tmp_path / "store")
    journal = open_journal(tmp_path / "journal.jsonl", config, [], store)
    crawler = Crawler(config, store=store, journal=journal, connect_to=connect_to)
    crawler.journal_to_close = journal  # type: ignore[attr-defined]
    return crawler


def _download(crawler: Crawler, urls: list[str]) -> dict[str, dict[str, Any]]:
    candidates = [
        ImageCandidate(url=url, page_url="", caption="melanoma", keyword="melanoma", language="en",
                       label="malignantmelanoma")
        for url in urls
    ]
    try:
        rows, _ = crawler.download_images(candidates)
    finally:
        crawler.journal_to_close.close()  # type: ignore[attr-defined]
    return {row["url"]: row for row in rows}


# -- form: scheme, length, IDN ---------------------------------------------------------------


@pytest.mark.parametrize("url", UNSAFE_SCHEMES)
def test_non_http_scheme_rejected(url: str) -> None:
    rejection = check_url_form(url, max_length=2048)

    assert rejection is not None
    status, reason = rejection
    assert status == "http_error"
    assert "only http and https" in reason


def test_long_url_rejected() -> None:
    url = "http://site.test/" + "a" * 3000

    rejection = check_url_form(url, max_length=2048)

    assert rejection == ("http_error", "invalid URL: 3017 characters, over crawl.max_url_length (2048)")
    assert check_url_form(url[:2048], max_length=2048) is None


def test_idn_converted_to_punycode() -> None:
    assert ascii_host("bücher.example") == "xn--bcher-kva.example"
    assert ascii_host("BÜCHER.Example") == "xn--bcher-kva.example"
    assert ascii_host("Under_Score.example") == "under_score.example"
    assert ascii_url("http://bücher.example:8080/a/b?q=1#f") == "http://xn--bcher-kva.example:8080/a/b?q=1#f"
    assert ascii_url("http://user@bücher.example/") == "http://user@xn--bcher-kva.example/"


@pytest.mark.parametrize("host", ["☃.example", "a..bücher.example", "bücher-.example", "ü" * 70 + ".example"])
def test_invalid_idn_rejected(host: str) -> None:
    with pytest.raises(ValueError, match="not a valid internationalised domain name"):
        ascii_host(host)
    rejection = check_url_form(f"http://{host}/x.jpg", max_length=2048)
    assert rejection is not None
    assert rejection[0] == "http_error"
    assert "internationalised domain name" in rejection[1]


# -- addresses -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("10.1.2.3", "private"), ("192.168.0.9", "private"), ("172.16.5.5", "private"),
        ("127.0.0.1", "loopback"), ("::1", "loopback"), ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"), ("224.0.0.1", "multicast"), ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"), ("::", "unspecified"), ("::ffff:127.0.0.1", "loopback"),
        ("fd00::5", "private"),
    ],
)
def test_non_public_addresses_rejected(address: str, kind: str) -> None:
    reason = AddressPolicy().rejection_for(address)

    assert reason is not None
    assert kind in reason
    assert "crawl.allowed_private_networks" in reason


def test_public_address_and_allowed_network_pass() -> None:
    policy = AddressPolicy(parse_networks(["10.0.0.0/8", "::1"], setting="crawl.allowed_private_networks"))

    assert AddressPolicy().rejection_for(PUBLIC_ADDRESS) is None
    assert policy.rejection_for("10.200.0.1") is None
    assert policy.rejection_for("::1") is None
    assert policy.rejection_for("192.168.0.1") is not None


def test_invalid_network_param() -> None:
    with pytest.raises(ValueError, match=r"crawl.allowed_private_networks has an invalid network '10.0.0.0/33'"):
        parse_networks(["10.0.0.0/33"], setting="crawl.allowed_private_networks")
    params = crawl_params(allowed_private_networks=["intranet"])
    with pytest.raises(ValueError, match="crawl.allowed_private_networks"):
        CrawlConfig.from_params(params)


def test_loopback_rejected_without_allowance() -> None:
    with HostileServer() as server:
        server.route("/a.jpg", _jpeg_route())
        config = CrawlConfig.from_params(crawl_params(allowed_private_networks=[]))
        fetcher = Fetcher(config.http, HostGate(config.http.politeness))
        ipv4 = fetcher.fetch(server.url("/a.jpg"), max_bytes=100_000)
        ipv6 = fetcher.fetch("http://[::1]:9/a.jpg", max_bytes=100_000)
        fetcher.close()

        assert ipv4.status == "blocked_site"
        assert "address 127.0.0.1 is loopback" in ipv4.reason
        assert ipv6.status == "blocked_site"
        assert server.connections == 0


def test_connect_to_target_is_checked() -> None:
    # The canonical name is public; the origin actually contacted is loopback.
    with HostileServer() as server:
        server.route("/a.jpg", _jpeg_route())
        config = CrawlConfig.from_params(crawl_params(allowed_private_networks=[]))
        fetcher = Fetcher(config.http, HostGate(config.http.politeness), connect_to={ORIGIN: server.base_url})
        result = fetcher.fetch(ORIGIN + "/a.jpg", max_bytes=100_000)
        fetcher.close()

        assert result.status == "blocked_site"
        assert server.connections == 0


def test_names_resolving_to_private_addresses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_dns(monkeypatch, {
        "intranet.test": "10.0.0.7", "metadata.test": "169.254.169.254", "group.test": "224.0.0.251",
        "nowhere.test": "0.0.0.0",
    })  # fmt: skip
    urls = [f"http://{name}/a.jpg" for name in ("intranet.test", "metadata.test", "group.test", "nowhere.test")]

    rows = _download(_crawler(tmp_path, {}, allowed_private_networks=[]), urls)

    for url, kind in zip(urls, ["private", "link-local", "multicast", "unspecified"]):
        assert rows[url]["status"] == "blocked_site", url
        assert kind in rows[url]["reason"], url
        assert "resolves to a non-public address" in rows[url]["reason"], url


def test_dns_rebinding_caught_at_connect(monkeypatch: pytest.MonkeyPatch) -> None:
    # The first lookup (the check) gets a public address, the client's own lookup gets loopback.
    answers = iter([PUBLIC_ADDRESS])
    _fake_dns(monkeypatch, {"rebind.test": lambda: next(answers, "127.0.0.1")})
    with HostileServer() as server:
        server.route("/a.jpg", _jpeg_route())
        config = CrawlConfig.from_params(crawl_params(allowed_private_networks=[]))
        fetcher = Fetcher(config.http, HostGate(config.http.politeness))
        port = server.base_url.rsplit(":", 1)[1]
        result = fetcher.fetch(f"http://rebind.test:{port}/a.jpg", max_bytes=100_000)
        fetcher.close()

        assert result.status == "blocked_site"
        assert "connection reached a non-public address" in result.reason
        assert server.exchanges() == []  # connected, but no request was sent


def test_unresolvable_host_gets_status(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_dns(monkeypatch, {})
    crawler = _crawler(tmp_path, {})

    rows = _download(crawler, ["http://missing.test/a.jpg"])

    row = rows["http://missing.test/a.jpg"]
    assert row["status"] == "http_error"
    assert "host missing.test could not be resolved" in row["reason"]
    journal = (tmp_path / "journal.jsonl").read_text(encoding="utf-8")
    assert '"transient": true' in journal  # a rerun looks the name up again


# -- the crawler -----------------------------------------------------------------------------


def test_crawler_rejects_unsafe_image_urls(tmp_path: Path) -> None:
    with HostileServer() as server:
        long_url = ORIGIN + "/img/" + "x" * 2100 + ".jpg"
        crawler = _crawler(tmp_path, {ORIGIN: server.base_url})
        rows = _download(crawler, [*UNSAFE_SCHEMES, long_url])

        assert server.connections == 0
    for url in UNSAFE_SCHEMES:
        assert rows[url]["status"] == "http_error", url
        assert "only http and https" in rows[url]["reason"], url
    assert rows[long_url]["status"] == "http_error"
    assert "crawl.max_url_length (2048)" in rows[long_url]["reason"]


def test_unsafe_links_never_requested(tmp_path: Path) -> None:
    links = "".join(f'<a href="{url}">link</a>' for url in UNSAFE_SCHEMES)
    images = "".join(figure(url, f"Melanoma {index}") for index, url in enumerate(UNSAFE_SCHEMES))
    body = page("Melanoma atlas", links + images + figure("/img/ok.jpg", "Melanoma"))
    with HostileServer() as server:
        server.route("/index.html", lambda exchange: exchange.respond(200, body.encode(), {"Content-Type": "text/html"}))
        server.route("/img/ok.jpg", _jpeg_route())
        crawler = _crawler(tmp_path, {ORIGIN: server.base_url})
        result = crawler.crawl([crawler.config.profile("test")])
        crawler.journal_to_close.close()  # type: ignore[attr-defined]

        assert sorted(server.paths) == ["/img/ok.jpg", "/index.html", "/robots.txt"]
    # The page parser drops non-http links and image sources, so they never become candidates.
    assert [(row["url"], row["status"]) for row in result.rows] == [(ORIGIN + "/img/ok.jpg", "downloaded")]
    assert result.pages_failed == {}


def test_start_url_with_file_scheme(tmp_path: Path) -> None:
    profile = {"start_urls": ["file:///etc/passwd"], "allowed_hosts": [""], "max_depth": 0}
    crawler = _crawler(tmp_path, {}, profiles={"test": profile})

    result = crawler.crawl([crawler.config.profile("test")])
    crawler.journal_to_close.close()  # type: ignore[attr-defined]

    assert result.pages_fetched == 0
    assert "only http and https" in result.pages_failed["file:///etc/passwd"]


def test_idn_image_fetched_through_connect_to(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    looked_up = _fake_dns(monkeypatch, {})  # any lookup of a name, punycode or not, would fail
    with HostileServer() as server:
        server.route("/img/a.jpg", _jpeg_route())
        crawler = _crawler(tmp_path, {"http://bücher.example": server.base_url})
        rows = _download(crawler, ["http://bücher.example/img/a.jpg", "http://xn--bcher-kva.example/img/a.jpg"])

        assert server.paths.count("/img/a.jpg") == 2
    assert rows["http://bücher.example/img/a.jpg"]["status"] == "downloaded"
    assert rows["http://xn--bcher-kva.example/img/a.jpg"]["status"] == "downloaded"
    assert all(name == "127.0.0.1" for name in looked_up)


def test_path_traversal_stays_in_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    paths = ["/img/../../etc/passwd", "/img/%2e%2e/%2e%2e/%2e%2e/evil.jpg", "/img/..%2f..%2fevil2.jpg",
             "/img/named.jpg"]  # fmt: skip
    served: list[str] = []

    def photo(exchange: Exchange) -> None:
        # Whatever path arrives (the client may normalise dot segments), a distinct photo comes back.
        served.append(exchange.path)
        body = jpeg_bytes(textured_image(len(served)))
        disposition = 'attachment; filename="../../../evil.jpg"' if len(served) % 2 else 'inline; filename="/tmp/evil.jpg"'
        exchange.respond(200, body, {"Content-Type": "image/jpeg", "Content-Disposition": disposition})

    with HostileServer() as server:
        server.route("*", photo)
        server.route("/robots.txt", lambda exchange: exchange.respond(404))
        crawler = _crawler(tmp_path / "state", {ORIGIN: server.base_url})
        before = set(tmp_path.rglob("*"))
        rows = _download(crawler, [ORIGIN + path for path in paths])
        requested = server.paths

    assert {url: row["status"] for url, row in rows.items() if row["status"] != "downloaded"} == {}, requested
    assert len(served) == len(paths)
    assert "/robots.txt" in requested
    assert list(work.iterdir()) == []
    store = tmp_path / "state" / "store"
    for created in set(tmp_path.rglob("*")) - before:
        if created.is_dir() or created.name.startswith("journal"):
            continue
        assert created.is_relative_to(store), created
        assert created.suffix == ".jpg"
        assert created.parent.name == created.stem[:2]
        assert len(created.stem) == 64
    assert not any("evil" in name or "passwd" in name for _, _, names in os.walk(tmp_path) for name in names)


def test_released_manifest_rejects_private_address(tmp_path: Path) -> None:
    from dermcan.released_manifest_images import collect_released_manifest

    manifest = tmp_path / "manifest.txt"
    manifest.write_text(
        "00001 malignantmelanoma 0.5 0.5 0.2 0.2 http://photos.example.test/a.jpg\n"
        "00002 malignantmelanoma 0.5 0.5 0.2 0.2 ftp://photos.example.test/b.jpg\n",
        encoding="utf-8",
    )
    with HostileServer() as server:
        server.route("/a.jpg", _jpeg_route())
        config = CrawlConfig.from_params(crawl_params(allowed_private_networks=[]))
        store = config.open_image_store(tmp_path / "store")
        result = collect_released_manifest(
            config, {"path": str(manifest), "mirror": None}, store, journal_path=tmp_path / "journal.jsonl",
            crops_dir=tmp_path / "crops", boxes_path=tmp_path / "boxes.csv",
            connect_to={"http://photos.example.test": server.base_url},
        )  # fmt: skip

        assert server.connections == 0
    rows = {row["url"]: row for row in result.rows}
    assert rows["http://photos.example.test/a.jpg"]["status"] == "blocked_site"
    assert "address 127.0.0.1 is loopback" in rows["http://photos.example.test/a.jpg"]["reason"]
    assert result.hosts == []
    boxes = (tmp_path / "boxes.csv").read_text(encoding="utf-8")
    assert "blocked_site" in boxes
