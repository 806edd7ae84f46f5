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


def test_write_torch_gives_equal_bytes(tmp_path):
    import torch

    state = {"weight": torch.arange(12, dtype=torch.float32).reshape(3, 4), "epoch": 7}
    first, second = tmp_path / "first.pt", tmp_path / "models" / "other name.pt"

    atomic_io.write_torch(first, state)
    atomic_io.write_torch(second, state)

    assert first.read_bytes() == second.read_bytes()
    loaded = torch.load(second, weights_only=True)
    assert loaded["epoch"] == 7
    assert torch.equal(loaded["weight"], state["weight"])
    assert sorted(path.name for path in tmp_path.rglob("*") if path.is_file()) == ["first.pt", "other name.pt"]


def test_replaced_folder_swaps_whole_folder(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "old.txt").write_text("old")

    with atomic_io.replaced_folder(folder) as partial:
        assert list(partial.iterdir()) == []
        (partial / "sub").mkdir()
        (partial / "sub" / "new.txt").write_text("new")
        assert (folder / "old.txt").exists()

    assert sorted(str(path.relative_to(folder)) for path in folder.rglob("*")) == ["sub", "sub/new.txt"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]


def test_replaced_folder_failure_keeps_old(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "old.txt").write_text("old")

    with pytest.raises(RuntimeError, match="writer failed"):
        with atomic_io.replaced_folder(folder) as partial:
            (partial / "half.txt").write_text("half")
            raise RuntimeError("writer failed")

    assert [path.name for path in folder.iterdir()] == ["old.txt"]
    with atomic_io.replaced_folder(folder) as partial:
        assert list(partial.iterdir()) == []  # the leftover partial folder was cleared
    assert list(folder.iterdir()) == []


def test_replaced_folder_creates_missing(tmp_path):
    folder = tmp_path / "a" / "b"

    with atomic_io.replaced_folder(folder) as partial:
        (partial / "x.txt").write_text("x")

    assert (folder / "x.txt").read_text() == "x"
    assert not (tmp_path / "a" / "b.partial").exists()
