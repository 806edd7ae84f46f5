"""Released CAN manifests (CAN2000, CAN5600): parsing, box geometry, mirrors and cropping.

A released manifest is a UTF-8 text file with one image box per line::

    ## comment lines start with "##"
    00004 melanocyticnevus 0.465 0.006 0.661 0.0 http://www.siue.edu/~sumbaug/Borders Complete/x.jpg

The fields are the row number, the label, the box centre (x, y) and the box size (width,
height) as fractions of the image size, and the image URL. The URL is the rest of the line
after the sixth field, so it may contain spaces. URLs in the published files also contain raw
non-ASCII characters, percent-escapes and literal ``\\u003d`` sequences. Some boxes have zero
width or height, and some reach past the image edge by rounding. One URL may appear in several
rows with different boxes (and sometimes different labels), and the numbering has gaps.

Every line ends in a :class:`ManifestRow` with a status, so nothing is silently dropped:

- ``ok``: parsed, label known, box has an area inside the image;
- ``malformed``: the line could not be parsed (``reason`` says why, ``line_number`` says where);
- ``unknown_label``: the label maps to none of :data:`dermcan.classes.CLASSES`;
- ``degenerate_box``: the width or height is 0, or the box lies entirely outside the image.

Downloading and cropping live in :mod:`dermcan.manifest_download`; this module needs no network.
"""

from __future__ import annotations

import csv
import logging
import math
import re
import urllib.parse
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dermcan.classes import CLASSES, DISPLAY_NAMES, NAMES_BY_LANGUAGE

log = logging.getLogger(__name__)

STATUS_OK = "ok"
STATUS_MALFORMED = "malformed"
STATUS_UNKNOWN_LABEL = "unknown_label"
STATUS_DEGENERATE_BOX = "degenerate_box"

# A box edge may pass the image border by this much (fraction of the image size) before it
# counts as past the edge. It only absorbs floating-point error. The released files round
# coordinates to 0.001, so their boxes pass the edge by up to 0.0005 and are flagged.
EDGE_TOLERANCE = 1e-9

_JSON_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})")
_LONE_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_PATH_SAFE = "/%:@!$&'()*+,;=~-._"
_QUERY_SAFE = _PATH_SAFE + "?"


@dataclass(frozen=True)
class ManifestRow:
    """One line of a released manifest, parsed or not.

    Coordinates are fractions of the image size. ``url`` is the normalized, requestable URL
    (see :func:`normalize_url`) and ``source_url`` the URL text as written in the file.
    """

    line_number: int
    status: str
    reason: str = ""
    number: int | None = None
    label_text: str = ""
    label: str | None = None
    x_center: float = math.nan
    y_center: float = math.nan
    width: float = math.nan
    height: float = math.nan
    source_url: str = ""
    url: str = ""
    past_edge: bool = False

    @property
    def row_id(self) -> str:
        """The row number as the released files write it (five digits), or ``line<N>``."""
        if self.number is None:
            return f"line{self.line_number}"
        return f"{self.number:05d}"


@dataclass
class ManifestReport:
    """All rows of one manifest file, in file order, and what the numbering shows."""

    path: Path
    rows: list[ManifestRow]
    comment_lines: list[str] = field(default_factory=list)
    missing_numbers: list[int] = field(default_factory=list)
    repeated_numbers: list[int] = field(default_factory=list)

    def status_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(row.status for row in self.rows).items()))

    def label_counts(self) -> dict[str, int]:
        """Rows per project class among rows whose label is known (any status but malformed)."""
        return dict(sorted(Counter(row.label for row in self.rows if row.label).items()))


@dataclass(frozen=True)
class PixelBox:
    """A box in pixels of one image, ``x1``/``y1`` exclusive, after clipping to the image."""

    x0: int
    y0: int
    x1: int
    y1: int
    clipped: bool

    @property
    def is_empty(self) -> bool:
        return self.x1 <= self.x0 or self.y1 <= self.y0


def _normalize_key(text: str) -> str:
    return "".join(character for character in text.casefold() if character.isalnum())


def build_label_lookup(aliases: Mapping[str, str] | None = None) -> dict[str, str]:
    """Build a map from normalized label text to project class.

    Known names are the class names, their display names and the English names in
    :data:`dermcan.classes.NAMES_BY_LANGUAGE`. Entries of ``aliases`` ("Malignant melanoma":
    malignantmelanoma) add to them and win on a clash. Keys are case-folded with everything
    but letters and digits removed, so "Malignant melanoma" and "malignant_melanoma" match.
    """
    lookup: dict[str, str] = {}
    for name in CLASSES:
        lookup[_normalize_key(name)] = name
        lookup[_normalize_key(DISPLAY_NAMES[name])] = name
        for english in NAMES_BY_LANGUAGE[name]["en"]:
            lookup[_normalize_key(english)] = name
    for alias, name in (aliases or {}).items():
        if name not in CLASSES:
            raise ValueError(
                f"alias {alias!r} maps to {name!r}, which is not a class; "
                f"valid classes are: {', '.join(CLASSES)}"
            )
        lookup[_normalize_key(alias)] = name
    return lookup


