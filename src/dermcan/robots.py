"""robots.txt rules per origin, parsed with protego and cached for the crawl.

Fetch outcomes become rules as RFC 9309 section 2.3.1 sets out. A 2xx body is parsed, and any
4xx (including 404) allows everything. A 5xx or a network failure after the fetcher's retries
disallows everything on that origin for this crawl.
"""

from __future__ import annotations

import logging
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

from protego import Protego

log = logging.getLogger(__name__)

# RFC 9309 section 2.5: a crawler's parsing limit must be at least 500 KiB; the rest is ignored.
MAX_ROBOTS_BYTES = 500 * 1024


@dataclass(frozen=True)
class RobotsFetch:
    """The outcome of fetching one robots.txt: a 2xx body, or an HTTP status, or neither."""

    body: bytes | None
    http_status: int | None  # None when no response came (timeout, refused connection)


@dataclass(frozen=True)
class RobotsRules:
    """The rules of one origin."""

    parser: Protego | None
    allow_all: bool
    note: str  # why these rules: "parsed", "HTTP 404: everything allowed", ...
    unavailable: bool = False  # True when robots.txt could not be fetched (5xx, no response)

    def can_fetch(self, url: str, user_agent: str) -> bool:
        if self.parser is None:
            return self.allow_all
        return bool(self.parser.can_fetch(url, user_agent))

    def crawl_delay(self, user_agent: str) -> float | None:
        if self.parser is None:
            return None
        delay = self.parser.crawl_delay(user_agent)
        return float(delay) if delay is not None else None


def origin_of(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def rules_from_fetch(fetch: RobotsFetch) -> RobotsRules:
    if fetch.body is not None:
        text = fetch.body[:MAX_ROBOTS_BYTES].decode("utf-8", errors="replace")
        return RobotsRules(parser=Protego.parse(text), allow_all=True, note="parsed")
    if fetch.http_status is not None and 400 <= fetch.http_status < 500:
        return RobotsRules(
            parser=None, allow_all=True, note=f"HTTP {fetch.http_status}: everything allowed"
        )
    described = f"HTTP {fetch.http_status}" if fetch.http_status is not None else "no response"
    return RobotsRules(
        parser=None, allow_all=False, note=f"{described}: everything disallowed", unavailable=True
    )


class RobotsCache:
    """Cache of robots.txt rules by origin; each robots.txt is fetched once, on first use.

    ``fetch_robots`` gets the robots.txt URL and returns a :class:`RobotsFetch`. Threads asking
    about the same origin wait for one fetch.
    """

    def __init__(self, fetch_robots: Callable[[str], RobotsFetch], *, user_agent: str) -> None:
        self._fetch_robots = fetch_robots
        self.user_agent = user_agent
        self._rules: dict[str, RobotsRules] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def rules_for(self, url: str) -> RobotsRules:
        origin = origin_of(url)
        with self._guard:
            rules = self._rules.get(origin)
            if rules is not None:
                return rules
            lock = self._locks.setdefault(origin, threading.Lock())
        with lock:
            with self._guard:
                rules = self._rules.get(origin)
            if rules is None:
                rules = rules_from_fetch(self._fetch_robots(origin + "/robots.txt"))
                log.info("robots.txt of %s: %s", origin, rules.note)
                with self._guard:
                    self._rules[origin] = rules
        return rules

    def can_fetch(self, url: str) -> bool:
        return self.rules_for(url).can_fetch(url, self.user_agent)

    def crawl_delay(self, url: str) -> float | None:
        return self.rules_for(url).crawl_delay(self.user_agent)
