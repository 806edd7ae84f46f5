"""Leak-free stratified train/validation split of the crawled photos and their crops.

A leakage group is a set of images that must land on one side:

- ``photo``: near-duplicates (the crawl's ``dup_group``), and with them every crop of each
  image, because a crop's group is the group of its source image;
- ``page``: additionally every image found on the same page (linked through exact duplicates
  found on several pages);
- ``host``: additionally every image from the same host.

Groups are the connected components of these links. A greedy, seeded assignment
(:func:`assign_sides`) sends each group to ``train`` or ``val``. It keeps every class's
validation share close to ``val_fraction`` in two training lists at once, the keyword list
(whole photos, keyword labels) and the CAN list (kept crops, verified labels), which
therefore share one assignment.
"""

from __future__ import annotations

import logging
import math
import random
import urllib.parse
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

log = logging.getLogger(__name__)

GROUP_BY = ("photo", "page", "host")
SPLITS = ("train", "val")
SPLIT_COLUMNS = ("path", "label", "split", "group")
# Policies of split_lists for a class too small to split: raise, or leave it out of both lists.
SMALL_CLASS_POLICIES = ("error", "drop")


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, item: str) -> str:
        self.parent.setdefault(item, item)
        root = item
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[item] != root:
            self.parent[item], item = root, self.parent[item]
        return root

    def union(self, a: str, b: str) -> None:
        root_a, root_b = self.find(a), self.find(b)
        if root_a != root_b:
            # The smaller key becomes the root, so the result does not depend on link order.
            low, high = sorted((root_a, root_b))
            self.parent[high] = low


def leakage_groups(manifest_rows: Sequence[Mapping[str, str]], group_by: str = "photo") -> dict[str, str]:
    """Map each stored image (sha256) of ``downloaded`` and ``duplicate`` rows to its group id.

    The group id is the smallest ``dup_group`` in the group, so it is the same for every
    ``group_by`` when the groups are the same.
    """
    if group_by not in GROUP_BY:
        raise ValueError(f"unknown split.group_by {group_by!r}; valid values are {GROUP_BY}")
    links = _UnionFind()
    by_key: dict[str, str] = {}
    for row in manifest_rows:
        if row.get("status") not in ("downloaded", "duplicate") or not row.get("sha256"):
            continue
        sha256 = row["sha256"]
        links.union("sha:" + sha256, "dup:" + (row.get("dup_group") or sha256))
        if group_by == "page":
            value = row.get("page_url", "")
        elif group_by == "host":
            value = urllib.parse.urlsplit(row["url"]).netloc
        else:
            continue
        # Rows without a page or host (local folders, released manifests) are grouped by photo
        # only: an empty key would otherwise tie all of them into one group.
        if not value:
            continue
        key = f"{group_by}:{value}"
        if key in by_key:
            links.union("sha:" + sha256, by_key[key])
        else:
            by_key[key] = "sha:" + sha256

    members: dict[str, list[str]] = defaultdict(list)
    for node in list(links.parent):
        members[links.find(node)].append(node)
    groups: dict[str, str] = {}
    for nodes in members.values():
        group_id = min(node[4:] for node in nodes if node.startswith("dup:"))
        for node in nodes:
            if node.startswith("sha:"):
                groups[node[4:]] = group_id
    return groups


def minimum_images_per_class(val_fraction: float, min_per_split: int) -> int:
    """Return the fewest images a class needs so that each side can expect ``min_per_split``."""
    return max(2 * min_per_split, math.ceil(min_per_split / min(val_fraction, 1.0 - val_fraction)))


def check_class_sizes(counts: Mapping[str, int], *, list_name: str, val_fraction: float, min_per_split: int) -> None:
    """Raise ``ValueError`` naming every class of ``counts`` with too few images for the split."""
    needed = minimum_images_per_class(val_fraction, min_per_split)
    too_few = {label: count for label, count in sorted(counts.items()) if count < needed}
    if too_few:
        listed = ", ".join(f"{label} ({count})" for label, count in too_few.items())
        raise ValueError(
            f"too few images in the {list_name} list for a validation fraction of {val_fraction} "
            f"with at least {min_per_split} per split: {listed}. Each class needs {needed}. "
            "Crawl more images of these classes or lower split.val_fraction"
        )


