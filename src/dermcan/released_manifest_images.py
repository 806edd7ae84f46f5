"""Images of a released CAN manifest: mirrors, downloads through the crawler, and box crops.

Each distinct URL among the manifest rows that can be used (status ``ok`` or ``degenerate_box``,
so the whole photo still reaches the annotate stage) is obtained once, from the first source
that has it:

1. a local mirror file: an entry of a ``url,filepath`` mapping file, then
   ``<directory>/<host>/<path>`` (the layout of ``wget --mirror``), then
   ``<directory>/<file name>`` when no other manifest URL has that file name;
2. a mirror server: ``<base_url>/<host>/<path>?<query>``, fetched by the crawler;
3. the URL itself, fetched by the crawler, unless the mirror settings turn the web off.

A URL on the crawl blocklist is never obtained, not even from a mirror. Crawler downloads
follow the robots.txt, politeness, retry, size and resume-journal rules of
:class:`dermcan.crawling.Crawler`. Every image, downloaded or read from a mirror, passes
:class:`dermcan.image_store.ImageStore` verification. The crawl manifest gets one row per URL
(``url`` is the manifest URL, normalized, whatever the source), and every manifest row gets one
box row (:data:`BOX_COLUMNS`) whose status is ``cropped`` or the reason it is not. Crops are cut from
the stored, EXIF-rotated image.

NOTE: that assumes the boxes were drawn on photos as browsers display them (EXIF-rotated). A
photo with an EXIF rotation whose box was drawn on the unrotated pixels gets a wrong crop.
"""

from __future__ import annotations

import io
import logging
import shutil
import urllib.parse
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image

from dermcan import atomic_io
from dermcan.crawl_manifest import STORED_STATUSES, empty_row, finalize_rows
from dermcan.crawling import CrawlConfig, Crawler, CrawlResult, open_journal
from dermcan.http_fetching import host_of
from dermcan.image_store import ImageRejected, ImageStore
from dermcan.page_parsing import ImageCandidate
from dermcan.released_manifests import (
    read_manifest,
    STATUS_DEGENERATE_BOX,
    STATUS_MALFORMED,
    STATUS_OK,
    ManifestReport,
    ManifestRow,
    box_in_pixels,
    read_url_mapping,
)

log = logging.getLogger(__name__)

BOX_COLUMNS: tuple[str, ...] = (
    "row", "line", "label_text", "label", "x_center", "y_center", "width", "height",
    "source_url", "url", "obtained_from", "sha256", "image_width", "image_height",
    "x0", "y0", "x1", "y1", "clipped", "status", "reason", "crop_path",
)  # fmt: skip

STATUS_CROPPED = "cropped"
_USABLE = frozenset({STATUS_OK, STATUS_DEGENERATE_BOX})


@dataclass(frozen=True)
class MirrorSettings:
    """Mirror locations searched for manifest images before (or instead of) the web."""

    directory: Path | None = None
    mapping_csv: Path | None = None
    base_url: str | None = None
    web_fallback: bool = True

    @classmethod
    def from_params(cls, value: str | Mapping[str, Any] | None) -> MirrorSettings | None:
        """Build settings from ``crawl.manifest.mirror``: null, a folder or URL, or a mapping.

        A mapping may have ``directory``, ``mapping_csv``, ``base_url`` and ``web_fallback``.
        """
        if value in (None, ""):
            return None
        if isinstance(value, str):
            if urllib.parse.urlsplit(value).scheme in ("http", "https"):
                return cls(base_url=value)
            return cls(directory=Path(value))
        unknown = set(value) - {"directory", "mapping_csv", "base_url", "web_fallback"}
        if unknown:
            raise ValueError(
                f"crawl.manifest.mirror has unknown keys {sorted(unknown)}; valid keys are: "
                "base_url, directory, mapping_csv, web_fallback"
            )
        settings = cls(
            directory=Path(value["directory"]) if value.get("directory") else None,
            mapping_csv=Path(value["mapping_csv"]) if value.get("mapping_csv") else None,
            base_url=value.get("base_url") or None,
            web_fallback=bool(value.get("web_fallback", True)),
        )
        if settings.directory is not None and not settings.directory.is_dir():
            raise FileNotFoundError(f"mirror folder {settings.directory} not found: check crawl.manifest.mirror")
        return settings


