"""Checks that a crawl URL may be requested: scheme, length, host name and the addresses it resolves to.

Pages link to anything, and released manifests and redirects name any URL, so the crawler checks
every URL before it sends a request:

* the scheme must be ``http`` or ``https`` (not ``file:``, ``ftp:``, ``data:``, ``javascript:``,
  ``mailto:``);
* the URL must be at most ``crawl.max_url_length`` characters;
* the host must be a valid host name. Internationalised names are converted to their ASCII
  (punycode) form with the ``idna`` package (IDNA 2008 with UTS 46 mapping), so
  ``bücher.example`` becomes ``xn--bcher-kva.example``;
* every address the host resolves to (``socket.getaddrinfo``) must be public. Private, loopback,
  link-local, multicast, unspecified and other non-global addresses are rejected unless a
  network in ``crawl.allowed_private_networks`` contains them.

A rejected URL gets a crawl manifest status and a reason: :data:`STATUS_INVALID_URL` for a
malformed URL or a host that cannot be resolved, :data:`STATUS_BLOCKED_ADDRESS` for a
non-public address.
"""

from __future__ import annotations

import ipaddress
import socket
import time
import urllib.parse
from collections.abc import Iterable

import idna

ALLOWED_SCHEMES: tuple[str, ...] = ("http", "https")

# The demo source serves its web from 127.0.0.1 itself, so it allows these networks in code.
LOOPBACK_NETWORKS: tuple[str, ...] = ("127.0.0.0/8", "::1/128")

# Manifest statuses (dermcan.crawl_manifest.STATUSES) for rejected URLs.
STATUS_INVALID_URL = "http_error"
STATUS_BLOCKED_ADDRESS = "blocked_site"

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(values: Iterable[str] | None, *, setting: str) -> tuple[str, ...]:
    """Validate CIDR strings (``10.0.0.0/8``, ``::1``) and return them in canonical form.

    Raises ``ValueError`` naming ``setting`` and the invalid entry.
    """
    networks = []
    for value in values or ():
        try:
            networks.append(str(ipaddress.ip_network(str(value).strip(), strict=False)))
        except ValueError as error:
            raise ValueError(
                f"{setting} has an invalid network {value!r}: {error}; write CIDRs such as 10.0.0.0/8 or ::1/128"
            ) from None
    return tuple(networks)


def ascii_host(host: str) -> str:
    """Return ``host`` lower-cased, with internationalised labels in punycode.

    Raises ``ValueError`` for a host that is not a valid internationalised domain name. ASCII
    names pass unchanged apart from case, because real hosts use characters such as ``_`` that
    IDNA 2008 forbids.
    """
    if host.isascii():
        return host.lower()
    try:
        return idna.encode(host, uts46=True).decode("ascii")
    except idna.IDNAError as error:
        raise ValueError(f"host {host!r} is not a valid internationalised domain name: {error}") from None


def ascii_url(url: str) -> str:
    """Return ``url`` with its host converted by :func:`ascii_host`; raises ``ValueError`` like it."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname
    if not host or host.isascii():
        return url
    netloc = ascii_host(host)
    if parts.port is not None:
        netloc = f"{netloc}:{parts.port}"
    userinfo, separator, _ = parts.netloc.rpartition("@")
    if separator:
        netloc = f"{userinfo}@{netloc}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def check_url_form(url: str, *, max_length: int) -> tuple[str, str] | None:
    """Return None when ``url`` is a well-formed http(s) URL, else ``(status, reason)``."""
    if len(url) > max_length:
        return STATUS_INVALID_URL, (
            f"invalid URL: {len(url)} characters, over crawl.max_url_length ({max_length})"
        )
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as error:
        return STATUS_INVALID_URL, f"invalid URL: {error}"
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        scheme_text = f"scheme {scheme}:" if scheme else "no scheme"
        return STATUS_INVALID_URL, f"invalid URL: {scheme_text}; only http and https URLs are crawled"
    if not parts.hostname:
        return STATUS_INVALID_URL, "invalid URL: no host"
    if port == 0:
        return STATUS_INVALID_URL, "invalid URL: port 0"
    try:
        ascii_host(parts.hostname)
    except ValueError as error:
        return STATUS_INVALID_URL, f"invalid URL: {error}"
    return None


_PASSED_HOST_TTL_S = 60.0  # seconds a host that passed the address check is not resolved again


class AddressPolicy:
    """Decides which IP addresses the crawler may connect to."""

    def __init__(self, allowed_networks: Iterable[str] = ()) -> None:
        self.allowed_networks: tuple[IpNetwork, ...] = tuple(
            ipaddress.ip_network(network, strict=False) for network in allowed_networks
        )
        # Hosts that passed recently: an image crawl checks the same few hosts thousands of
        # times, and a resolver without a cache would send a DNS query each time. Passing is
        # safe to remember because the fetcher checks the peer of every new connection anyway.
        self._passed_until: dict[tuple[str, int], float] = {}

    def rejection_for(self, address: str) -> str | None:
        """Return why ``address`` must not be contacted, or None when it may be."""
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone ("fe80::1%eth0")
        candidates: list[IpAddress] = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)
        if any(candidate in network for candidate in candidates for network in self.allowed_networks):
            return None
        for candidate in reversed(candidates):  # an IPv4-mapped address is named by its IPv4 kind
            kind = _non_public_kind(candidate)
            if kind is not None:
                return (
                    f"address {address} is {kind}; add its network to crawl.allowed_private_networks "
                    "to crawl it"
                )
        return None

    def check_host(self, host: str, port: int) -> tuple[str, str] | None:
        """Resolve ``host`` and return None when every address may be contacted, else ``(status, reason)``.

        NOTE: the HTTP client resolves the name again when it connects, so a DNS server that
        changes its answer in between (DNS rebinding) could pass this check. The fetcher closes
        that window by checking the peer address of each new connection too.
        """
        key = (host, port)
        if self._passed_until.get(key, 0.0) > time.monotonic():
            return None
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as error:
            return STATUS_INVALID_URL, f"host {host} could not be resolved: {error}"
        addresses = sorted({str(info[4][0]) for info in infos})
        for address in addresses:
            reason = self.rejection_for(address)
            if reason is not None:
                return STATUS_BLOCKED_ADDRESS, f"host {host} resolves to a non-public address: {reason}"
        self._passed_until[key] = time.monotonic() + _PASSED_HOST_TTL_S
        return None


def _non_public_kind(ip: IpAddress) -> str | None:
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_private:
        return "private"
    if not ip.is_global:
        return "reserved or not globally routable"
    return None


def host_and_port(url: str) -> tuple[str, int]:
    """Return the ASCII host of ``url`` (without IPv6 brackets) and its port, defaulted by scheme."""
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    return ascii_host(parts.hostname or ""), port
