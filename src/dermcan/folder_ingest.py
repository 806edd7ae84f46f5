"""Local folders of photographs entering the pipeline as if they had been crawled.

Two layouts are read:

- ImageFolder: ``<root>/<class folder>/**/<file>``. The class folder name is mapped to a
  project class through :func:`dermcan.released_manifests.build_label_lookup` (class names,
  display names, English names, plus the ``aliases`` from params), so "Malignant melanoma",
  "malignant_melanoma" and "melanoma" all map to ``malignantmelanoma``.
- Any folder plus a labels CSV with the header ``file,label``. ``file`` is relative to the
  root (or absolute inside it), and ``label`` is mapped the same way.

Every file becomes one crawl manifest row (:data:`dermcan.crawl_manifest.MANIFEST_COLUMNS`).
``url`` is the file's path relative to the root, in POSIX form and without a scheme, so the
manifest does not depend on where the folder sits on one machine; ``page_url`` is empty and
``caption`` is the label text as found (folder name or CSV label). Images pass the crawler's
verification and storage (:class:`dermcan.image_store.ImageStore`), so a stored copy is an
upright, RGB, metadata-free JPEG, and :func:`dermcan.crawl_manifest.finalize_rows` marks exact
duplicates and near-duplicate groups as in a crawl. Statuses are the crawl manifest's: a file
with no usable label (not in a class folder, a folder or CSV label that maps to no class, a
file the CSV does not list or lists with two labels) gets ``no_keyword`` and a reason saying
which. A CSV row naming a missing file has no file to describe: it is returned separately.
"""

from __future__ import annotations

import csv
import logging
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from dermcan.crawl_manifest import empty_row, finalize_rows
from dermcan.crawling import CrawlConfig, CrawlResult
from dermcan.image_store import ImageRejected, ImageStore
from dermcan.released_manifests import build_label_lookup, map_label

log = logging.getLogger(__name__)

# Status of a file that no class folder or CSV row labels. The crawl manifest uses the same
# status for an image whose caption matched no class keyword.
NO_LABEL = "no_keyword"

# Files that operating systems and photo tools leave in folders, which are never photographs.
IGNORED_NAMES = frozenset({"Thumbs.db", "desktop.ini", ".DS_Store"})


@dataclass(frozen=True)
class FolderEntry:
    """One file found under the root, with its label before verification.

    ``status`` is empty when the file is to be verified, or the final status otherwise.
    """

    relative_path: str
    label_text: str
    label: str | None
    status: str = ""
    reason: str = ""


def _walk_files(folder: Path) -> list[Path]:
    """Return regular files under ``folder``, skipping hidden files and folders, sorted."""
    found: list[Path] = []
    for directory, subdirectories, names in os.walk(folder, followlinks=False):
        subdirectories[:] = sorted(name for name in subdirectories if not name.startswith("."))
        for name in names:
            if name.startswith(".") or name in IGNORED_NAMES:
                continue
            path = Path(directory) / name
            if path.is_file():
                found.append(path)
    return sorted(found)


def _check_root(root: Path) -> Path:
    if not root.is_dir():
        raise FileNotFoundError(f"folder {root} not found: set crawl.folder.path in params.yaml")
    return root.resolve()


def list_image_folder(
    root: str | Path, *, aliases: Mapping[str, str] | None = None
) -> list[FolderEntry]:
    """List the files of an ImageFolder tree with labels from their class folder names.

    Files directly in ``root`` have no class folder, and files under a folder whose name maps to
    no class have no usable label. Both get :data:`NO_LABEL` with a reason.
    """
    root = _check_root(Path(root))
    lookup = build_label_lookup(aliases)
    entries: list[FolderEntry] = []
    for path in _walk_files(root):
        relative = path.relative_to(root)
        if len(relative.parts) == 1:
            entries.append(
                FolderEntry(relative.as_posix(), "", None, NO_LABEL, "file is not in a class folder")
            )
            continue
        folder_name = relative.parts[0]
        label = map_label(folder_name, lookup)
        if label is None:
            entries.append(
                FolderEntry(
                    relative.as_posix(),
                    folder_name,
                    None,
                    NO_LABEL,
                    f"class folder {folder_name!r} matches no class or alias",
                )
            )
        else:
            entries.append(FolderEntry(relative.as_posix(), folder_name, label))
    log.info("found %d files in %d class folders under %s", len(entries), _count_folders(entries), root)
    return entries