class Mirror:
    """Resolves manifest URLs to local files or mirror-server URLs."""

    def __init__(self, settings: MirrorSettings, urls: Iterable[str]) -> None:
        self.settings = settings
        self._mapping = read_url_mapping(settings.mapping_csv) if settings.mapping_csv else {}
        names = Counter(_file_name(url) for url in set(urls))
        # A file name shared by two URLs ("01.jpg", "maxresdefault.jpg") cannot tell them apart.
        self._unique_names = {name for name, count in names.items() if count == 1 and name}

    def local_file(self, url: str) -> Path | None:
        directory = self.settings.directory
        mapped = self._mapping.get(url)
        if mapped is not None:
            for candidate in _mapped_candidates(mapped, directory):
                if candidate.is_file():
                    return candidate
        if directory is None:
            return None
        parts = urllib.parse.urlsplit(url)
        layout = _inside(directory, parts.hostname or "", urllib.parse.unquote(parts.path))
        if layout is not None and layout.is_file():
            return layout
        name = _file_name(url)
        if name in self._unique_names:
            by_name = _inside(directory, name)
            if by_name is not None and by_name.is_file():
                return by_name
        return None

    def mirror_url(self, url: str) -> str | None:
        if not self.settings.base_url:
            return None
        parts = urllib.parse.urlsplit(url)
        mirrored = f"{self.settings.base_url.rstrip('/')}/{parts.netloc}{parts.path}"
        return f"{mirrored}?{parts.query}" if parts.query else mirrored


