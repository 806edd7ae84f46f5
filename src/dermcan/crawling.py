"""The crawler: site profiles, link following, robots.txt, politeness and per-image outcomes.

A crawl is configured once (:meth:`CrawlConfig.from_params`, params.yaml section ``crawl``) and
then runs site profiles (:class:`SiteProfile`, pure data under ``crawl.profiles.NAME``):

1. Pages are fetched breadth-first from each profile's start URLs, following the profile's
   link rules within its allowed hosts up to ``max_depth`` links away. Each depth is fetched
   in parallel and its results are read in a fixed order, so the same web gives the same
   candidates.
2. Every candidate image URL becomes one manifest row, with the caption and label from the
   first page that shows it. Its status is ``blocked_site`` if its host is blocklisted,
   ``no_keyword`` if no keyword labels it (it is not downloaded), ``disallowed_by_robots``, an
   HTTP failure status, an image-verification status from :mod:`dermcan.image_store`, or
   ``downloaded``.
3. :func:`dermcan.crawl_manifest.finalize_rows` sorts rows, marks exact duplicates and assigns
   near-duplicate groups.

Page links are followed only within a profile's ``allowed_hosts``; images are downloaded from
any host that is not blocklisted, because result pages and atlases serve pictures from other
hosts. robots.txt (user agent token ``robots_user_agent``) is honoured for pages and images.
Downloads run on ``workers`` threads; each host gets at most ``max_per_host`` of them at once,
with ``delay_s`` seconds (or the robots.txt Crawl-delay, if longer) between request starts.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from tqdm import tqdm

from dermcan.crawl_manifest import CrawlJournal, empty_row, finalize_rows
from dermcan.http_fetching import Fetcher, FetchResult, HostGate, HostPolicy, HttpSettings, host_matches, host_of
from dermcan.image_store import ImageRejected, ImageStore
from dermcan.keyword_matching import KeywordMatcher
from dermcan.page_parsing import ExtractionRules, ImageCandidate, parse_page
from dermcan.robots import MAX_ROBOTS_BYTES, RobotsCache, RobotsFetch
from dermcan.url_safety import STATUS_INVALID_URL, ascii_host, ascii_url, parse_networks

log = logging.getLogger(__name__)

_T = TypeVar("_T")

_PROFILE_KEYS = {
    "start_urls", "allowed_hosts", "max_depth", "links", "images", "image_source",
    "full_size_link", "full_size_pattern", "captions", "page_caption", "delay_s", "max_per_host",
}

_PAGE_ACCEPT = "text/html,application/xhtml+xml;q=0.9,*/*;q=0.5"
_IMAGE_ACCEPT = "image/avif,image/webp,image/png,image/jpeg,image/*;q=0.8,*/*;q=0.5"


@dataclass(frozen=True)
class SiteProfile:
    """A site's start URLs, allowed hosts, extraction rules and politeness."""

    name: str
    start_urls: tuple[str, ...]
    allowed_hosts: tuple[str, ...]
    max_depth: int
    rules: ExtractionRules
    politeness: HostPolicy

    @classmethod
    def from_params(cls, name: str, params: Mapping[str, Any]) -> SiteProfile:
        unknown = set(params) - _PROFILE_KEYS
        if unknown:
            raise ValueError(
                f"crawl.profiles.{name} has unknown keys {sorted(unknown)}; "
                f"valid keys are: {', '.join(sorted(_PROFILE_KEYS))}"
            )
        missing = {"start_urls", "allowed_hosts"} - set(params)
        if missing:
            raise ValueError(f"crawl.profiles.{name} is missing {sorted(missing)}")
        rules = ExtractionRules(
            links=tuple(params.get("links", ["//a/@href"])),
            images=tuple(params.get("images", ["//img"])),
            image_source=params.get("image_source", "@src"),
            full_size_link=params.get("full_size_link", "ancestor::a[@href][1]/@href"),
            full_size_pattern=params.get(
                "full_size_pattern", r"(?i)\.(jpe?g|png|gif|webp|bmp|tiff?)$"
            ),
            captions=tuple(params.get("captions", ["ancestor::figure[1]/figcaption", "@alt", "@title"])),
            page_caption=params.get("page_caption", "//title"),
        )
        profile = cls(
            name=name,
            start_urls=tuple(params["start_urls"]),
            allowed_hosts=tuple(str(host).lower() for host in params["allowed_hosts"]),
            max_depth=int(params.get("max_depth", 2)),
            rules=rules,
            politeness=HostPolicy(
                delay_s=float(params.get("delay_s", 1.0)),
                max_per_host=int(params.get("max_per_host", 2)),
            ),
        )
        if not profile.start_urls:
            raise ValueError(f"crawl.profiles.{name}.start_urls is empty")
        if profile.max_depth < 0:
            raise ValueError(f"crawl.profiles.{name}.max_depth must be >= 0, got {profile.max_depth}")
        return profile

    def allows_host(self, url: str) -> bool:
        host = host_of(url)
        return any(host_matches(host, pattern) for pattern in self.allowed_hosts)


