"""Tests for the leak-free stratified split."""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from dermcan.atomic_io import read_csv, write_csv
from dermcan.splitting import SPLIT_COLUMNS, leakage_groups, split_lists

CLASSES = ("hemangioma", "malignantmelanoma", "melanocyticnevus")
REPO = Path(__file__).resolve().parents[1]


def _crawl(per_class: int = 20) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Photos with near-duplicate groups, pages of three photos, two crops on every fifth photo."""
    manifest, annotations = [], []
    for class_index, label in enumerate(CLASSES):
        for index in range(per_class):
            sha = f"{class_index:02d}{index:02d}" + "0" * 60
            group = f"{class_index:02d}{index - index % 2:02d}" + "0" * 60 if index % 4 < 2 else sha
            page = f"http://host{index % 3}.test/{label}/page-{index // 3}.html"
            manifest.append({
                "url": f"http://host{index % 3}.test/img/{sha[:8]}.jpg", "page_url": page,
                "label": label, "status": "downloaded", "sha256": sha, "dup_group": group,
            })
            for box in range(2 if index % 5 == 0 else 1):
                crop_id = f"{sha[:16]}_{box}"
                annotations.append({
                    "crop_id": crop_id, "sha256": sha, "decision": "keep", "verified_label": label,
                    "crop_path": f"data/annotated/{label}/{crop_id}.jpg",
                })
    first = manifest[0]
    # An exact copy of the first photo, shown on the page of the tenth.
    manifest.append(dict(first, url="http://host9.test/img/copy.jpg", page_url=manifest[9]["page_url"],
                         status="duplicate"))
    annotations.append({"crop_id": "", "sha256": manifest[1]["sha256"], "decision": "reject",
                        "verified_label": "", "crop_path": ""})
    return manifest, annotations


def _split(group_by: str = "photo", seed: int = 0, val_fraction: float = 0.25):
    manifest, annotations = _crawl()
    return split_lists(manifest, annotations, val_fraction=val_fraction, seed=seed, group_by=group_by)


def _sides_by(rows, key_of) -> dict[str, set[str]]:
    sides: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        sides[key_of(row)].add(row["split"])
    return sides


def test_near_duplicates_share_a_side() -> None:
    manifest, _ = _crawl()
    keyword_rows, can_rows, _ = _split()
    group_of_sha = {row["sha256"]: row["dup_group"] for row in manifest}
    sha_of_path = {f"data/crawl/images/{sha[:2]}/{sha}.jpg": sha for sha in group_of_sha}
    sides = _sides_by(keyword_rows, lambda row: group_of_sha[sha_of_path[row["path"]]])
    assert all(len(split) == 1 for split in sides.values())
    assert any(len({s for s, g in group_of_sha.items() if g == group}) == 2 for group in sides)


def test_crops_of_one_photo_share_a_side() -> None:
    _, can_rows, _ = _split()
    sides = _sides_by(can_rows, lambda row: row["path"].rsplit("/", 1)[1].split("_")[0])
    assert all(len(split) == 1 for split in sides.values())


def test_keyword_and_can_lists_use_one_assignment() -> None:
    keyword_rows, can_rows, _ = _split()
    keyword_side = {row["group"]: row["split"] for row in keyword_rows}
    assert all(keyword_side[row["group"]] == row["split"] for row in can_rows)


def test_no_group_on_both_sides() -> None:
    for group_by in ("photo", "page"):
        keyword_rows, can_rows, _ = _split(group_by=group_by, val_fraction=0.2)
        sides = _sides_by(keyword_rows + can_rows, lambda row: row["group"])
        assert all(len(split) == 1 for split in sides.values()), group_by


def test_page_grouping_keeps_pages_together() -> None:
    manifest, _ = _crawl()
    groups = leakage_groups(manifest, "page")
    by_page: dict[str, set[str]] = defaultdict(set)
    for row in manifest:
        by_page[row["page_url"]].add(groups[row["sha256"]])
    assert all(len(ids) == 1 for ids in by_page.values())


def test_exact_duplicate_on_other_page_links_pages() -> None:
    manifest, _ = _crawl()
    first, tenth = manifest[0]["sha256"], manifest[9]["sha256"]
    assert manifest[0]["page_url"] != manifest[9]["page_url"]
    assert leakage_groups(manifest, "photo")[first] != leakage_groups(manifest, "photo")[tenth]
    assert leakage_groups(manifest, "page")[first] == leakage_groups(manifest, "page")[tenth]


def test_host_grouping_gives_one_group_per_connected_host() -> None:
    manifest, _ = _crawl()
    groups = leakage_groups(manifest, "host")
    assert len(set(groups.values())) <= 3


def test_three_hosts_are_too_few_groups() -> None:
    with pytest.raises(ValueError, match="group_by: host makes groups too large"):
        _split(group_by="host", val_fraction=0.2)


def test_split_is_stratified() -> None:
    keyword_rows, can_rows, metrics = _split()
    for list_name in ("keyword", "can"):
        for label in CLASSES:
            val = metrics[list_name]["val"].get(label, 0)
            train = metrics[list_name]["train"].get(label, 0)
            assert 0.15 <= val / (val + train) <= 0.35, (list_name, label, val, train)


def test_same_seed_gives_same_split() -> None:
    first = _split(seed=3)
    second = _split(seed=3)
    assert first[0] == second[0]
    assert first[1] == second[1]


def test_other_seed_gives_other_split() -> None:
    assert _split(seed=1)[0] != _split(seed=2)[0]


def test_rejected_rows_are_not_listed() -> None:
    _, can_rows, _ = _split()
    assert all(row["path"].startswith("data/annotated/") for row in can_rows)
    assert len(can_rows) == 3 * 24


def test_too_few_images_names_the_class() -> None:
    manifest, annotations = _crawl()
    manifest = [row for row in manifest if row["label"] != "hemangioma" or row["sha256"][2:4] < "03"]
    annotations = [row for row in annotations if row["sha256"] in {r["sha256"] for r in manifest}]
    with pytest.raises(ValueError, match=r"hemangioma \(3\)"):
        split_lists(manifest, annotations, val_fraction=0.2, seed=0)


def test_drop_leaves_small_class_out() -> None:
    manifest, annotations = _crawl()
    manifest = [row for row in manifest if row["label"] != "hemangioma" or row["sha256"][2:4] < "03"]
    annotations = [row for row in annotations if row["sha256"] in {r["sha256"] for r in manifest}]
    keyword_rows, can_rows, metrics = split_lists(manifest, annotations, val_fraction=0.2, seed=0, small_classes="drop")
    assert "hemangioma" not in {row["label"] for row in keyword_rows}
    assert "hemangioma" not in {row["label"] for row in can_rows}
    assert metrics["left_out"]["hemangioma"]["keyword"] == 3
    assert len({row["label"] for row in keyword_rows}) == 2
    assert "hemangioma" not in metrics["can"]["train"]


def test_drop_keeps_large_classes() -> None:
    _, _, default = _split()
    manifest, annotations = _crawl()
    _, _, metrics = split_lists(manifest, annotations, val_fraction=0.25, seed=0, small_classes="drop")
    assert metrics["left_out"] == {}
    assert metrics["can"] == default["can"]


def test_drop_leaves_out_class_without_crops() -> None:
    manifest, annotations = _crawl()
    annotations = [row for row in annotations if row["verified_label"] != "hemangioma"]
    keyword_rows, can_rows, metrics = split_lists(manifest, annotations, val_fraction=0.2, seed=0, small_classes="drop")
    assert "hemangioma" not in {row["label"] for row in keyword_rows}
    assert metrics["left_out"]["hemangioma"] == {"keyword": 20, "can": 0}


def test_unknown_small_class_policy_is_rejected() -> None:
    manifest, annotations = _crawl()
    with pytest.raises(ValueError, match="split.small_classes 'skip'"):
        split_lists(manifest, annotations, val_fraction=0.2, seed=0, small_classes="skip")


def test_unknown_group_by_is_rejected() -> None:
    manifest, _ = _crawl()
    with pytest.raises(ValueError, match="photo, page|'photo', 'page'"):
        leakage_groups(manifest, "site")


def test_split_stage_writes_lists(tmp_path: Path) -> None:
    manifest, annotations = _crawl()
    (tmp_path / "data/crawl").mkdir(parents=True)
    (tmp_path / "data/annotated").mkdir(parents=True)
    write_csv(tmp_path / "data/crawl/manifest.csv", manifest, list(manifest[0]))
    write_csv(tmp_path / "data/annotated/annotations.csv", annotations, list(annotations[0]))
    (tmp_path / "params.yaml").write_text(
        "split:\n  seed: 0\n  val_fraction: 0.25\n  group_by: photo\n  min_per_split: 1\n", encoding="utf-8"
    )
    subprocess.run([sys.executable, str(REPO / "src/stages/split.py")], cwd=tmp_path, check=True,
                   capture_output=True)
    can_rows = read_csv(tmp_path / "data/split/can.csv")
    keyword_rows = read_csv(tmp_path / "data/split/keyword.csv")
    assert list(can_rows[0]) == list(SPLIT_COLUMNS)
    assert len(keyword_rows) == 60
    assert (tmp_path / "metrics/split.json").is_file()


def test_page_grouping_skips_rows_without_page():
    rows = [
        {"status": "downloaded", "sha256": f"{i:064x}", "dup_group": f"{i:064x}", "page_url": "", "url": f"folder/{i}.jpg"}
        for i in range(4)
    ]
    for group_by in ("page", "host"):
        groups = leakage_groups(rows, group_by=group_by)
        assert len(set(groups.values())) == 4, group_by
