"""HTTP downloads for the crawler: per-host politeness, timeouts, size limits, retries, redirects.

A download never raises for what a server does: :meth:`Fetcher.fetch` returns a
:class:`FetchResult` whose ``status`` is ``ok`` or a crawl manifest status (``http_error``,
``timeout``, ``too_large``, ``too_many_redirects``, or whatever the caller's URL check returns
for a redirect target, such as ``blocked_site``).

Retries: a response status in ``retry_statuses`` (5xx, 429) and a failed connection are
retried up to ``max_retries`` times, a timeout up to ``max_timeout_retries`` times, with
exponential backoff (``backoff_s``, doubled each retry, or the server's Retry-After if longer,
capped at ``max_backoff_s``; Retry-After may be seconds or an HTTP date). Other 4xx statuses
are never retried.

Every URL, redirect targets included, passes :mod:`dermcan.url_safety` before it is requested:
http(s) only, at most ``max_url_length`` characters, a valid host name, and public addresses
only unless ``allowed_private_networks`` contains them. The address check runs on the origin
actually contacted (after ``connect_to``), and again on the peer of every new connection.

``total_timeout_s`` bounds one response from the request to the last byte: a timer shuts the
socket down when it expires, so a server that trickles bytes (each within ``read_timeout_s``)
cannot hold a download open. Size limits count decoded bytes, so a gzip bomb is cut off.

URLs are handled in canonical form. ``connect_to`` maps a canonical origin to the origin
actually contacted, like curl's ``--connect-to``: the demo web is crawled as
``http://demo-web.test`` while the server listens on an ephemeral port of 127.0.0.1, so
manifests and resume journals do not depend on the port.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import datetime
import email.errors
import email.utils
import logging
import os
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import requests
import requests.adapters
import urllib3.connection
import urllib3.connectionpool
import urllib3.exceptions

from dermcan.url_safety import AddressPolicy, ascii_url, check_url_form, host_and_port

log = logging.getLogger(__name__)

# Small pieces keep the size check close to the limit; the total timeout does not depend on it.
_CHUNK_BYTES = 16 * 1024
_POOLED_HOSTS = 64  # hosts whose idle connections are kept
_POOLED_PER_HOST = 64  # idle connections kept per host; the gate caps how many are in use


@dataclass(frozen=True)
class HostPolicy:
    """Politeness towards one host: concurrent requests and seconds between request starts."""

    delay_s: float
    max_per_host: int


@dataclass(frozen=True)
class HttpSettings:
    """Timeouts, limits and retry rules shared by every download of a crawl."""

    user_agent: str
    connect_timeout_s: float
    read_timeout_s: float  # maximum wait for the next bytes of a response
    total_timeout_s: float  # maximum time for one response, headers to last byte
    max_redirects: int
    max_retries: int
    max_timeout_retries: int
    backoff_s: float
    max_backoff_s: float
    retry_statuses: frozenset[int]
    politeness: HostPolicy
    max_crawl_delay_s: float  # cap on a robots.txt Crawl-delay
    max_url_length: int = 2048  # longer URLs are rejected before any request
    allowed_private_networks: tuple[str, ...] = ()  # CIDRs exempt from the public-address rule


# A URL check returns None to go ahead, or (status, reason) to stop before requesting the URL.
UrlCheck = Callable[[str], "tuple[str, str] | None"]


@dataclass
class FetchResult:
    """The outcome of one download, after redirects and retries."""

    url: str  # canonical, as requested
    final_url: str  # canonical, after redirects
    status: str  # "ok" or a manifest status
    reason: str = ""
    content: bytes = b""
    content_type: str = ""
    http_status: int | None = None
    attempts: int = 0
    transient: bool = False  # True when a later rerun may succeed (timeouts, 5xx, no connection)


def host_of(url: str) -> str:
    """Return the lower-case ``host[:port]`` of ``url``."""
    return urllib.parse.urlsplit(url).netloc.lower()


def host_matches(host: str, pattern: str) -> bool:
    """Return whether ``host`` ("name[:port]") is ``pattern`` or a subdomain of it.

    A pattern with a port matches that port only; one without matches every port.
    """
    pattern = pattern.lower().strip()
    if ":" in pattern:
        return host == pattern
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return name == pattern or name.endswith("." + pattern)


class HostGate:
    """Limits concurrent requests per host and spaces out their starts."""

    def __init__(self, default: HostPolicy) -> None:
        self._default = default
        self._overrides: dict[str, HostPolicy] = {}
        self._guard = threading.Lock()
        self._semaphores: dict[str, threading.Semaphore] = {}
        self._next_start: dict[str, float] = {}
        self._extra_delay: dict[str, float] = {}

    def policy_for(self, host: str) -> HostPolicy:
        with self._guard:
            overrides = list(self._overrides.items())
        for pattern, policy in overrides:
            if host_matches(host, pattern):
                return policy
        return self._default

    def set_policy(self, pattern: str, policy: HostPolicy) -> None:
        """Use ``policy`` for hosts matching ``pattern`` (see :func:`host_matches`) from now on."""
        with self._guard:
            self._overrides[pattern.lower()] = policy

    def set_min_delay(self, host: str, delay_s: float) -> None:
        """Raise the delay between request starts on ``host`` to at least ``delay_s``."""
        with self._guard:
            self._extra_delay[host] = max(delay_s, self._extra_delay.get(host, 0.0))

    @contextlib.contextmanager
    def slot(self, host: str) -> Iterator[None]:
        policy = self.policy_for(host)
        with self._guard:
            semaphore = self._semaphores.setdefault(
                host, threading.Semaphore(max(1, policy.max_per_host))
            )
        with semaphore:
            with self._guard:
                delay = max(policy.delay_s, self._extra_delay.get(host, 0.0))
                now = time.monotonic()
                start = max(now, self._next_start.get(host, now))
                self._next_start[host] = start + delay
            if start > now:
                time.sleep(start - now)
            yield


@dataclass
class _Attempt:
    kind: str  # "ok", "redirect", "http", "timeout", "connection", "too_large", "invalid", "blocked"
    reason: str = ""
    content: bytes = b""
    content_type: str = ""
    http_status: int | None = None
    location: str = ""
    retry_after_s: float | None = None


@dataclass
class Fetcher:
    """Downloads URLs politely; safe to share between threads."""

    settings: HttpSettings
    gate: HostGate
    connect_to: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._sessions_lock = threading.Lock()
        self._forward = {
            ascii_url(canonical.rstrip("/")).lower(): actual.rstrip("/") for canonical, actual in self.connect_to.items()
        }
        self._reverse = {
            actual.rstrip("/").lower(): canonical.rstrip("/") for canonical, actual in self.connect_to.items()
        }
        self._addresses = AddressPolicy(self.settings.allowed_private_networks)
        # One connection pool for every thread: with a pool per thread, each worker kept its own
        # idle keep-alive connection to each host, so a host saw as many open connections as
        # there are workers however low its max_per_host. Shared, a host never has more open
        # connections than requests the gate lets run at once.
        self._adapter = _GuardedAdapter(pool_connections=_POOLED_HOSTS, pool_maxsize=_POOLED_PER_HOST)
        # A session that trusts the environment rereads the proxy variables (two passes over
        # os.environ) and looks for a .netrc file on every request. The crawler reads the proxy
        # variables once per origin and the CA bundle variables once, and sends no .netrc
        # credentials to the hosts that pages link to.
        self._proxies_by_origin: dict[str, dict[str, str]] = {}
        self._verify: str | bool = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True

    # -- URL mapping ----------------------------------------------------------------------

    def to_actual(self, url: str) -> str:
        """Return the URL actually requested for canonical ``url``: ASCII host, ``connect_to`` applied."""
        return _swap_origin(ascii_url(url), self._forward)

    def to_canonical(self, url: str) -> str:
        return _swap_origin(url, self._reverse)

    def check_url(self, url: str) -> tuple[str, str] | None:
        """Return None when canonical ``url`` may be requested, else ``(status, reason)``.

        Checks the URL's form (:func:`dermcan.url_safety.check_url_form`), then resolves the
        host actually contacted and checks its addresses. Sends nothing to the host.
        """
        rejection = check_url_form(url, max_length=self.settings.max_url_length)
        if rejection is not None:
            return rejection
        actual = self.to_actual(url)
        rejection = check_url_form(actual, max_length=max(self.settings.max_url_length, len(actual)))
        if rejection is not None:
            return rejection
        host, port = host_and_port(actual)
        return self._addresses.check_host(host, port)

    # -- downloads ------------------------------------------------------------------------

    def fetch(
        self,
        url: str,
        *,
        max_bytes: int,
        accept: str = "*/*",
        check: UrlCheck | None = None,
        truncate: bool = False,
    ) -> FetchResult:
        """Download ``url`` (canonical), following redirects.

        Every URL, the first included, must pass :meth:`check_url`; ``check`` vets each redirect
        target after that. A body over ``max_bytes`` gives ``too_large``, or with ``truncate``
        its first ``max_bytes`` bytes (robots.txt is read that way).
        """
        current = url
        redirects = 0
        attempts = 0
        while True:
            rejection = self.check_url(current)
            if rejection is not None:
                status, reason = rejection
                if current != url:
                    reason = f"redirect target {current}: {reason}"
                return FetchResult(url, current, status, reason, attempts=attempts)
            if check is not None and current != url:
                rejection = check(current)
                if rejection is not None:
                    status, reason = rejection
                    return FetchResult(url, current, status, f"redirect target {current}: {reason}", attempts=attempts)
            attempt, used = self._get_with_retries(current, max_bytes=max_bytes, accept=accept, truncate=truncate)
            attempts += used
            if attempt.kind == "redirect":
                if redirects >= self.settings.max_redirects:
                    return FetchResult(
                        url, current, "too_many_redirects",
                        f"more than {self.settings.max_redirects} redirects (last to {attempt.location})",
                        http_status=attempt.http_status, attempts=attempts,
                    )
                redirects += 1
                current = attempt.location
                continue
            return self._result(url, current, attempt, attempts)

    def _result(self, url: str, final_url: str, attempt: _Attempt, attempts: int) -> FetchResult:
        if attempt.kind == "ok":
            return FetchResult(
                url, final_url, "ok", content=attempt.content, content_type=attempt.content_type,
                http_status=attempt.http_status, attempts=attempts,
            )
        status = {"timeout": "timeout", "too_large": "too_large", "blocked": "blocked_site"}.get(
            attempt.kind, "http_error"
        )
        transient = attempt.kind in ("timeout", "connection") or (
            attempt.kind == "http" and attempt.http_status in self.settings.retry_statuses
        )
        reason = attempt.reason
        if attempts > 1:
            reason += f" after {attempts} attempts"
        return FetchResult(
            url, final_url, status, reason, content_type=attempt.content_type,
            http_status=attempt.http_status, attempts=attempts, transient=transient,
        )

    def _get_with_retries(
        self, url: str, *, max_bytes: int, accept: str, truncate: bool
    ) -> tuple[_Attempt, int]:
        settings = self.settings
        retries = 0
        timeout_retries = 0
        attempts = 0
        while True:
            attempts += 1
            attempt = self._get_once(url, max_bytes=max_bytes, accept=accept, truncate=truncate)
            if attempt.kind == "timeout" and timeout_retries < settings.max_timeout_retries:
                timeout_retries += 1
            elif (
                attempt.kind == "connection"
                or (attempt.kind == "http" and attempt.http_status in settings.retry_statuses)
            ) and retries < settings.max_retries:
                retries += 1
            else:
                return attempt, attempts
            wait = min(
                settings.max_backoff_s,
                max(settings.backoff_s * 2 ** (attempts - 1), attempt.retry_after_s or 0.0),
            )
            log.info("retrying %s in %.2f s after %s (attempt %d)", url, wait, attempt.reason, attempts)
            time.sleep(wait)

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["User-Agent"] = self.settings.user_agent
            session.trust_env = False  # see __post_init__
            session.mount("http://", self._adapter)
            session.mount("https://", self._adapter)
            self._local.session = session
            with self._sessions_lock:
                self._sessions.append(session)
        return session

    def _proxies_for(self, url: str) -> dict[str, str]:
        """Return the environment's proxies for ``url``'s origin (empty where NO_PROXY matches)."""
        parts = urllib.parse.urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}".lower()
        proxies = self._proxies_by_origin.get(origin)
        if proxies is None:
            proxies = requests.utils.get_environ_proxies(url)
            self._proxies_by_origin[origin] = proxies
        return proxies

    def _get_once(self, url: str, *, max_bytes: int, accept: str, truncate: bool) -> _Attempt:
        settings = self.settings
        actual = self.to_actual(url)
        with self.gate.slot(host_of(url)):
            guard = _RequestGuard(self._addresses, settings.total_timeout_s)
            with guard.active():
                attempt = self._request(actual, guard, max_bytes=max_bytes, accept=accept, truncate=truncate)
        if guard.expired and attempt.kind != "blocked":
            return _Attempt(
                "timeout", f"timed out (response took over {settings.total_timeout_s:g} s)",
                http_status=attempt.http_status, content_type=attempt.content_type,
            )
        return attempt

    def _request(
        self, actual: str, guard: _RequestGuard, *, max_bytes: int, accept: str, truncate: bool
    ) -> _Attempt:
        settings = self.settings
        try:
            with self._session().get(
                actual,
                headers={"Accept": accept},
                timeout=(settings.connect_timeout_s, settings.read_timeout_s),
                allow_redirects=False,
                stream=True,
                proxies=self._proxies_for(actual),
                verify=self._verify,
            ) as response:
                return self._read_response(response, max_bytes=max_bytes, guard=guard, truncate=truncate)
        except _PeerRejected as error:
            return _Attempt("blocked", str(error))
        except requests.exceptions.Timeout as error:
            return _Attempt("timeout", f"timed out ({_timeout_kind(error)})")
        except requests.exceptions.ConnectionError as error:
            if _is_read_timeout(error):
                return _Attempt("timeout", "timed out (read)")
            return _Attempt("connection", f"connection failed: {_short_error(error)}")
        except requests.exceptions.ChunkedEncodingError as error:
            return _Attempt("connection", f"connection broken during the body: {_short_error(error)}")
        except requests.exceptions.ContentDecodingError as error:
            return _Attempt("http", f"invalid Content-Encoding: {_short_error(error)}")
        except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                requests.exceptions.InvalidSchema) as error:
            return _Attempt("invalid", f"invalid URL: {_short_error(error)}")
        except requests.exceptions.RequestException as error:
            return _Attempt("invalid", f"request failed: {type(error).__name__}: {_short_error(error)}")

    def _read_response(
        self, response: requests.Response, *, max_bytes: int, guard: _RequestGuard, truncate: bool
    ) -> _Attempt:
        code = response.status_code
        content_type = response.headers.get("Content-Type", "")
        if _head_is_malformed(response):
            # NOTE: a connection closed right after a complete header line is indistinguishable from a
            # response whose body ends at the close, so it passes as an empty body.
            return _Attempt("connection", "malformed response head (cut off mid-header or a line without a colon)")
        if code in (301, 302, 303, 307, 308):
            location = response.headers.get("Location")
            if not location:
                return _Attempt("http", f"HTTP {code} without a Location header", http_status=code)
            target = self.to_canonical(urllib.parse.urljoin(response.url, location))
            return _Attempt("redirect", http_status=code, location=urllib.parse.urldefrag(target).url)
        if code >= 300:
            return _Attempt(
                "http", f"HTTP {code}", http_status=code, content_type=content_type,
                retry_after_s=_retry_after(response),
            )

        declared = response.headers.get("Content-Length")
        if not truncate and declared is not None and declared.isdigit() and int(declared) > max_bytes:
            return _Attempt(
                "too_large", f"Content-Length {declared} exceeds the limit of {max_bytes} bytes",
                http_status=code, content_type=content_type,
            )
        chunks: list[bytes] = []
        received = 0
        for chunk in response.iter_content(_CHUNK_BYTES):
            received += len(chunk)
            if received > max_bytes and truncate:
                chunks.append(chunk[: max_bytes - (received - len(chunk))])
                break
            if received > max_bytes:
                return _Attempt(
                    "too_large", f"body exceeded the limit of {max_bytes} bytes; download aborted",
                    http_status=code, content_type=content_type,
                )
            if guard.expired:
                break  # the caller turns this into a timeout
            chunks.append(chunk)
        return _Attempt("ok", content=b"".join(chunks), content_type=content_type, http_status=code)

    def close(self) -> None:
        with self._sessions_lock:
            for session in self._sessions:
                session.close()
            self._sessions.clear()


# -- connection guard ---------------------------------------------------------------------
# requests gives no hook between connecting and sending, so the guard reaches urllib3's
# connections through a custom adapter whose pools build _GuardedHTTP(S)Connection. The pools are
# shared by all threads, but urllib3 connects and sends in the calling thread, so the guard of
# the request in progress is found through a thread-local.

_active_guard = threading.local()


class _PeerRejected(Exception):
    """A new connection reached an address that the address policy rejects.

    Deliberately not an OSError, so urllib3 and requests pass it through unchanged.
    """


class _RequestGuard:
    """Checks the peer of each new connection and enforces the total timeout of one request."""

    def __init__(self, addresses: AddressPolicy, total_timeout_s: float) -> None:
        self.addresses = addresses
        self.expired = False
        self.finished = False
        self._total_timeout_s = total_timeout_s
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        _active_guard.guard = self
        _DEADLINES.add(self, self._total_timeout_s)
        try:
            yield
        finally:
            with self._lock:
                self.finished = True
                self._sockets = []
            _active_guard.guard = None

    def check_peer(self, sock: socket.socket) -> None:
        address = sock.getpeername()[0]
        reason = self.addresses.rejection_for(str(address))
        if reason is not None:
            raise _PeerRejected(f"connection reached a non-public address: {reason}")

    def watch(self, sock: socket.socket) -> None:
        """Shut ``sock`` down when the total timeout expires (at once if it already has)."""
        with self._lock:
            if not self.expired:
                self._sockets.append(sock)
                return
        _shutdown(sock)

    def expire(self) -> None:
        with self._lock:
            if self.finished:
                return
            self.expired = True
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _shutdown(sock)


class _DeadlineWatch:
    """One thread that expires request guards at their deadlines.

    Starting a timer thread per request cost about half a millisecond of each download.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._heap: list[tuple[float, int, _RequestGuard]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def add(self, guard: _RequestGuard, timeout_s: float) -> None:
        with self._condition:
            if self._thread is None or not self._thread.is_alive():  # also after a fork
                self._thread = threading.Thread(target=self._run, name="dermcan-deadlines", daemon=True)
                self._thread.start()
            heapq.heappush(self._heap, (time.monotonic() + timeout_s, next(self._order), guard))
            self._condition.notify()

    def _run(self) -> None:
        while True:
            with self._condition:
                while self._heap and self._heap[0][2].finished:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._condition.wait()
                    continue
                deadline, _, guard = self._heap[0]
                wait_s = deadline - time.monotonic()
                if wait_s > 0:
                    self._condition.wait(wait_s)
                    continue
                heapq.heappop(self._heap)
            guard.expire()


_DEADLINES = _DeadlineWatch()


def _shutdown(sock: socket.socket) -> None:
    # shutdown() wakes a recv() blocked in another thread; close() alone would not.
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class _GuardedConnectionMixin:
    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()  # type: ignore[misc]
        guard: _RequestGuard | None = getattr(_active_guard, "guard", None)
        if guard is not None:
            try:
                guard.check_peer(sock)
            except BaseException:
                sock.close()
                raise
            guard.watch(sock)
        return sock

    def getresponse(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        # A connection reused from the pool skips _new_conn, so the socket is watched here too.
        guard: _RequestGuard | None = getattr(_active_guard, "guard", None)
        sock = getattr(self, "sock", None)
        if guard is not None and sock is not None:
            guard.watch(sock)
        return super().getresponse(*args, **kwargs)  # type: ignore[misc]


class _GuardedHTTPConnection(_GuardedConnectionMixin, urllib3.connection.HTTPConnection):
    pass


class _GuardedHTTPSConnection(_GuardedConnectionMixin, urllib3.connection.HTTPSConnection):
    pass


class _GuardedHTTPConnectionPool(urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSConnectionPool(urllib3.connectionpool.HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


class _GuardedAdapter(requests.adapters.HTTPAdapter):
    # NOTE: requests sends through a proxy (HTTP_PROXY and friends) with another pool manager, so
    # then only the check before the request applies, not the peer check.
    def init_poolmanager(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _GuardedHTTPConnectionPool,
            "https": _GuardedHTTPSConnectionPool,
        }


def _swap_origin(url: str, origins: Mapping[str, str]) -> str:
    if not origins:
        return url
    parts = urllib.parse.urlsplit(url)
    replacement = origins.get(f"{parts.scheme}://{parts.netloc}".lower())
    if replacement is None:
        return url
    return replacement + url[len(parts.scheme) + 3 + len(parts.netloc):]


def _head_is_malformed(response: requests.Response) -> bool:
    """Return whether http.client stopped parsing the head at a line that is not a header.

    It then reads the rest of the head as body, so the response cannot be trusted.
    """
    original = getattr(response.raw, "_original_response", None)
    defects = getattr(getattr(original, "msg", None), "defects", ())
    return any(isinstance(defect, email.errors.MissingHeaderBodySeparatorDefect) for defect in defects)


def _retry_after(response: requests.Response) -> float | None:
    """Return the wait in seconds that a Retry-After header requests (delay-seconds or HTTP-date), or None."""
    value = response.headers.get("Retry-After", "").strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, (when - datetime.datetime.now(datetime.timezone.utc)).total_seconds())


def _is_read_timeout(error: BaseException) -> bool:
    # requests wraps a read timeout during iter_content in ConnectionError(ReadTimeoutError).
    return any(isinstance(argument, urllib3.exceptions.ReadTimeoutError) for argument in error.args)


def _timeout_kind(error: requests.exceptions.Timeout) -> str:
    return "connect" if isinstance(error, requests.exceptions.ConnectTimeout) else "read"


def _short_error(error: BaseException) -> str:
    text = str(error)
    return text if len(text) <= 200 else text[:197] + "..."