def map_label(text: str, lookup: Mapping[str, str]) -> str | None:
    """Return the project class for label ``text``, or None when no name or alias matches."""
    return lookup.get(_normalize_key(text))


def normalize_url(raw: str) -> str:
    """Turn a URL as written in a released manifest into one that can be requested.

    Literal JSON escapes (``\\u003d``) are decoded, the host is IDNA-encoded, raw spaces and
    non-ASCII characters are percent-encoded as UTF-8, existing percent-escapes are kept, a
    lone ``%`` becomes ``%25`` and the fragment is dropped, because servers never see it.
    Raises ``ValueError`` for a URL that is not absolute http(s).
    """
    text = _JSON_ESCAPE.sub(_decode_json_escape, raw.strip())
    parts = urllib.parse.urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"URL {raw!r} is not an absolute http or https URL")

    host = parts.hostname
    try:
        host.encode("ascii")
    except UnicodeEncodeError:
        host = host.encode("idna").decode("ascii")
    netloc = f"[{host}]" if ":" in host else host  # an IPv6 literal keeps its brackets
    if parts.port is not None:
        netloc += f":{parts.port}"
    if parts.username is not None:
        raise ValueError(f"URL {raw!r} contains user credentials; remove them from the manifest")

    path = urllib.parse.quote(_LONE_PERCENT.sub("%25", parts.path) or "/", safe=_PATH_SAFE)
    query = urllib.parse.quote(_LONE_PERCENT.sub("%25", parts.query), safe=_QUERY_SAFE)
    return urllib.parse.urlunsplit((scheme, netloc, path, query, ""))


def _decode_json_escape(match: re.Match[str]) -> str:
    code_point = int(match.group(1), 16)
    # A lone UTF-16 surrogate cannot be encoded as UTF-8, so it stays as written.
    if 0xD800 <= code_point <= 0xDFFF:
        return match.group(0)
    return chr(code_point)


def parse_line(line: str, line_number: int, lookup: Mapping[str, str]) -> ManifestRow:
    """Parse one data line (not a comment) into a row with its status."""
    fields = line.split(None, 6)
    if not fields[0].isdigit():
        return ManifestRow(line_number, STATUS_MALFORMED, f"row number {fields[0]!r} is not a number")
    number = int(fields[0])
    if len(fields) < 7:
        return ManifestRow(
            line_number,
            STATUS_MALFORMED,
            f"expected 7 fields (no label x_center y_center width height url), found {len(fields)}",
            number,
        )
    _, label_text, *coordinate_texts, source_url = fields
    source_url = source_url.strip()

    coordinates: list[float] = []
    for name, text in zip(("x_center", "y_center", "width", "height"), coordinate_texts):
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            return ManifestRow(
                line_number, STATUS_MALFORMED, f"{name} {text!r} is not a finite number", number
            )
        coordinates.append(value)
    x_center, y_center, width, height = coordinates
    if width < 0 or height < 0:
        return ManifestRow(
            line_number, STATUS_MALFORMED, f"negative box size {width} x {height}", number
        )

    try:
        url = normalize_url(source_url)
    except ValueError as error:
        return ManifestRow(line_number, STATUS_MALFORMED, str(error), number, label_text)

    label = map_label(label_text, lookup)
    status, reason = _classify_box(x_center, y_center, width, height)
    if label is None:
        status, reason = STATUS_UNKNOWN_LABEL, f"label {label_text!r} matches no class or alias"
    return ManifestRow(
        line_number=line_number,
        status=status,
        reason=reason,
        number=number,
        label_text=label_text,
        label=label,
        x_center=x_center,
        y_center=y_center,
        width=width,
        height=height,
        source_url=source_url,
        url=url,
        past_edge=_is_past_edge(x_center, y_center, width, height),
    )


def _box_edges(
    x_center: float, y_center: float, width: float, height: float
) -> tuple[float, float, float, float]:
    return (x_center - width / 2, y_center - height / 2, x_center + width / 2, y_center + height / 2)


def _is_past_edge(x_center: float, y_center: float, width: float, height: float) -> bool:
    left, top, right, bottom = _box_edges(x_center, y_center, width, height)
    return (
        left < -EDGE_TOLERANCE
        or top < -EDGE_TOLERANCE
        or right > 1 + EDGE_TOLERANCE
        or bottom > 1 + EDGE_TOLERANCE
    )


