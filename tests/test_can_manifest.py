"""Tests for CAN-format manifest writing and reading."""

from __future__ import annotations

from pathlib import Path

import pytest

from dermcan.can_manifest import (
    ManifestEntry,
    entry_from_pixels,
    entry_to_pixels,
    format_manifest,
    read_manifest,
    write_manifest,
)


def _entries() -> list[ManifestEntry]:
    return [
        entry_from_pixels("malignantmelanoma", (10, 20, 110, 120), 400, 300, "http://127.0.0.1:8000/img/a.jpg"),
        entry_from_pixels("hemangioma", (0, 0, 300, 300), 400, 300, "http://127.0.0.1:8000/img/b.jpg?x=1"),
    ]


def test_manifest_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "can_manifest.txt"
    header = ["generated for a test", "second header line"]
    write_manifest(path, _entries(), header)
    read_header, entries = read_manifest(path)
    assert read_header == header
    assert [entry.label for entry in entries] == ["malignantmelanoma", "hemangioma"]
    assert [entry.url for entry in entries] == [entry.url for entry in _entries()]
    for written, read in zip(_entries(), entries):
        for name in ("x_center", "y_center", "width", "height"):
            assert getattr(read, name) == pytest.approx(getattr(written, name), abs=1e-6)


def test_lines_are_numbered_from_zero() -> None:
    lines = format_manifest(_entries(), ["header"]).splitlines()
    assert lines[0] == "## header"
    assert lines[1].startswith("00000 malignantmelanoma 0.150000 0.233333 0.250000 0.333333 ")
    assert lines[2].startswith("00001 hemangioma ")
    assert len(lines[1].split(" ")) == 7


def test_pixel_box_round_trips() -> None:
    entry = entry_from_pixels("hemangioma", (30, 40, 90, 100), 320, 240, "http://127.0.0.1/x.jpg")
    assert entry_to_pixels(entry, 320, 240) == pytest.approx((30, 40, 90, 100))


def test_url_with_whitespace_is_rejected() -> None:
    entry = ManifestEntry("hemangioma", 0.5, 0.5, 0.1, 0.1, "http://127.0.0.1/a b.jpg")
    with pytest.raises(ValueError, match="whitespace"):
        format_manifest([entry])


def test_coordinates_outside_unit_range_are_rejected() -> None:
    entry = ManifestEntry("hemangioma", 1.5, 0.5, 0.1, 0.1, "http://127.0.0.1/a.jpg")
    with pytest.raises(ValueError, match="x_center"):
        format_manifest([entry])


def test_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_text("## header\n00000 hemangioma 0.5 0.5 0.1\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.txt:2: expected 7 fields"):
        read_manifest(path)


def test_out_of_sequence_number_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "gap.txt"
    path.write_text("00001 hemangioma 0.5 0.5 0.1 0.1 http://127.0.0.1/a.jpg\n", encoding="utf-8")
    with pytest.raises(ValueError, match="out of sequence"):
        read_manifest(path)
