"""The crawler against loopback sites: statuses, robots.txt, retries, politeness, resume, keywords."""

from __future__ import annotations

import http.server
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from crawl_sites import (
    BLOCKED_IMAGE,
    BLOCKED_ORIGIN,
    EXPECTED_STATUS,
    ORIGIN,
    REPO,
    crawl_params,
    figure,
    jpeg_bytes,
    page,
    textured_image,
    write_noise_site,
)
from dermcan.classes import NAMES_BY_LANGUAGE
from dermcan.crawl_manifest import CrawlJournal
from dermcan.crawling import CrawlConfig, Crawler, CrawlResult, SiteProfile, open_journal
from dermcan.http_fetching import Fetcher, HostGate, HostPolicy
from dermcan.image_store import ImageStore
from dermcan.keyword_matching import KeywordMatcher
from dermcan.loopback_server import LoopbackSite, serve_site
from dermcan.params import load_params


@dataclass
class NoiseCrawl:
    site: LoopbackSite
    blocked_site: LoopbackSite
    result: CrawlResult
    rows: dict[str, dict[str, Any]]  # by URL path
    store: ImageStore
    state: Path
    root: Path


def _crawl(
    params: dict[str, Any], state: Path, connect_to: dict[str, str]
) -> tuple[CrawlResult, ImageStore]:
    config = CrawlConfig.from_params(params)
    profiles = [config.profile("test")]
    store = ImageStore(state / "images", max_pixels=config.max_image_pixels, jpeg_quality=config.jpeg_quality)
    journal = open_journal(state / "journal.jsonl", config, profiles, store)
    try:
        result = Crawler(config, store=store, journal=journal, connect_to=connect_to).crawl(profiles)
    finally:
        journal.close()
    return result, store


@pytest.fixture(scope="module")
def noise_crawl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NoiseCrawl]:
    root = tmp_path_factory.mktemp("site")
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    state = tmp_path_factory.mktemp("state")
    write_noise_site(root)
    (elsewhere / "img").mkdir()
    (elsewhere / "img" / "elsewhere.jpg").write_bytes(jpeg_bytes(textured_image(12)))
    with serve_site(root) as site, serve_site(elsewhere) as blocked_site:
        connect_to = {ORIGIN: site.base_url, BLOCKED_ORIGIN: blocked_site.base_url}
        result, store = _crawl(crawl_params(), state, connect_to)
        rows = {row["url"].removeprefix(ORIGIN): row for row in result.rows}
        yield NoiseCrawl(site, blocked_site, result, rows, store, state, root)


# -- statuses --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(EXPECTED_STATUS))
def test_route_gives_status(noise_crawl: NoiseCrawl, path: str) -> None:
    row = noise_crawl.rows[path]
    assert row["status"] == EXPECTED_STATUS[path], row["reason"]


def test_blocked_host_never_contacted(noise_crawl: NoiseCrawl) -> None:
    row = noise_crawl.rows[BLOCKED_IMAGE]
    assert row["status"] == "blocked_site"
    assert noise_crawl.blocked_site.requests == []


def test_manifest_has_no_extra_rows(noise_crawl: NoiseCrawl) -> None:
    assert set(noise_crawl.rows) == set(EXPECTED_STATUS) | {BLOCKED_IMAGE}
    urls = [row["url"] for row in noise_crawl.result.rows]
    assert urls == sorted(urls)


def test_robots_disallowed_paths_never_requested(noise_crawl: NoiseCrawl) -> None:
    requested = noise_crawl.site.requests
    assert "/robots.txt" in requested
    assert not [path for path in requested if path.startswith("/private/")]
    assert "robots.txt" in noise_crawl.rows["/private/secret.jpg"]["reason"]


def test_503_retried_and_404_not(noise_crawl: NoiseCrawl) -> None:
    counts = Counter(noise_crawl.site.requests)
    assert counts["/img/busy.jpg"] == 3  # one attempt and max_retries 2
    assert counts["/img/missing.jpg"] == 1
    assert "HTTP 503 after 3 attempts" in noise_crawl.rows["/img/busy.jpg"]["reason"]
    assert noise_crawl.rows["/img/missing.jpg"]["reason"] == "HTTP 404"


def test_timeout_retried_once(noise_crawl: NoiseCrawl) -> None:
    assert Counter(noise_crawl.site.requests)["/img/slow.jpg"] == 2  # max_timeout_retries 1