def _count_folders(entries: Iterable[FolderEntry]) -> int:
    return len({entry.relative_path.split("/", 1)[0] for entry in entries if "/" in entry.relative_path})


def read_labels_csv(path: str | Path) -> list[tuple[int, str, str]]:
    """Read a ``file,label`` CSV into ``(line number, file, label)`` triples.

    Raises ``ValueError`` naming the file when the header lacks ``file`` or ``label``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"labels CSV {path} not found: set crawl.folder.labels_csv in params.yaml")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = {"file", "label"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(
                f"labels CSV {path} has columns {reader.fieldnames}; it needs a header with "
                f"'file' and 'label' (missing: {', '.join(sorted(missing))})"
            )
        # Line 1 is the header, so the first data row is line 2.
        return [
            (line_number, (row["file"] or "").strip(), (row["label"] or "").strip())
            for line_number, row in enumerate(reader, start=2)
        ]


def list_labelled_files(
    root: str | Path, labels_csv: str | Path, *, aliases: Mapping[str, str] | None = None
) -> list[FolderEntry]:
    """List the files under ``root`` with labels from ``labels_csv``.

    A CSV row whose file is missing becomes an entry with status ``missing_file``, which
    :func:`ingest_entries` reports apart from the manifest rows. A file listed twice with
    different labels, or with a label that maps to no class, or not listed at all, gets
    :data:`NO_LABEL` with a reason. The labels CSV itself is not listed when it lies under ``root``.
    """
    root = _check_root(Path(root))
    labels_csv = Path(labels_csv).resolve()
    lookup = build_label_lookup(aliases)

    labels: dict[str, str] = {}
    conflicts: set[str] = set()
    entries: list[FolderEntry] = []
    for line_number, file_text, label_text in read_labels_csv(labels_csv):
        path = Path(file_text)
        path = (path if path.is_absolute() else root / path).resolve()
        if not path.is_relative_to(root):
            entries.append(
                FolderEntry(file_text, label_text, None, "missing_file",
                            f"{labels_csv} line {line_number}: {file_text!r} is outside {root}")
            )  # fmt: skip
            continue
        relative = path.relative_to(root).as_posix()
        if not path.is_file():
            entries.append(
                FolderEntry(relative, label_text, None, "missing_file",
                            f"{labels_csv} line {line_number}: file not found")
            )  # fmt: skip
            continue
        if relative in labels and labels[relative] != label_text:
            conflicts.add(relative)
        labels.setdefault(relative, label_text)

    for path in _walk_files(root):
        if path == labels_csv:
            continue
        relative = path.relative_to(root).as_posix()
        label_text = labels.get(relative)
        if label_text is None:
            entries.append(FolderEntry(relative, "", None, NO_LABEL, "not listed in the labels CSV"))
        elif relative in conflicts:
            entries.append(
                FolderEntry(relative, label_text, None, NO_LABEL,
                            "the labels CSV lists this file with different labels")
            )  # fmt: skip
        else:
            label = map_label(label_text, lookup)
            if label is None:
                entries.append(
                    FolderEntry(relative, label_text, None, NO_LABEL,
                                f"label {label_text!r} matches no class or alias")
                )  # fmt: skip
            else:
                entries.append(FolderEntry(relative, label_text, label))
    log.info("labels CSV %s: %d files listed, %d entries in all", labels_csv, len(labels), len(entries))
    return entries


@dataclass
class FolderIngest:
    """Crawl manifest rows for the files of a folder, and labels CSV rows naming missing files."""

    rows: list[dict[str, Any]]
    missing_files: list[str]


def ingest_entries(
    root: str | Path,
    entries: Iterable[FolderEntry],
    store: ImageStore,
    *,
    max_bytes: int,
    near_duplicate_distance: int,
) -> FolderIngest:
    """Verify and store the labelled files and build one crawl manifest row per file.

    Rows come from :func:`dermcan.crawl_manifest.finalize_rows`: sorted by ``url``, exact
    duplicates marked ``duplicate``, near duplicates (perceptual hashes within
    ``near_duplicate_distance`` bits) sharing a ``dup_group``. A file larger than
    ``max_bytes`` is not read.
    """
    root = Path(root).resolve()
    outcomes: list[dict[str, Any]] = []
    missing: list[str] = []
    ordered = sorted(entries, key=lambda entry: entry.relative_path)
    for entry in tqdm(ordered, desc="ingest folder", unit="file", disable=None):
        if entry.status == "missing_file":
            missing.append(f"{entry.relative_path}: {entry.reason}")
            log.warning("labels CSV names a missing file %s (%s)", entry.relative_path, entry.reason)
            continue
        row = empty_row(url=entry.relative_path, caption=entry.label_text, label=entry.label or "",
                        status=entry.status, reason=entry.reason)  # fmt: skip
        if not entry.status:
            _verify_and_store(root / entry.relative_path, row, store, max_bytes=max_bytes)
        outcomes.append(row)

    rows = finalize_rows(outcomes, phash_max_distance=near_duplicate_distance)
    counts = Counter(row["status"] for row in rows)
    log.info("ingested %d files from %s: %s", len(rows), root, dict(sorted(counts.items())))
    return FolderIngest(rows=rows, missing_files=missing)


def _verify_and_store(path: Path, row: dict[str, Any], store: ImageStore, *, max_bytes: int) -> None:
    try:
        size = path.stat().st_size
        if size > max_bytes:
            row.update(status="too_large", reason=f"{size} bytes exceeds the limit of {max_bytes}", bytes=size)
            return
        data = path.read_bytes()
    except OSError as error:
        # The file was listed a moment ago, so it vanished or became unreadable meanwhile.
        row.update(status="corrupt", reason=f"failed to read {path}: {error}")
        log.warning("failed to read %s: %s", path, error)
        return
    try:
        stored = store.store(data)
    except ImageRejected as error:
        row.update(status=error.status, reason=error.reason, bytes=len(data))
        log.info("rejected %s: %s", path, error)
        return
    row.update(
        status="downloaded",
        sha256=stored.sha256,
        phash=stored.phash,
        width=stored.width,
        height=stored.height,
        bytes=stored.bytes,
    )


def ingest_folder(
    root: str | Path,
    store: ImageStore,
    *,
    labels_csv: str | Path | None = None,
    aliases: Mapping[str, str] | None = None,
    max_bytes: int,
    near_duplicate_distance: int,
) -> FolderIngest:
    """List, verify and store a folder (ImageFolder layout, or any layout with a labels CSV)."""
    if labels_csv:
        entries = list_labelled_files(root, labels_csv, aliases=aliases)
    else:
        entries = list_image_folder(root, aliases=aliases)
    return ingest_entries(
        root, entries, store, max_bytes=max_bytes, near_duplicate_distance=near_duplicate_distance
    )


def collect_folder(config: CrawlConfig, settings: Mapping[str, Any], store: ImageStore) -> CrawlResult:
    """Run the ``folder`` crawl source with ``settings`` from params ``crawl.folder``.

    Keys: ``path`` (the root), ``labels_csv`` (null for ImageFolder layout) and ``aliases``.
    """
    if not settings.get("path"):
        raise ValueError("crawl.source is folder but crawl.folder.path is empty: set it to a folder of photos")
    ingest = ingest_folder(
        settings["path"], store,
        labels_csv=settings.get("labels_csv") or None,
        aliases=settings.get("aliases") or None,
        max_bytes=config.max_image_bytes,
        near_duplicate_distance=config.phash_max_distance,
    )  # fmt: skip
    return CrawlResult(
        rows=ingest.rows, pages_fetched=0, pages_failed={}, hosts=[], resumed_pages=0, resumed_images=0
    )