def _file_name(url: str) -> str:
    return PurePosixPath(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name


def _inside(directory: Path, *parts: str) -> Path | None:
    """Join ``parts`` under ``directory``; None when the result would leave it ("..")."""
    root = directory.resolve()
    candidate = root.joinpath(*(part.lstrip("/") for part in parts)).resolve()
    return candidate if candidate.is_relative_to(root) else None


def _mapped_candidates(file_text: str, directory: Path | None) -> list[Path]:
    """List the places a mapping file's path may point to: as written, under the mirror folder, by name."""
    # The original crawler ran on Windows: "L:/webdb_2019/images/x_google\\000001....jpg".
    posix = file_text.replace("\\", "/")
    candidates = [Path(posix)] if Path(posix).is_absolute() else []
    if directory is not None:
        for relative in (posix.split(":", 1)[-1] if ":" in posix[:3] else posix, PurePosixPath(posix).name):
            inside = _inside(directory, relative)
            if inside is not None:
                candidates.append(inside)
    return candidates


@dataclass
class ManifestImages:
    """Finalized crawl manifest rows (one per URL) and how each URL was obtained."""

    rows: list[dict[str, Any]]
    obtained_from: dict[str, str]  # manifest URL -> "mirror_file", "mirror_url", "web" or ""
    hosts: list[str]  # hosts the crawler sent image requests to, sorted
    resumed_images: int  # downloads reused from the crawl journal


def usable_urls(report: ManifestReport) -> dict[str, ManifestRow]:
    """Return each URL to obtain, with the first usable row that names it (file order)."""
    first: dict[str, ManifestRow] = {}
    for row in report.rows:
        if row.status in _USABLE and row.url not in first:
            first[row.url] = row
    return first


def obtain_images(
    report: ManifestReport,
    crawler: Crawler,
    store: ImageStore,
    *,
    mirror: MirrorSettings | None,
    max_bytes: int,
    phash_max_distance: int,
) -> ManifestImages:
    """Obtain every usable URL of ``report`` once and return finalized crawl manifest rows.

    A URL's ``label`` is that of its first usable row. When rows of one URL disagree (a
    collage showing two diagnoses), the box rows keep each row's own label.
    """
    first_rows = usable_urls(report)
    resolver = Mirror(mirror, first_rows) if mirror is not None else None
    web_fallback = mirror.web_fallback if mirror is not None else True

    rows: list[dict[str, Any]] = []
    obtained_from: dict[str, str] = {}
    candidates: list[ImageCandidate] = []
    original_by_fetched: dict[str, str] = {}
    for url, first in first_rows.items():
        # The blocklist names sites whose terms forbid this use, so it applies to mirror copies too.
        if crawler.config.is_blocked(url):
            rows.append(empty_row(url=url, label=first.label, status="blocked_site",
                                  reason=f"host {host_of(url)} is on crawl.blocked_hosts"))  # fmt: skip
            obtained_from[url] = ""
            continue
        local = resolver.local_file(url) if resolver is not None else None
        if local is not None:
            rows.append(_row_from_file(url, first, local, store, max_bytes=max_bytes))
            obtained_from[url] = "mirror_file"
            continue
        fetched = resolver.mirror_url(url) if resolver is not None else None
        if fetched is None and not web_fallback:
            reason = "not found in the mirror, and crawl.manifest.mirror.web_fallback is off"
            rows.append(empty_row(url=url, label=first.label, status="http_error", reason=reason))
            obtained_from[url] = ""
            continue
        fetched = fetched or url
        original_by_fetched[fetched] = url
        obtained_from[url] = "mirror_url" if fetched != url else "web"
        candidates.append(
            ImageCandidate(url=fetched, page_url="", caption="", keyword="", language="", label=first.label or "")
        )

    log.info(
        "manifest %s: %d distinct URLs, %d from mirror files, %d to download",
        report.path, len(first_rows), sum(source == "mirror_file" for source in obtained_from.values()),
        len(candidates),
    )  # fmt: skip
    downloaded, resumed = crawler.download_images(candidates) if candidates else ([], 0)
    hosts = set()
    for row in downloaded:
        if row["status"] not in ("blocked_site", "disallowed_by_robots"):
            hosts.add(host_of(row["url"]))
        row["url"] = original_by_fetched[row["url"]]
        rows.append(row)
    finalized = finalize_rows(rows, phash_max_distance=phash_max_distance)
    return ManifestImages(finalized, obtained_from, sorted(hosts), resumed)


def _row_from_file(url: str, first: ManifestRow, path: Path, store: ImageStore, *, max_bytes: int) -> dict[str, Any]:
    row = empty_row(url=url, label=first.label)
    size = path.stat().st_size
    if size > max_bytes:
        row.update(status="too_large", reason=f"mirror file {path} has {size} bytes, over the limit of {max_bytes}")
        return row
    data = path.read_bytes()
    try:
        stored = store.store(data)
    except ImageRejected as error:
        row.update(status=error.status, reason=f"mirror file {path}: {error.reason}", bytes=len(data))
        return row
    row.update(status="downloaded", sha256=stored.sha256, phash=stored.phash,
               width=stored.width, height=stored.height, bytes=stored.bytes)  # fmt: skip
    return row


def crop_boxes(
    report: ManifestReport,
    images: ManifestImages,
    store: ImageStore,
    crops_dir: str | Path,
    *,
    jpeg_quality: int,
) -> list[dict[str, Any]]:
    """Crop every usable box from its stored image and return one box row per manifest row.

    ``crops_dir`` is emptied first, because its crops derive from the store and the manifest.
    A crop is written to ``<crops_dir>/<label>/<row>.jpg`` (``<row>_line<N>.jpg`` when the
    manifest repeats a row number) as JPEG without metadata.
    """
    crops_dir = Path(crops_dir)
    if crops_dir.exists():
        shutil.rmtree(crops_dir)
    crops_dir.mkdir(parents=True)
    by_url = {row["url"]: row for row in images.rows}
    repeated = set(report.repeated_numbers)
    box_rows = []
    for manifest_row in report.rows:
        box_row = _box_row(manifest_row, by_url.get(manifest_row.url), images.obtained_from)
        box_rows.append(box_row)
        if box_row["status"] != STATUS_OK:
            continue
        name = manifest_row.row_id
        if manifest_row.number in repeated:
            name += f"_line{manifest_row.line_number}"
        _crop_one(box_row, store, crops_dir / str(manifest_row.label) / f"{name}.jpg", jpeg_quality=jpeg_quality)

    counts = Counter(row["status"] for row in box_rows)
    log.info("manifest %s: %d boxes: %s", report.path, len(box_rows), dict(sorted(counts.items())))
    return box_rows


def _box_row(
    manifest_row: ManifestRow, image_row: Mapping[str, Any] | None, obtained_from: Mapping[str, str]
) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(BOX_COLUMNS, "")
    row.update(
        row=manifest_row.row_id, line=manifest_row.line_number, label_text=manifest_row.label_text,
        label=manifest_row.label or "", source_url=manifest_row.source_url, url=manifest_row.url,
        status=manifest_row.status, reason=manifest_row.reason,
    )  # fmt: skip
    if manifest_row.status == STATUS_OK or manifest_row.status == STATUS_DEGENERATE_BOX:
        row.update(x_center=manifest_row.x_center, y_center=manifest_row.y_center,
                   width=manifest_row.width, height=manifest_row.height,
                   clipped=manifest_row.past_edge)  # fmt: skip
    if image_row is None:
        return row
    row["obtained_from"] = obtained_from.get(manifest_row.url, "")
    if image_row["status"] not in STORED_STATUSES:
        if manifest_row.status == STATUS_OK:
            row.update(status=image_row["status"], reason=image_row["reason"])
        return row
    row.update(sha256=image_row["sha256"], image_width=image_row["width"], image_height=image_row["height"])
    return row


def _crop_one(row: dict[str, Any], store: ImageStore, destination: Path, *, jpeg_quality: int) -> None:
    stored_path = store.path_for(row["sha256"])
    try:
        stored = Image.open(stored_path)
        stored.load()
    except OSError as error:
        # The crawl journal can outlive a store that was deleted by hand.
        row.update(status="corrupt", reason=f"stored image {stored_path} cannot be read: {error}")
        log.warning("row %s: stored image %s cannot be read: %s", row["row"], stored_path, error)
        return
    with stored:
        manifest_row = ManifestRow(
            int(row["line"]), STATUS_OK, x_center=row["x_center"], y_center=row["y_center"],
            width=row["width"], height=row["height"], past_edge=bool(row["clipped"]),
        )  # fmt: skip
        box = box_in_pixels(manifest_row, stored.width, stored.height)
        row.update(x0=box.x0, y0=box.y0, x1=box.x1, y1=box.y1)
        if box.is_empty:
            row.update(status=STATUS_DEGENERATE_BOX,
                       reason=f"box is empty in pixels of a {stored.width}x{stored.height} image")  # fmt: skip
            return
        crop = stored.crop((box.x0, box.y0, box.x1, box.y1)).convert("RGB")
    buffer = io.BytesIO()
    crop.save(buffer, format="JPEG", quality=jpeg_quality)
    atomic_io.write_bytes(destination, buffer.getvalue())
    row.update(status=STATUS_CROPPED, crop_path=destination.as_posix())


def summarize_boxes(report: ManifestReport, box_rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Return counts for metrics: box rows by status and crops by class, plus numbering gaps."""
    by_status = Counter(row["status"] for row in box_rows)
    crops = Counter(row["label"] for row in box_rows if row["status"] == STATUS_CROPPED)
    return {
        "manifest_rows": len(box_rows),
        "boxes_by_status": dict(sorted(by_status.items())),
        "crops_by_class": dict(sorted(crops.items())),
        # Rows read back from the CSV hold "True"/"False" strings.
        "clipped_boxes": sum(
            1 for row in box_rows if row["status"] == STATUS_CROPPED and row["clipped"] in (True, "True")
        ),
        "missing_row_numbers": report.missing_numbers,
        "repeated_row_numbers": report.repeated_numbers,
    }


def collect_released_manifest(
    config: CrawlConfig,
    settings: Mapping[str, Any],
    store: ImageStore,
    *,
    journal_path: str | Path,
    crops_dir: str | Path,
    boxes_path: str | Path,
    connect_to: Mapping[str, str] | None = None,
) -> CrawlResult:
    """Run the ``manifest`` crawl source, which reads, obtains, crops and writes the box table.

    ``settings`` is params ``crawl.manifest`` (``path``, ``mirror``, optional ``aliases``).
    ``connect_to`` maps canonical origins to the origins actually contacted (tests use it to
    serve real manifest URLs from 127.0.0.1).
    """
    if not settings.get("path"):
        raise ValueError("crawl.source is manifest but crawl.manifest.path is empty: set it to a CAN manifest file")
    report = read_manifest(settings["path"], aliases=settings.get("aliases"))
    check_has_entries(report)
    mirror = MirrorSettings.from_params(settings.get("mirror"))

    journal = open_journal(journal_path, config, [], store)
    try:
        crawler = Crawler(config, store=store, journal=journal, connect_to=connect_to)
        images = obtain_images(
            report, crawler, store, mirror=mirror, max_bytes=config.max_image_bytes,
            phash_max_distance=config.phash_max_distance,
        )  # fmt: skip
    finally:
        journal.close()

    box_rows = crop_boxes(report, images, store, crops_dir, jpeg_quality=config.jpeg_quality)
    atomic_io.write_csv(boxes_path, box_rows, BOX_COLUMNS)
    log.info("manifest boxes: %s", summarize_boxes(report, box_rows))
    return CrawlResult(
        rows=images.rows, pages_fetched=0, pages_failed={}, hosts=images.hosts,
        resumed_pages=0, resumed_images=images.resumed_images,
    )  # fmt: skip


def check_has_entries(report: ManifestReport) -> None:
    """Raise ``ValueError`` when the manifest has no line that parses, before any download.

    Single malformed lines are recorded and skipped. A file where every line is malformed is
    almost always the wrong file or format, and a crawl of it would end with zero images.
    """
    if any(row.status != STATUS_MALFORMED for row in report.rows):
        return
    if not report.rows:
        raise ValueError(
            f"manifest {report.path} has no entries: check crawl.manifest.path, or fill the file with "
            "'no label x_center y_center width height url' lines"
        )
    first = report.rows[0]
    raise ValueError(
        f"manifest {report.path}: none of its {len(report.rows)} lines is a valid "
        f"'no label x_center y_center width height url' line (line {first.line_number}: {first.reason}); "
        "check that crawl.manifest.path names a CAN manifest"
    )


def write_empty_box_outputs(crops_dir: str | Path, boxes_path: str | Path) -> None:
    """Write an empty crops folder and a header-only box table, for sources without boxes.

    DVC requires every declared output to exist after a stage runs, whatever its source.
    """
    crops_dir = Path(crops_dir)
    if crops_dir.exists():
        shutil.rmtree(crops_dir)
    crops_dir.mkdir(parents=True)
    atomic_io.write_csv(boxes_path, [], BOX_COLUMNS)
