"""Tar shards of the released folders, each image indexed with where it came from.

``write_release_shards`` packs ``data/crawl`` and ``data/annotated`` with ``dermcan.shards``.
Each index row of a crawled image carries its crawl manifest row (first ``downloaded`` row of
its SHA-256). Each crop carries its ``annotations.csv`` row plus ``split`` and ``group`` from
``data/split/can.csv``. A source column named like an index column gets a ``source_`` prefix.
"""

from __future__ import annotations

import logging
from pathlib import Path

from dermcan import atomic_io, shards

log = logging.getLogger(__name__)

ANNOTATED_FOLDER = Path("data/annotated")
ANNOTATIONS = Path("data/annotated/annotations.csv")
CAN_SPLIT = Path("data/split/can.csv")
CRAWL_FOLDER = Path("data/crawl/images")
CRAWL_MANIFEST = Path("data/crawl/manifest.csv")
# Sixteen shards keep each one near 3 MB for 10,000 crops of 5 KB, and a fixed count keeps an
# image in the same shard from one release to the next (see dermcan.shards).
RELEASE_NUM_SHARDS = 16


def _crawl_provenance(root: Path) -> tuple[dict[str, dict[str, str]], list[str]]:
    """Map files under data/crawl to their crawl manifest row (first downloaded row per SHA-256)."""
    manifest = root / CRAWL_MANIFEST
    if not manifest.is_file():
        return {}, []
    rows = atomic_io.read_csv(manifest)
    columns = [_provenance_column(column) for column in (rows[0].keys() if rows else [])]
    by_digest: dict[str, dict[str, str]] = {}
    for row in rows:
        if row.get("status") == "downloaded" and row.get("sha256"):
            by_digest.setdefault(row["sha256"], row)
    provenance = {}
    images = root / CRAWL_FOLDER
    for image in images.rglob("*") if images.is_dir() else []:
        if image.is_file() and image.stem in by_digest:
            row = by_digest[image.stem]
            relative = image.relative_to(root / CRAWL_FOLDER.parent).as_posix()
            provenance[relative] = {_provenance_column(key): value for key, value in row.items()}
    return provenance, columns


def _annotated_provenance(root: Path) -> tuple[dict[str, dict[str, str]], list[str]]:
    """Map crops under data/annotated to their annotations.csv row and their can.csv split."""
    annotations = root / ANNOTATIONS
    if not annotations.is_file():
        return {}, []
    rows = atomic_io.read_csv(annotations)
    columns = [_provenance_column(column) for column in (rows[0].keys() if rows else [])]
    splits = {}
    split_list = root / CAN_SPLIT
    if split_list.is_file():
        splits = {row["path"]: row for row in atomic_io.read_csv(split_list)}
        columns += ["split", "group"]
    prefix = f"{ANNOTATED_FOLDER.as_posix()}/"
    provenance = {}
    for row in rows:
        crop_path = row.get("crop_path", "")
        if not crop_path.startswith(prefix):
            continue
        entry = {_provenance_column(key): value for key, value in row.items()}
        entry["split"] = splits.get(crop_path, {}).get("split", "")
        entry["group"] = splits.get(crop_path, {}).get("group", "")
        provenance[crop_path[len(prefix) :]] = entry
    return provenance, columns


def _provenance_column(column: str) -> str:
    # The index has its own sha256 column (of the stored file); the source's is kept beside it.
    return f"source_{column}" if column in shards.INDEX_COLUMNS else column


def write_release_shards(root: Path, destination_root: Path) -> None:
    """Pack data/crawl and data/annotated into tar shards with provenance indexes.

    The shards of each folder go to ``destination_root / <folder name>`` ("crawl", "annotated").
    """
    for folder, collect in ((CRAWL_FOLDER.parent, _crawl_provenance), (ANNOTATED_FOLDER, _annotated_provenance)):
        source = root / folder
        destination = destination_root / folder.name
        if not source.is_dir():
            log.warning("%s not found: the release has no shards of it", source)
            continue
        provenance, columns = collect(root)
        shards.write_shards(
            source,
            destination,
            num_shards=RELEASE_NUM_SHARDS,
            provenance=provenance,
            provenance_columns=columns,
        )