def _classify_box(x_center: float, y_center: float, width: float, height: float) -> tuple[str, str]:
    if width == 0 or height == 0:
        return STATUS_DEGENERATE_BOX, f"box has zero size ({width} x {height})"
    left, top, right, bottom = _box_edges(x_center, y_center, width, height)
    if right <= 0 or bottom <= 0 or left >= 1 or top >= 1:
        return STATUS_DEGENERATE_BOX, "box lies entirely outside the image"
    return STATUS_OK, ""


def read_manifest(
    path: str | Path, *, aliases: Mapping[str, str] | None = None
) -> ManifestReport:
    """Read a released manifest into one row per line that is neither blank nor a comment.

    Raises ``FileNotFoundError`` naming the file, and ``ValueError`` when the file is not
    UTF-8 text. Malformed lines do not raise. They become rows with status ``malformed``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} not found: set crawl.manifest.path in params.yaml")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(f"manifest {path} is not UTF-8 text: {error}") from error

    lookup = build_label_lookup(aliases)
    rows: list[ManifestRow] = []
    comments: list[str] = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            comments.append(stripped)
            continue
        rows.append(parse_line(line, line_number, lookup))

    report = ManifestReport(path=path, rows=rows, comment_lines=comments)
    numbers = [row.number for row in rows if row.number is not None]
    if numbers:
        present = set(numbers)
        report.missing_numbers = [n for n in range(min(numbers), max(numbers) + 1) if n not in present]
        report.repeated_numbers = sorted(n for n, count in Counter(numbers).items() if count > 1)

    log.info(
        "read %d rows from %s: %s; %d numbers missing, %d repeated",
        len(rows),
        path,
        report.status_counts(),
        len(report.missing_numbers),
        len(report.repeated_numbers),
    )
    for row in rows:
        if row.status == STATUS_MALFORMED:
            log.warning("%s line %d is malformed: %s", path, row.line_number, row.reason)
    return report


def box_in_pixels(row: ManifestRow, image_width: int, image_height: int) -> PixelBox:
    """Convert the row's fractional box to pixels of an image of the given size, clipped to it.

    Edges are rounded to the nearest pixel. ``clipped`` is true when the unclipped box passed
    the image edge (see :data:`EDGE_TOLERANCE`). The result may be empty, so callers check
    :attr:`PixelBox.is_empty` before cropping.
    """
    left, top, right, bottom = _box_edges(row.x_center, row.y_center, row.width, row.height)
    x0 = max(0, round(left * image_width))
    y0 = max(0, round(top * image_height))
    x1 = min(image_width, round(right * image_width))
    y1 = min(image_height, round(bottom * image_height))
    return PixelBox(x0, y0, x1, y1, clipped=row.past_edge)


def read_url_mapping(path: str | Path, *, fallback_encoding: str | None = "cp949") -> dict[str, str]:
    """Read a ``url,filepath`` file (the original crawler's download log) into a dict.

    A header row ``url,filepath`` is skipped. URLs may contain unquoted commas, so the file
    path is the last field and the URL everything before it. Keys are normalized URLs
    (:func:`normalize_url`). Each line is decoded as UTF-8 and, failing that, as
    ``fallback_encoding``: the published crawler logs were written on Korean Windows and
    contain a few CP949 lines. Lines that neither decodes, or whose URL cannot be normalized,
    are skipped with a warning.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"URL mapping file {path} not found: check crawl.manifest.mirror")
    mapping: dict[str, str] = {}
    skipped = 0
    for line_number, raw_line in enumerate(path.read_bytes().splitlines(), start=1):
        if not raw_line.strip():
            continue
        line = _decode_line(raw_line, fallback_encoding)
        if line is None:
            skipped += 1
            log.debug("%s line %d skipped: not UTF-8 or %s", path, line_number, fallback_encoding)
            continue
        fields = next(csv.reader([line]))
        if len(fields) < 2:
            skipped += 1
            continue
        url_text, file_text = ",".join(fields[:-1]).strip().lstrip("\ufeff"), fields[-1].strip()
        if line_number == 1 and url_text.lower() == "url":
            continue
        try:
            mapping[normalize_url(url_text)] = file_text
        except ValueError as error:
            skipped += 1
            log.debug("%s line %d skipped: %s", path, line_number, error)
    if skipped:
        log.warning("%s: skipped %d lines that are not url,filepath pairs", path, skipped)
    return mapping


def _decode_line(raw_line: bytes, fallback_encoding: str | None) -> str | None:
    try:
        return raw_line.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if fallback_encoding is None:
        return None
    try:
        return raw_line.decode(fallback_encoding)
    except UnicodeDecodeError:
        return None
