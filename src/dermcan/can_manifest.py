"""CAN-format manifests: one lesion crop per line, located in its source photo by URL.

The format::

    ## comment lines start with two hashes
    00000 malignantmelanoma 0.512300 0.430000 0.250000 0.333333 https://example.org/img/a.jpg

Single spaces separate seven fields. The first is a running number from 00000 (five digits or
more), the second the class name. Then come the box centre x and y and the box width and
height, as fractions of the source image's width and height. The last is the source image
URL, which must contain no whitespace.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence

from dermcan.atomic_io import write_text

COORDINATE_DECIMALS = 6


@dataclasses.dataclass(frozen=True)
class ManifestEntry:
    """One manifest line, with coordinates as fractions of the source image size."""

    label: str
    x_center: float
    y_center: float
    width: float
    height: float
    url: str


def entry_from_pixels(
    label: str,
    box: Sequence[float],
    image_width: int,
    image_height: int,
    url: str,
) -> ManifestEntry:
    """Build an entry from a pixel box ``(x0, y0, x1, y1)`` in an image of the given size."""
    x0, y0, x1, y1 = (float(value) for value in box)
    if image_width <= 0 or image_height <= 0:
        raise ValueError(f"image size must be positive, got {image_width}x{image_height} for {url}")
    return ManifestEntry(
        label,
        (x0 + x1) / 2.0 / image_width,
        (y0 + y1) / 2.0 / image_height,
        (x1 - x0) / image_width,
        (y1 - y0) / image_height,
        url,
    )


def entry_to_pixels(entry: ManifestEntry, image_width: int, image_height: int) -> tuple[float, float, float, float]:
    """Return the entry's box as pixels ``(x0, y0, x1, y1)`` in an image of the given size."""
    half_width = entry.width * image_width / 2.0
    half_height = entry.height * image_height / 2.0
    centre_x = entry.x_center * image_width
    centre_y = entry.y_center * image_height
    return (centre_x - half_width, centre_y - half_height, centre_x + half_width, centre_y + half_height)


def format_manifest(entries: Iterable[ManifestEntry], header: Sequence[str] = ()) -> str:
    """Return the manifest text: ``header`` lines prefixed with ``## ``, then one line per entry."""
    lines = [f"## {line}".rstrip() for line in header]
    for number, entry in enumerate(entries):
        _check_entry(entry, number)
        coordinates = " ".join(
            f"{value:.{COORDINATE_DECIMALS}f}"
            for value in (entry.x_center, entry.y_center, entry.width, entry.height)
        )
        lines.append(f"{number:05d} {entry.label} {coordinates} {entry.url}")
    return "\n".join(lines) + "\n"


def _check_entry(entry: ManifestEntry, number: int) -> None:
    if not entry.label or any(character.isspace() for character in entry.label):
        raise ValueError(f"manifest entry {number}: invalid label {entry.label!r}")
    if not entry.url or any(character.isspace() for character in entry.url):
        raise ValueError(f"manifest entry {number}: URL {entry.url!r} is empty or contains whitespace")
    for name in ("x_center", "y_center", "width", "height"):
        value = getattr(entry, name)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"manifest entry {number} ({entry.url}): {name}={value} is outside [0, 1]")


def write_manifest(
    path: str | os.PathLike[str], entries: Iterable[ManifestEntry], header: Sequence[str] = ()
) -> None:
    """Write a manifest atomically (see :func:`format_manifest`)."""
    write_text(path, format_manifest(entries, header))


def read_manifest(path: str | os.PathLike[str]) -> tuple[list[str], list[ManifestEntry]]:
    """Read a manifest and return its header lines (without ``## ``) and its entries in file order.

    Raises ``ValueError`` naming the file and line for a line that does not have seven fields,
    whose running number or coordinates are not numbers, or whose running number is out of sequence.
    """
    header: list[str] = []
    entries: list[ManifestEntry] = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            line = line.rstrip("\n")
            if line.startswith("##"):
                header.append(line[2:].removeprefix(" "))
                continue
            if not line.strip():
                continue
            fields = line.split()
            if len(fields) != 7:
                raise ValueError(
                    f"{path}:{line_number}: expected 7 fields "
                    f"(no label x_center y_center width height url), got {len(fields)}{_REWRITE_ADVICE}"
                )
            number, label, *coordinate_texts, url = fields
            if not number.isdigit():
                raise ValueError(f"{path}:{line_number}: running number {number!r} is not a number{_REWRITE_ADVICE}")
            if int(number) != len(entries):
                raise ValueError(
                    f"{path}:{line_number}: running number {number} out of sequence, "
                    f"expected {len(entries):05d}{_REWRITE_ADVICE}"
                )
            coordinates = [_parse_coordinate(path, line_number, name, text)
                           for name, text in zip(("x_center", "y_center", "width", "height"), coordinate_texts)]
            entries.append(ManifestEntry(label, *coordinates, url))
    return header, entries


# The project's manifest (data/annotated/can_manifest.txt) is written only by the annotate stage.
_REWRITE_ADVICE = (
    ". A line written by dermcan never looks like this, so the file was edited or cut short: "
    "rerun the annotate stage to rewrite data/annotated/can_manifest.txt, or fix the line"
)


def _parse_coordinate(path: str | os.PathLike[str], line_number: int, name: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{path}:{line_number}: {name} {text!r} is not a number{_REWRITE_ADVICE}") from None
