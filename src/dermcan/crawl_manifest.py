"""The crawl manifest (one row per candidate image URL) and the journal that makes crawls resumable.

Manifest columns and statuses are fixed by docs/ARCHITECTURE.md. :func:`finalize_rows` turns
per-URL outcomes into the manifest: sorted by URL, exact duplicates marked, near-duplicate
groups assigned. It depends only on the set of outcomes, never on the order in which downloads
finished, so an interrupted and resumed crawl gives the same manifest as an uninterrupted one.

The journal (:class:`CrawlJournal`) is a JSON Lines file: a header with a fingerprint of the
crawl settings, then one record per fetched page and per downloaded image URL. A rerun with the
same fingerprint reuses every record except transient failures (timeouts, 5xx, failed
connections), which are fetched again. A rerun with other settings starts a new journal.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from dermcan import atomic_io
from dermcan.classes import CLASSES
from dermcan.image_store import group_near_duplicates

log = logging.getLogger(__name__)

MANIFEST_COLUMNS: tuple[str, ...] = (
    "url", "page_url", "caption", "keyword", "language", "label", "status", "reason",
    "sha256", "phash", "dup_group", "width", "height", "bytes",
)

STATUSES: tuple[str, ...] = (
    "downloaded", "duplicate", "not_an_image", "corrupt", "too_large", "too_small",
    "bad_aspect_ratio", "http_error", "disallowed_by_robots", "timeout", "too_many_redirects",
    "blocked_site", "no_keyword",
)

# Statuses whose rows name a stored image through sha256.
STORED_STATUSES: frozenset[str] = frozenset({"downloaded", "duplicate"})

JOURNAL_VERSION = 1


def empty_row(**values: Any) -> dict[str, Any]:
    """Return a manifest row with every column empty except ``values``."""
    unknown = set(values) - set(MANIFEST_COLUMNS)
    if unknown:
        raise KeyError(f"not manifest columns: {sorted(unknown)}")
    row: dict[str, Any] = dict.fromkeys(MANIFEST_COLUMNS, "")
    row.update(values)
    return row


def finalize_rows(rows: Iterable[Mapping[str, Any]], *, phash_max_distance: int) -> list[dict[str, Any]]:
    """Sort rows by URL, mark exact duplicates and assign near-duplicate groups.

    Of the rows with status ``downloaded`` and the same sha256, the first by URL keeps the
    status and the others become ``duplicate`` with the first one's URL as reason. Every stored
    row gets a ``dup_group`` (see :func:`dermcan.image_store.group_near_duplicates`).
    """
    finalized = sorted((dict(row) for row in rows), key=lambda row: row["url"])
    urls = [row["url"] for row in finalized]
    if len(set(urls)) != len(urls):
        duplicated = sorted(url for url, count in Counter(urls).items() if count > 1)
        raise ValueError(f"the crawl produced more than one row for {duplicated[:5]}")
    for row in finalized:
        if row["status"] not in STATUSES:
            raise ValueError(f"unknown status {row['status']!r} for {row['url']}")

    first_url_by_sha: dict[str, str] = {}
    phash_by_sha: dict[str, str] = {}
    for row in finalized:
        if row["status"] not in STORED_STATUSES:
            continue
        sha256 = row["sha256"]
        if sha256 in first_url_by_sha:
            row["status"] = "duplicate"
            row["reason"] = f"same bytes as {first_url_by_sha[sha256]}"
        else:
            first_url_by_sha[sha256] = row["url"]
            phash_by_sha[sha256] = row["phash"]
            row["status"] = "downloaded"
            row["reason"] = ""

    groups = group_near_duplicates(list(phash_by_sha.items()), max_distance=phash_max_distance)
    for row in finalized:
        row["dup_group"] = groups.get(row["sha256"], "") if row["status"] in STORED_STATUSES else ""
    return finalized


def summarize(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Return counts for metrics/crawl.json: by status, and downloaded images by class and language."""
    rows = list(rows)
    by_status = Counter(row["status"] for row in rows)
    downloaded = [row for row in rows if row["status"] == "downloaded"]
    by_class = Counter(row["label"] for row in downloaded)
    groups = Counter(row["dup_group"] for row in rows if row["dup_group"])
    return {
        "candidates": len(rows),
        "by_status": {status: by_status.get(status, 0) for status in STATUSES},
        "downloaded_by_class": {label: by_class.get(label, 0) for label in CLASSES},
        "downloaded_by_language": dict(sorted(Counter(row["language"] for row in downloaded).items())),
        "labelled_by_class": {
            label: sum(1 for row in rows if row["label"] == label) for label in CLASSES
        },
        "near_duplicate_groups": sum(1 for size in groups.values() if size > 1),
    }


class CrawlJournal:
    """Append-only record of finished page and image fetches; safe to share between threads."""

    def __init__(self, path: str | os.PathLike[str], *, fingerprint: str) -> None:
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.pages: dict[tuple[str, str], dict[str, Any]] = {}
        self.images: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        # False when an existing journal with the same settings was loaded (even an empty one).
        self.started_afresh = not self._load()
        # Rewrite the reusable records compactly; this also drops a line cut short by a kill.
        header = {"type": "header", "version": JOURNAL_VERSION, "fingerprint": fingerprint}
        lines = [header, *self.pages.values(), *self.images.values()]
        atomic_io.write_text(self.path, "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
        # Unbuffered, so a failed append can be cut off again (see record).
        self._handle = open(self.path, "ab", buffering=0)
        self._size = self._handle.seek(0, os.SEEK_END)

    def _load(self) -> bool:
        """Load the reusable records; return False when there is no journal with these settings."""
        if not self.path.exists():
            return False
        with open(self.path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
        try:
            header = json.loads(lines[0]) if lines else {}
        except json.JSONDecodeError:
            header = {}
        if header.get("version") != JOURNAL_VERSION or header.get("fingerprint") != self.fingerprint:
            log.info("crawl settings changed since the journal %s was written; starting afresh", self.path)
            return False
        for number, line in enumerate(lines[1:], start=2):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                log.warning("ignoring unreadable line %d of %s (cut short by an interruption?)", number, self.path)
                continue
            self._remember(record)
        return True

    def _remember(self, record: dict[str, Any]) -> None:
        if record.get("transient"):
            if record.get("type") == "page":
                self.pages.pop((record["profile"], record["url"]), None)
            elif record.get("type") == "image":
                self.images.pop(record["url"], None)
            return
        if record.get("type") == "page":
            self.pages[(record["profile"], record["url"])] = record
        elif record.get("type") == "image":
            self.images[record["url"]] = record

    def record(self, record: dict[str, Any]) -> None:
        """Append ``record`` (a dict with "type" "page" or "image") and hand it to the OS.

        When the append fails (a full disk), the bytes of it that were written are cut off
        again before the error is raised, so the journal keeps only whole lines.
        """
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            try:
                written = 0
                while written < len(line):
                    written += self._handle.write(line[written:])
            except OSError:
                os.ftruncate(self._handle.fileno(), self._size)
                raise
            self._size += len(line)
            self._remember(record)

    def close(self) -> None:
        with self._lock:
            self._handle.close()
