"""Atomic writes leave the old file in place when writing fails."""

from __future__ import annotations

import os
import stat

import pytest

from dermcan import atomic_io


def test_write_json_sorted_and_stable(tmp_path):
    target = tmp_path / "out" / "a.json"
    atomic_io.write_json(target, {"b": 1, "a": [1, 2]})
    first = target.read_bytes()
    atomic_io.write_json(target, {"a": [1, 2], "b": 1})
    assert target.read_bytes() == first
    assert first.index(b'"a"') < first.index(b'"b"')


def test_failed_write_keeps_old_file(tmp_path):
    target = tmp_path / "table.csv"
    atomic_io.write_csv(target, [{"x": 1}], ["x"])
    before = target.read_bytes()
    with pytest.raises(ValueError):
        atomic_io.write_csv(target, [{"x": 2, "unexpected": 3}], ["x"])
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]


def test_csv_round_trip(tmp_path):
    target = tmp_path / "rows.csv"
    rows = [{"path": "data/a b.jpg", "label": "hemangioma"}, {"path": "x,y.jpg", "label": ""}]
    atomic_io.write_csv(target, rows, ["path", "label"])
    assert atomic_io.read_csv(target) == rows


def test_written_file_mode_follows_umask(tmp_path):
    target = tmp_path / "shared.txt"
    old_umask = os.umask(0o022)
    try:
        atomic_io.write_text(target, "x")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