def test_redirect_limit_counts_hops(noise_crawl: NoiseCrawl) -> None:
    counts = Counter(noise_crawl.site.requests)
    assert counts["/img/loop-a.jpg"] + counts["/img/loop-b.jpg"] == 4  # max_redirects 3, plus the first
    assert "more than 3 redirects" in noise_crawl.rows["/img/loop-a.jpg"]["reason"]


def test_redirected_image_stored(noise_crawl: NoiseCrawl) -> None:
    target = (noise_crawl.root / "img" / "target.jpg").read_bytes()
    row = noise_crawl.rows["/img/hop.jpg"]
    assert noise_crawl.store.path_for(row["sha256"]).is_file()
    assert row["bytes"] == len(target)


def test_oversized_reasons(noise_crawl: NoiseCrawl) -> None:
    assert "1000000 pixels" in noise_crawl.rows["/img/bomb.png"]["reason"]
    assert "Content-Length" in noise_crawl.rows["/img/big.jpg"]["reason"]


def test_exact_duplicate_stored_once(noise_crawl: NoiseCrawl) -> None:
    first, second = noise_crawl.rows["/img/a-copy.jpg"], noise_crawl.rows["/img/b-original.jpg"]
    assert first["sha256"] == second["sha256"]
    assert second["reason"] == f"same bytes as {ORIGIN}/img/a-copy.jpg"
    assert second["dup_group"] == first["dup_group"] == first["sha256"]
    stored = [path.stem for path in noise_crawl.store.root.rglob("*.jpg")]
    assert stored.count(first["sha256"]) == 1
    downloaded = {row["sha256"] for row in noise_crawl.result.rows if row["status"] == "downloaded"}
    assert len(stored) == len(downloaded)


def test_thumbnail_link_gives_full_size(noise_crawl: NoiseCrawl) -> None:
    assert "/img/thumb.jpg" not in noise_crawl.site.requests
    row = noise_crawl.rows["/img/full.jpg"]
    assert row["caption"] == "Hämangiom am Rücken"  # empty figcaption, so the alt text
    assert (row["label"], row["language"]) == ("hemangioma", "de")
    assert (row["width"], row["height"]) == (160, 120)


def test_korean_caption_matches(noise_crawl: NoiseCrawl) -> None:
    row = noise_crawl.rows["/img/ko.jpg"]
    assert row["label"] == "malignantmelanoma"
    assert row["language"] == "ko"
    assert row["keyword"] == "흑색종"


def test_depth_limit_stops_links(noise_crawl: NoiseCrawl) -> None:
    assert "/page-1.html" in noise_crawl.site.requests
    assert "/page-2.html" not in noise_crawl.site.requests
    assert noise_crawl.rows["/img/deep.jpg"]["page_url"] == ORIGIN + "/page-1.html"


def test_hosts_listed_without_port(noise_crawl: NoiseCrawl) -> None:
    assert noise_crawl.result.hosts == ["site.test"]
    assert all("127.0.0.1" not in row["url"] for row in noise_crawl.result.rows)


# -- resume ----------------------------------------------------------------------------------


def test_rerun_reuses_journal(noise_crawl: NoiseCrawl) -> None:
    with serve_site(noise_crawl.root) as site, serve_site(noise_crawl.root) as blocked_site:
        connect_to = {ORIGIN: site.base_url, BLOCKED_ORIGIN: blocked_site.base_url}
        result, _ = _crawl(crawl_params(), noise_crawl.state, connect_to)
        requested = site.requests
    assert result.rows == noise_crawl.result.rows
    # Only transient failures are fetched again: the 503 route and the slow one.
    assert sorted(set(requested) - {"/robots.txt"}) == ["/img/busy.jpg", "/img/slow.jpg"]
    assert result.resumed_pages == 3  # index, page-1 and the disallowed /private/page.html


def test_changed_settings_start_afresh(tmp_path: Path) -> None:
    config = CrawlConfig.from_params(crawl_params())
    profiles = [config.profile("test")]
    store = ImageStore(tmp_path / "images", max_pixels=1000, jpeg_quality=90)
    store.root.mkdir(parents=True)
    CrawlJournal(tmp_path / "journal.jsonl", fingerprint="old settings").close()
    journal = open_journal(tmp_path / "journal.jsonl", config, profiles, store)
    journal.close()
    assert journal.started_afresh
    assert not store.root.exists()