@dataclass(frozen=True)
class CrawlConfig:
    """Everything that decides what a crawl fetches and how; built once from params."""

    http: HttpSettings
    robots_user_agent: str
    workers: int
    blocked_hosts: tuple[str, ...]
    max_page_bytes: int
    max_image_bytes: int
    max_image_pixels: int
    min_image_side: int  # pixels; a shorter side is too_small
    max_aspect_ratio: float  # longer side / shorter side; more is bad_aspect_ratio
    jpeg_quality: int
    phash_max_distance: int
    keywords: Mapping[str, Mapping[str, Sequence[str]]]
    profiles: Mapping[str, SiteProfile] = field(default_factory=dict)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> CrawlConfig:
        """Build the configuration from the ``crawl`` section of params.yaml."""
        timeouts = params["timeouts"]
        retries = params["retries"]
        politeness = params["politeness"]
        config = cls(
            http=HttpSettings(
                user_agent=str(params["user_agent"]),
                connect_timeout_s=float(timeouts["connect_s"]),
                read_timeout_s=float(timeouts["read_s"]),
                total_timeout_s=float(timeouts["total_s"]),
                max_redirects=int(params["max_redirects"]),
                max_retries=int(retries["max_retries"]),
                max_timeout_retries=int(retries["max_timeout_retries"]),
                backoff_s=float(retries["backoff_s"]),
                max_backoff_s=float(retries["max_backoff_s"]),
                retry_statuses=frozenset(int(status) for status in retries["statuses"]),
                politeness=HostPolicy(
                    delay_s=float(politeness["delay_s"]),
                    max_per_host=int(politeness["max_per_host"]),
                ),
                max_crawl_delay_s=float(politeness["max_crawl_delay_s"]),
                max_url_length=int(params["max_url_length"]),
                allowed_private_networks=parse_networks(
                    params.get("allowed_private_networks"), setting="crawl.allowed_private_networks"
                ),
            ),
            robots_user_agent=str(params["robots_user_agent"]),
            workers=int(params["workers"]),
            blocked_hosts=tuple(_ascii_host_pattern(str(host)) for host in params.get("blocked_hosts") or ()),
            max_page_bytes=int(params["max_page_bytes"]),
            max_image_bytes=int(params["max_image_bytes"]),
            max_image_pixels=int(params["max_image_pixels"]),
            min_image_side=int(params["min_image_side"]),
            max_aspect_ratio=float(params["max_aspect_ratio"]),
            jpeg_quality=int(params["jpeg_quality"]),
            phash_max_distance=int(params["phash_max_distance"]),
            keywords=params["keywords"],
            profiles={
                name: SiteProfile.from_params(name, profile)
                for name, profile in (params.get("profiles") or {}).items()
            },
        )
        if config.workers < 1:
            raise ValueError(f"crawl.workers must be >= 1, got {config.workers}")
        if config.min_image_side < 1:
            raise ValueError(f"crawl.min_image_side must be >= 1 pixel, got {config.min_image_side}")
        if not config.max_aspect_ratio >= 1.0:
            raise ValueError(f"crawl.max_aspect_ratio must be >= 1.0, got {config.max_aspect_ratio}")
        return config

    def open_image_store(self, root: str | os.PathLike[str]) -> ImageStore:
        """Return the image store at ``root`` with this crawl's size, shape and quality limits."""
        return ImageStore(
            root,
            max_pixels=self.max_image_pixels,
            jpeg_quality=self.jpeg_quality,
            min_side=self.min_image_side,
            max_aspect_ratio=self.max_aspect_ratio,
        )

    def profile(self, name: str) -> SiteProfile:
        if name not in self.profiles:
            raise KeyError(
                f"no crawl profile {name!r}; profiles in params.yaml crawl.profiles: "
                f"{', '.join(sorted(self.profiles)) or 'none'}"
            )
        return self.profiles[name]

    def fingerprint(self, profiles: Sequence[SiteProfile]) -> str:
        """Return a digest of everything that decides a crawl's outcomes (not the worker count)."""
        material = asdict(self)
        material.pop("workers")
        material["profiles"] = [asdict(profile) for profile in profiles]
        text = json.dumps(material, sort_keys=True, default=sorted, ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def is_blocked(self, url: str) -> bool:
        # Hosts and patterns are compared in punycode, so "bücher.example" also blocks
        # "xn--bcher-kva.example". A host that is no valid IDN is compared as written; the URL
        # check rejects it before any request.
        try:
            host = host_of(ascii_url(url))
        except ValueError:
            host = host_of(url)
        return any(host_matches(host, pattern) for pattern in self.blocked_hosts)

    def allowing_networks(self, networks: Sequence[str]) -> CrawlConfig:
        """Return a copy that may also contact addresses in ``networks`` (CIDRs)."""
        allowed = tuple(dict.fromkeys(self.http.allowed_private_networks + parse_networks(
            networks, setting="allowed networks")))
        return dataclasses.replace(self, http=dataclasses.replace(self.http, allowed_private_networks=allowed))


def _ascii_host_pattern(pattern: str) -> str:
    """Return a crawl.blocked_hosts entry ("name[:port]") lower-cased, with its name in punycode."""
    name, colon, port = pattern.strip().lower().partition(":")
    try:
        return ascii_host(name) + colon + port
    except ValueError as error:
        raise ValueError(f"crawl.blocked_hosts: {error}") from None


@dataclass
class CrawlResult:
    """The finalized manifest rows and what the crawl visited."""

    rows: list[dict[str, Any]]
    pages_fetched: int
    pages_failed: dict[str, str]  # page URL -> reason
    hosts: list[str]  # hosts contacted for pages or images, sorted
    resumed_pages: int
    resumed_images: int


class Crawler:
    """Runs site profiles against the web (or a loopback copy of it) and collects manifest rows."""

    def __init__(
        self,
        config: CrawlConfig,
        *,
        store: ImageStore,
        journal: CrawlJournal,
        connect_to: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.journal = journal
        self.gate = HostGate(config.http.politeness)
        for profile in config.profiles.values():
            for host in profile.allowed_hosts:
                self.gate.set_policy(host, profile.politeness)
        self.fetcher = Fetcher(config.http, self.gate, connect_to=dict(connect_to or {}))
        self.robots = RobotsCache(self._fetch_robots, user_agent=config.robots_user_agent)
        self.matcher = KeywordMatcher(config.keywords)
        self._reused: Counter[str] = Counter()  # journal records used, by "page" and "image"
        self._reused_lock = threading.Lock()

    # -- public ---------------------------------------------------------------------------

    def crawl(self, profiles: Sequence[SiteProfile]) -> CrawlResult:
        """Crawl ``profiles`` in order and return the finalized manifest rows."""
        self._reused.clear()
        for profile in profiles:
            for host in profile.allowed_hosts:
                self.gate.set_policy(host, profile.politeness)
        with concurrent.futures.ThreadPoolExecutor(
            max_workers=self.config.workers, thread_name_prefix="crawl"
        ) as pool:
            candidates: dict[str, ImageCandidate] = {}
            pages: dict[str, dict[str, Any]] = {}
            for profile in profiles:
                self._discover(pool, profile, candidates, pages)
            rows = self._process_images(pool, list(candidates.values()))
        self.fetcher.close()

        failed = {url: page["reason"] for url, page in pages.items() if page["status"] != "ok"}
        fetched = [url for url, page in pages.items() if page["status"] == "ok"]
        contacted = {host_of(url) for url in fetched}
        contacted |= {
            host_of(row["url"]) for row in rows
            if row["status"] not in ("no_keyword", "blocked_site", "disallowed_by_robots")
        }
        return CrawlResult(
            rows=finalize_rows(rows, phash_max_distance=self.config.phash_max_distance),
            pages_fetched=len(fetched),
            pages_failed=failed,
            hosts=sorted(contacted),
            resumed_pages=self._reused["page"],
            resumed_images=self._reused["image"],
        )

    def download_images(self, candidates: Sequence[ImageCandidate]) -> tuple[list[dict[str, Any]], int]:
        """Download image URLs that come without pages (released manifests), one row each.

        Each candidate passes the same blocklist, robots.txt, politeness, retry, size and
        verification rules and the same resume journal as a crawled image. Returns the rows in
        candidate order, not finalized (the caller merges them with rows from other sources
        before :func:`dermcan.crawl_manifest.finalize_rows`), and how many came from the journal.
        """
        self._reused.clear()
        with concurrent.futures.ThreadPoolExecutor(
            max_workers=self.config.workers, thread_name_prefix="download"
        ) as pool:
            rows = self._process_images(pool, list(candidates))
        self.fetcher.close()
        return rows, self._reused["image"]

    # -- pages ----------------------------------------------------------------------------

    def _discover(
        self,
        pool: concurrent.futures.Executor,
        profile: SiteProfile,
        candidates: dict[str, ImageCandidate],
        pages: dict[str, dict[str, Any]],
    ) -> None:
        frontier = list(dict.fromkeys(profile.start_urls))
        seen = set(frontier)
        with tqdm(desc=f"pages ({profile.name})", unit="page", disable=None) as progress:
            for depth in range(profile.max_depth + 1):
                progress.total = (progress.total or 0) + len(frontier)
                records = _map_in_order(pool, lambda url: self._page(profile, url), frontier, progress)
                next_frontier: list[str] = []
                for url, record in zip(frontier, records):
                    pages.setdefault(url, record)
                    if record["status"] != "ok":
                        continue
                    for image in record["images"]:
                        candidates.setdefault(image["url"], ImageCandidate(**image))
                    if depth == profile.max_depth:
                        continue
                    for link in record["links"]:
                        if link not in seen and profile.allows_host(link) and not self.config.is_blocked(link):
                            seen.add(link)
                            next_frontier.append(link)
                frontier = next_frontier
                if not frontier:
                    break

    def _page(self, profile: SiteProfile, url: str) -> dict[str, Any]:
        reused = self.journal.pages.get((profile.name, url))
        if reused is not None:
            self._count_reused("page")
            return reused

        record: dict[str, Any] = {
            "type": "page", "profile": profile.name, "url": url, "status": "ok", "reason": "",
            "transient": False, "links": [], "images": [],
        }
        rejection = self._check_page_url(profile, url)
        if rejection is None:
            result = self.fetcher.fetch(
                url, max_bytes=self.config.max_page_bytes, accept=_PAGE_ACCEPT,
                check=lambda target: self._check_page_url(profile, target),
            )
            if result.status == "ok" and not _is_html(result.content_type):
                record.update(status="not_html", reason=f"served as {result.content_type}, not HTML")
            elif result.status == "ok":
                parsed = parse_page(_decode_html(result), result.final_url, profile.rules, self.matcher)
                record["links"] = list(parsed.links)
                record["images"] = [asdict(image) for image in parsed.images]
            else:
                record.update(status=result.status, reason=result.reason, transient=result.transient)
        else:
            record["status"], record["reason"] = rejection
            record["transient"] = self._rejection_is_transient(url, rejection[0])

        if record["status"] != "ok":
            log.warning("page %s not crawled: %s: %s", url, record["status"], record["reason"])
        self.journal.record(record)
        return record

    def _count_reused(self, kind: str) -> None:
        with self._reused_lock:
            self._reused[kind] += 1

    def _check_page_url(self, profile: SiteProfile, url: str) -> tuple[str, str] | None:
        if self.config.is_blocked(url):
            return "blocked_site", f"host {host_of(url)} is on crawl.blocked_hosts"
        if not profile.allows_host(url):
            return "off_site", f"host {host_of(url)} is not in the allowed hosts of profile {profile.name}"
        return self.fetcher.check_url(url) or self._check_robots(url)

    # -- images ---------------------------------------------------------------------------

    def _process_images(
        self, pool: concurrent.futures.Executor, candidates: list[ImageCandidate]
    ) -> list[dict[str, Any]]:
        with tqdm(total=len(candidates), desc="images", unit="image", disable=None) as progress:
            return _map_in_order(pool, self._image, candidates, progress)

    def _image(self, candidate: ImageCandidate) -> dict[str, Any]:
        row = empty_row(
            url=candidate.url, page_url=candidate.page_url, caption=candidate.caption,
            keyword=candidate.keyword, language=candidate.language, label=candidate.label,
        )
        if self.config.is_blocked(candidate.url):
            row.update(status="blocked_site", reason=f"host {host_of(candidate.url)} is on crawl.blocked_hosts")
            return row
        if not candidate.label:
            row.update(status="no_keyword", reason="no keyword in the caption, alt text, title or page title")
            return row

        reused = self.journal.images.get(candidate.url)
        if reused is not None:
            self._count_reused("image")
            row.update(reused["outcome"])
            return row

        transient = False
        rejection = self._check_image_url(candidate.url)
        if rejection is not None:
            row["status"], row["reason"] = rejection
            transient = self._rejection_is_transient(candidate.url, rejection[0])
        else:
            result = self.fetcher.fetch(
                candidate.url, max_bytes=self.config.max_image_bytes, accept=_IMAGE_ACCEPT,
                check=self._check_image_url,
            )
            transient = result.transient
            row.update(self._outcome(result))

        outcome = {key: row[key] for key in ("status", "reason", "sha256", "phash", "width", "height", "bytes")}
        self.journal.record({"type": "image", "url": candidate.url, "transient": transient, "outcome": outcome})
        if row["status"] not in ("downloaded", "no_keyword"):
            log.info("image %s: %s: %s", candidate.url, row["status"], row["reason"])
        return row

    def _outcome(self, result: FetchResult) -> dict[str, Any]:
        if result.status != "ok":
            return {"status": result.status, "reason": result.reason}
        try:
            stored = self.store.store(result.content)
        except ImageRejected as rejected:
            served = f" (served as {result.content_type})" if result.content_type else ""
            return {"status": rejected.status, "reason": rejected.reason + served, "bytes": len(result.content)}
        return {
            "status": "downloaded", "sha256": stored.sha256, "phash": stored.phash,
            "width": stored.width, "height": stored.height, "bytes": stored.bytes,
        }

    def _check_image_url(self, url: str) -> tuple[str, str] | None:
        if self.config.is_blocked(url):
            return "blocked_site", f"host {host_of(url)} is on crawl.blocked_hosts"
        # Scheme, length, host name and address come before robots.txt, which is a request too.
        return self.fetcher.check_url(url) or self._check_robots(url)

    def _rejection_is_transient(self, url: str, status: str) -> bool:
        """Return whether a rerun should check a rejected ``url`` again.

        That is so when robots.txt could not be fetched, and for a URL rejected as invalid,
        because that status also covers a host name that did not resolve this time.
        """
        if status == "disallowed_by_robots":
            return self._robots_unavailable(url)
        return status == STATUS_INVALID_URL

    # -- robots.txt -----------------------------------------------------------------------

    def _check_robots(self, url: str) -> tuple[str, str] | None:
        rules = self.robots.rules_for(url)
        delay = rules.crawl_delay(self.config.robots_user_agent)
        if delay:
            self.gate.set_min_delay(host_of(url), min(delay, self.config.http.max_crawl_delay_s))
        if rules.can_fetch(url, self.config.robots_user_agent):
            return None
        return "disallowed_by_robots", f"robots.txt of {host_of(url)} disallows it ({rules.note})"

    def _robots_unavailable(self, url: str) -> bool:
        """Return whether ``url``'s robots.txt could not be fetched, so a rerun should ask again."""
        return not self.config.is_blocked(url) and self.robots.rules_for(url).unavailable

    def _fetch_robots(self, robots_url: str) -> RobotsFetch:
        result = self.fetcher.fetch(robots_url, max_bytes=MAX_ROBOTS_BYTES, accept="text/plain", truncate=True)
        if result.status == "ok":
            return RobotsFetch(body=result.content, http_status=result.http_status)
        return RobotsFetch(body=None, http_status=result.http_status)


def open_journal(
    path: str | os.PathLike[str], config: CrawlConfig, profiles: Sequence[SiteProfile], store: ImageStore
) -> CrawlJournal:
    """Open the resume journal at ``path`` for crawling ``profiles``.

    When the journal was written with other settings, it starts afresh and ``store`` is emptied,
    because the store would otherwise reuse files encoded with the old settings.
    """
    journal = CrawlJournal(path, fingerprint=config.fingerprint(profiles))
    if journal.started_afresh and store.root.exists():
        log.info("emptying the image store %s for a fresh crawl", store.root)
        shutil.rmtree(store.root)
    elif not journal.started_afresh:
        log.info("resuming from %s: %d pages and %d images already done",
                 path, len(journal.pages), len(journal.images))
    return journal


def _map_in_order(
    pool: concurrent.futures.Executor,
    function: Callable[[Any], _T],
    items: Iterable[Any],
    progress: tqdm,
) -> list[_T]:
    """Run ``function`` on ``items`` in ``pool`` and return the results in item order.

    ``progress`` ticks once per finished item, in completion order. The first exception (a
    full disk, say) cancels the items not yet started and is raised at once.
    """
    futures = [pool.submit(function, item) for item in items]
    for finished in concurrent.futures.as_completed(futures):
        progress.update(1)
        if finished.exception() is not None:
            for future in futures:
                future.cancel()
            raise finished.exception()  # type: ignore[misc]
    return [future.result() for future in futures]


def _is_html(content_type: str) -> bool:
    """Return whether a page's Content-Type is HTML. A missing Content-Type counts as HTML."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type in ("", "text/html", "application/xhtml+xml")


def _decode_html(result: FetchResult) -> str | bytes:
    """Decode a page by its Content-Type charset, else as UTF-8, else leave the bytes to lxml."""
    content_type = result.content_type.lower()
    if "charset=" in content_type:
        charset = content_type.split("charset=", 1)[1].split(";")[0].strip().strip('"')
        try:
            return result.content.decode(charset)
        except (LookupError, UnicodeDecodeError):
            pass
    try:
        return result.content.decode("utf-8")
    except UnicodeDecodeError:
        return result.content