def assign_sides(
    group_counts: Mapping[str, Counter[str]], *, val_fraction: float, seed: int
) -> dict[str, str]:
    """Assign each group to ``train`` or ``val`` so each count key's val share nears ``val_fraction``.

    Groups are visited largest first, ties in seeded random order. Each goes to the side that
    is less full for the group's keys. A side's fullness for a key is its count after adding
    the group divided by the side's target count. A group without counts goes to ``train``.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"split.val_fraction must be between 0 and 1, got {val_fraction}")
    totals: Counter[str] = Counter()
    for counts in group_counts.values():
        totals.update(counts)
    shares = {"train": 1.0 - val_fraction, "val": val_fraction}

    order = sorted(group_counts)
    random.Random(seed).shuffle(order)
    order.sort(key=lambda group: -sum(group_counts[group].values()))

    filled: dict[str, Counter[str]] = {side: Counter() for side in SPLITS}
    sides: dict[str, str] = {}
    for group in order:
        counts = group_counts[group]

        def fullness(side: str) -> float:
            return sum(
                count * (filled[side][key] + count) / (shares[side] * totals[key])
                for key, count in counts.items()
            )

        side = "val" if counts and fullness("val") < fullness("train") else "train"
        sides[group] = side
        filled[side].update(counts)
    return sides


def split_lists(
    manifest_rows: Sequence[Mapping[str, str]],
    annotation_rows: Sequence[Mapping[str, str]],
    *,
    val_fraction: float,
    seed: int,
    group_by: str = "photo",
    min_per_split: int = 1,
    images_root: str = "data/crawl/images",
    small_classes: str = "error",
) -> tuple[list[dict[str, str]], list[dict[str, str]], dict[str, Any]]:
    """Split the keyword list and the CAN list with one group assignment.

    Returns ``(keyword_rows, can_rows, metrics)``; rows have :data:`SPLIT_COLUMNS`, sorted by
    path. A class with too few images in either list, before or after the assignment (grouping
    can leave a class on one side only), raises ``ValueError`` naming it when
    ``small_classes`` is ``error``. With ``drop`` its rows leave both lists, so both training
    sets keep the same classes, and ``metrics["left_out"]`` lists it with its counts.
    """
    if small_classes not in SMALL_CLASS_POLICIES:
        raise ValueError(f"unknown split.small_classes {small_classes!r}; valid values are {SMALL_CLASS_POLICIES}")
    groups = leakage_groups(manifest_rows, group_by)
    keyword_rows = []
    seen: set[str] = set()
    for row in manifest_rows:
        if row.get("status") != "downloaded" or row["sha256"] in seen:
            continue
        seen.add(row["sha256"])
        sha256 = row["sha256"]
        path = f"{images_root}/{sha256[:2]}/{sha256}.jpg"
        keyword_rows.append({"path": path, "label": row["label"], "group": groups[sha256]})
    can_rows = []
    for row in annotation_rows:
        if row["decision"] not in ("keep", "relabel"):
            continue
        if row["sha256"] not in groups:
            raise ValueError(
                f"crop {row['crop_id']} comes from image {row['sha256']}, which is not a "
                "downloaded image of the crawl manifest: rerun the annotate stage"
            )
        can_rows.append({"path": row["crop_path"], "label": row["verified_label"], "group": groups[row["sha256"]]})

    left_out: dict[str, dict[str, int]] = {}
    if small_classes == "drop":
        needed = minimum_images_per_class(val_fraction, min_per_split)
        # A class missing from one list (every crop of it dropped by annotate) counts as 0 there.
        labels = {row["label"] for row in keyword_rows} | {row["label"] for row in can_rows}
        keyword_counts = Counter(row["label"] for row in keyword_rows)
        can_counts = Counter(row["label"] for row in can_rows)
        small = {label for label in labels if min(keyword_counts[label], can_counts[label]) < needed}
        keyword_rows, can_rows = _leave_out(small, keyword_rows, can_rows, left_out, f"fewer than {needed} images")
    for list_name, rows in (("keyword", keyword_rows), ("CAN", can_rows)):
        counts = Counter(row["label"] for row in rows)
        check_class_sizes(counts, list_name=list_name, val_fraction=val_fraction, min_per_split=min_per_split)

    group_counts: dict[str, Counter[str]] = defaultdict(Counter)
    for list_name, rows in (("keyword", keyword_rows), ("can", can_rows)):
        for row in rows:
            group_counts[row["group"]][f"{list_name}:{row['label']}"] += 1
    sides = assign_sides(group_counts, val_fraction=val_fraction, seed=seed)
    for rows in (keyword_rows, can_rows):
        for row in rows:
            row["split"] = sides[row["group"]]
    if small_classes == "drop":
        one_sided = {
            label
            for rows in (keyword_rows, can_rows)
            for label, counts in _side_counts(rows).items()
            if min(counts["train"], counts["val"]) < min_per_split
        }
        keyword_rows, can_rows = _leave_out(
            one_sided, keyword_rows, can_rows, left_out, f"fewer than {min_per_split} images on one side of the split"
        )

    metrics: dict[str, Any] = {"val_fraction": val_fraction, "group_by": group_by, "seed": seed}
    for list_name, rows in (("keyword", keyword_rows), ("can", can_rows)):
        rows.sort(key=lambda row: row["path"])
        metrics[list_name] = _class_counts(rows)
        _check_both_sides(metrics[list_name], list_name, min_per_split, group_by)
    metrics["groups"] = dict(sorted(Counter(sides.values()).items()))
    metrics["left_out"] = dict(sorted(left_out.items()))
    log.info("split %d groups: %s", len(sides), metrics["groups"])
    return keyword_rows, can_rows, metrics


def _leave_out(
    labels: set[str],
    keyword_rows: list[dict[str, str]],
    can_rows: list[dict[str, str]],
    left_out: dict[str, dict[str, int]],
    reason: str,
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Remove ``labels`` from both lists, add their counts to ``left_out`` and log ``reason``."""
    for label in sorted(labels):
        counts = {
            "keyword": sum(row["label"] == label for row in keyword_rows),
            "can": sum(row["label"] == label for row in can_rows),
        }
        left_out[label] = counts
        log.warning(
            "class %s is left out of both training lists: %s (keyword %d, CAN %d)",
            label, reason, counts["keyword"], counts["can"],
        )
    return (
        [row for row in keyword_rows if row["label"] not in labels],
        [row for row in can_rows if row["label"] not in labels],
    )


def _side_counts(rows: Sequence[Mapping[str, str]]) -> dict[str, Counter[str]]:
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for row in rows:
        counts[row["label"]][row["split"]] += 1
    return counts


def _class_counts(rows: Sequence[Mapping[str, str]]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {split: {} for split in SPLITS}
    for split in SPLITS:
        per_class = Counter(row["label"] for row in rows if row["split"] == split)
        counts[split] = dict(sorted(per_class.items()))
    return counts


def _check_both_sides(
    counts: Mapping[str, Mapping[str, int]], list_name: str, min_per_split: int, group_by: str
) -> None:
    labels = set(counts["train"]) | set(counts["val"])
    short = sorted(
        label for label in labels
        if min(counts["train"].get(label, 0), counts["val"].get(label, 0)) < min_per_split
    )
    if short:
        details = ", ".join(
            f"{label} (train {counts['train'].get(label, 0)}, val {counts['val'].get(label, 0)})"
            for label in short
        )
        raise ValueError(
            f"the {list_name} list has fewer than {min_per_split} images per split for {details}: "
            f"split.group_by: {group_by} makes groups too large to divide. Crawl more images "
            "of these classes, or group by a smaller unit (photo < page < host)"
        )