def test_journal_ignores_cut_line(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    journal = CrawlJournal(path, fingerprint="f")
    journal.record({"type": "image", "url": "http://a.test/1.jpg", "transient": False, "outcome": {}})
    journal.record({"type": "image", "url": "http://a.test/2.jpg", "transient": True, "outcome": {}})
    journal.close()
    with open(path, "a", encoding="utf-8") as handle:
        handle.write('{"type": "image", "url": "http://a.test/3.jp')
    reopened = CrawlJournal(path, fingerprint="f")
    reopened.close()
    assert not reopened.started_afresh
    assert list(reopened.images) == ["http://a.test/1.jpg"]
    assert path.read_text(encoding="utf-8").endswith("}\n")


# -- downloads -------------------------------------------------------------------------------


class _EndlessImage(http.server.BaseHTTPRequestHandler):
    """Sends an image body without Content-Length, so only the stream reveals its size."""

    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:  # noqa: N802 - name fixed by http.server
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.end_headers()
        try:
            for _ in range(64):
                self.wfile.write(b"\xff" * 16384)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - fixed by the base class
        pass


def test_stream_past_limit_aborted() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EndlessImage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        config = CrawlConfig.from_params(crawl_params())
        fetcher = Fetcher(config.http, HostGate(HostPolicy(delay_s=0.0, max_per_host=2)))
        result = fetcher.fetch(f"http://127.0.0.1:{server.server_port}/x.jpg", max_bytes=100_000)
        fetcher.close()
    finally:
        server.shutdown()
        server.server_close()
    assert result.status == "too_large"
    assert "aborted" in result.reason
    assert result.content == b""


def test_gate_limits_and_spaces_requests() -> None:
    gate = HostGate(HostPolicy(delay_s=0.05, max_per_host=2))
    active = 0
    peak = 0
    starts: list[float] = []
    lock = threading.Lock()

    def request() -> None:
        nonlocal active, peak
        with gate.slot("a.test"):
            with lock:
                active += 1
                peak = max(peak, active)
                starts.append(time.monotonic())
            time.sleep(0.1)
            with lock:
                active -= 1

    threads = [threading.Thread(target=request) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    starts.sort()
    assert peak == 2
    assert min(later - earlier for earlier, later in zip(starts, starts[1:])) >= 0.045


def test_politeness_delay_slows_crawl(tmp_path: Path) -> None:
    root = tmp_path / "site"
    (root / "img").mkdir(parents=True)
    figures = ""
    for index in range(4):
        (root / "img" / f"{index}.jpg").write_bytes(jpeg_bytes(textured_image(20 + index)))
        figures += figure(f"/img/{index}.jpg", f"melanoma {index}")
    (root / "index.html").write_text(page("Melanoma", figures), encoding="utf-8")
    params = crawl_params()
    params["profiles"]["test"]["delay_s"] = 0.2
    with serve_site(root) as site:
        started = time.monotonic()
        result, _ = _crawl(params, tmp_path / "state", {ORIGIN: site.base_url})
        elapsed = time.monotonic() - started
    # robots.txt, the page and four images: six request starts 0.2 s apart.
    assert elapsed >= 1.0
    assert [row["status"] for row in result.rows] == ["downloaded"] * 4


# -- keywords and profiles -------------------------------------------------------------------


@pytest.fixture(scope="module")
def matcher() -> KeywordMatcher:
    return KeywordMatcher(load_params("crawl.keywords", REPO / "params.yaml"))


def test_params_cover_class_names() -> None:
    keywords = load_params("crawl.keywords", REPO / "params.yaml")
    for label, by_language in NAMES_BY_LANGUAGE.items():
        for language, names in by_language.items():
            for name in names:
                assert name in keywords[label][language], f"{label}/{language}: {name}"


def test_korean_keyword_language(matcher: KeywordMatcher) -> None:
    match = matcher.match("정강이의 흑색종은 드물다")
    assert match is not None
    assert match.label == "malignantmelanoma"
    assert match.language == "ko"


def test_longest_keyword_wins(matcher: KeywordMatcher) -> None:
    in_situ = matcher.match("Squamous cell carcinoma in situ of the lip")
    spanish = matcher.match("melanoma maligno en la espalda")
    assert in_situ is not None and in_situ.label == "intraepithelialcarcinoma"
    assert spanish is not None and (spanish.label, spanish.language) == ("malignantmelanoma", "es")


def test_matching_ignores_case_and_width(matcher: KeywordMatcher) -> None:
    full_width = matcher.match("ＭＥＬＡＮＯＭＡ")
    typographic = matcher.match("BOWEN’S DISEASE")
    assert full_width is not None and full_width.keyword == "melanoma"
    assert typographic is not None and typographic.label == "intraepithelialcarcinoma"


def test_latin_keywords_match_whole_words(matcher: KeywordMatcher) -> None:
    assert matcher.match("molecule diagram") is None
    plural = matcher.match("Moles on the arm")
    assert plural is not None and plural.label == "melanocyticnevus"
    assert matcher.match("no diagnosis here") is None


def test_keyword_in_two_classes_rejected() -> None:
    with pytest.raises(ValueError, match="both"):
        KeywordMatcher({"hemangioma": {"en": ["angioma"]}, "pyogenicgranuloma": {"en": ["Angioma"]}})


def test_unknown_profile_key_rejected() -> None:
    with pytest.raises(ValueError, match="valid keys"):
        SiteProfile.from_params("x", {"start_urls": ["http://a.test/"], "allowed_hosts": ["a.test"], "depth": 2})


def test_invalid_xpath_rejected() -> None:
    with pytest.raises(ValueError, match="invalid XPath"):
        SiteProfile.from_params(
            "x", {"start_urls": ["http://a.test/"], "allowed_hosts": ["a.test"], "links": ["//a[@href"]}
        )


def test_unknown_profile_name_lists_profiles() -> None:
    config = CrawlConfig.from_params(crawl_params())
    with pytest.raises(KeyError, match="test"):
        config.profile("atlas")


def test_page_title_only_for_uncaptioned_images(tmp_path: Path) -> None:
    root = tmp_path / "site"
    (root / "img").mkdir(parents=True)
    for name in ("bare", "staff"):
        (root / "img" / f"{name}.jpg").write_bytes(jpeg_bytes(textured_image(len(name))))
    body = '<img src="/img/bare.jpg">' + figure("/img/staff.jpg", "Our clinic team")
    (root / "index.html").write_text(page("Pyogenic granuloma gallery", body), encoding="utf-8")
    with serve_site(root) as site:
        result, _ = _crawl(crawl_params(), tmp_path / "state", {ORIGIN: site.base_url})
    rows = {row["url"].removeprefix(ORIGIN): row for row in result.rows}
    assert rows["/img/bare.jpg"]["label"] == "pyogenicgranuloma"
    assert rows["/img/bare.jpg"]["caption"] == "Pyogenic granuloma gallery"
    assert rows["/img/staff.jpg"]["status"] == "no_keyword"
    assert "/img/staff.jpg" not in site.requests


def _one_image_site(root: Path) -> None:
    (root / "private").mkdir(parents=True)
    (root / "private" / "a.jpg").write_bytes(jpeg_bytes(textured_image(30)))
    (root / "index.html").write_text(page("Melanoma", figure("/private/a.jpg", "melanoma")), encoding="utf-8")


def test_long_robots_txt_still_honoured(tmp_path: Path) -> None:
    root = tmp_path / "site"
    _one_image_site(root)
    filler = "# padding past the 500 KiB parsing limit\n" * 20_000
    (root / "robots.txt").write_text("User-agent: *\nDisallow: /private/\n" + filler, encoding="utf-8")
    assert (root / "robots.txt").stat().st_size > 500 * 1024
    with serve_site(root) as site:
        result, _ = _crawl(crawl_params(), tmp_path / "state", {ORIGIN: site.base_url})
    assert [row["status"] for row in result.rows] == ["disallowed_by_robots"]
    assert "/private/a.jpg" not in site.requests


def test_robots_503_disallows_origin(tmp_path: Path) -> None:
    root = tmp_path / "site"
    _one_image_site(root)
    (root / "_routes.json").write_text('{"statuses": {"/robots.txt": 503}}', encoding="utf-8")
    with serve_site(root) as site:
        result, _ = _crawl(crawl_params(), tmp_path / "state", {ORIGIN: site.base_url})
    assert result.rows == []
    assert "everything disallowed" in result.pages_failed[ORIGIN + "/index.html"]
    assert Counter(site.requests) == {"/robots.txt": 3}
