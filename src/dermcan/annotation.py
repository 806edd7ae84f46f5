"""Annotation: from crawled web photos to lesion crops with algorithmically checked labels.

For each distinct downloaded image of the crawl manifest (``status == downloaded``):

1. :mod:`dermcan.photo_filter` decides whether it is a clinical photograph. If not, the image
   gets one ``reject`` row.
2. A detector from :mod:`dermcan.lesion_detection` proposes lesion boxes, and each becomes a
   square crop box with a margin. A photo without any box gets one ``drop`` row.
3. :mod:`dermcan.label_verification` checks each crop's keyword label and decides ``keep``,
   ``relabel`` or ``drop``.

The result is the annotations table (columns :data:`ANNOTATION_COLUMNS`, one row per candidate
box or rejected image, each with a reason), the kept and relabelled crops in ImageFolder layout
and a CAN-format manifest of them. In the table, ``x0 y0 x1 y1`` is the detected lesion box and
``crop_x0 crop_y0 crop_x1 crop_y1`` the square crop box with its margin. The manifest lists
the crop box. Only the crawl outputs are read: the demo's truth file is
for :mod:`dermcan.annotation_truth` alone.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from dermcan import can_manifest
from dermcan.atomic_io import replaced_folder, write_csv
from dermcan.label_verification import (
    VERIFIER_KINDS,
    Verification,
    crop_features,
    verify_with_classifier,
    verify_with_confident_learning,
)
from dermcan.lesion_detection import Box, Detector, make_detector, square_box
from dermcan.photo_filter import PhotoFilterConfig, assess_photo

log = logging.getLogger(__name__)

ANNOTATION_COLUMNS = (
    "crop_id",
    "sha256",
    "url",
    "page_url",
    "host",
    "dup_group",
    "image_width",
    "image_height",
    "x0",
    "y0",
    "x1",
    "y1",
    "crop_x0",
    "crop_y0",
    "crop_x1",
    "crop_y1",
    "score",
    "keyword_label",
    "verified_label",
    "decision",
    "reason",
    "crop_path",
)
KEPT_DECISIONS = ("keep", "relabel")


@dataclasses.dataclass(frozen=True)
class AnnotateConfig:
    """Settings of :func:`annotate`, read from the ``annotate`` section of params.yaml."""

    seed: int = 0
    photo_filter: PhotoFilterConfig = PhotoFilterConfig()
    detector: Mapping[str, Any] = dataclasses.field(default_factory=lambda: {"kind": "colour"})
    box_margin: float = 0.1
    crop_size: int = 224
    verifier: Mapping[str, Any] = dataclasses.field(default_factory=lambda: {"kind": "cleanlab"})
    folds: int = 5
    classifier: str = "random_forest"
    filter_by: str = "predicted_neq_given"
    label_issues: str = "relabel"
    relabel_min_confidence: float = 0.8

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "AnnotateConfig":
        known = {field.name for field in dataclasses.fields(cls)} | {"contact_sheet", "measure"}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"unknown annotate keys {unknown}; valid keys are {sorted(known)}")
        values = {key: params[key] for key in params if key in known - {"contact_sheet", "measure"}}
        values["photo_filter"] = PhotoFilterConfig.from_params(params.get("photo_filter", {}))
        config = cls(**values)
        kind = config.verifier.get("kind", "cleanlab")
        if kind not in VERIFIER_KINDS:
            raise ValueError(
                f"unknown annotate.verifier.kind {kind!r}; valid kinds are {VERIFIER_KINDS}"
            )
        return config


@dataclasses.dataclass
class Candidate:
    """A crop proposed by the detector, waiting for label verification."""

    photo: Mapping[str, str]
    index: int
    detection: Box
    crop_box: Box
    image_size: tuple[int, int]
    crop: Image.Image


@dataclasses.dataclass
class Annotation:
    """The outcome of :func:`annotate`: table rows (in output order) and the crops to write."""

    rows: list[dict[str, Any]]
    crops: dict[str, Image.Image]
    rejected_thumbnails: list[tuple[Image.Image, str]]


def stored_image_path(images_root: str | os.PathLike[str], sha256: str) -> Path:
    """Return where the crawler stores the verified image with this sha256."""
    return Path(images_root) / sha256[:2] / f"{sha256}.jpg"


def candidate_photos(manifest_rows: Sequence[Mapping[str, str]]) -> list[Mapping[str, str]]:
    """Return the ``downloaded`` manifest rows, one per distinct sha256, in manifest order."""
    seen: set[str] = set()
    photos = []
    for row in manifest_rows:
        if row.get("status") != "downloaded" or not row.get("sha256"):
            continue
        if row["sha256"] in seen:
            continue
        seen.add(row["sha256"])
        photos.append(row)
    return photos


def _base_row(photo: Mapping[str, str], width: int | str, height: int | str) -> dict[str, Any]:
    return {
        "sha256": photo["sha256"],
        "url": photo["url"],
        "page_url": photo.get("page_url", ""),
        "host": urllib.parse.urlsplit(photo["url"]).netloc,
        "dup_group": photo.get("dup_group") or photo["sha256"],
        "image_width": width,
        "image_height": height,
        "keyword_label": photo.get("label", ""),
    }


def propose_crops(
    photos: Sequence[Mapping[str, str]],
    images_root: str | os.PathLike[str],
    config: AnnotateConfig,
    detector: Detector,
) -> tuple[list[Candidate], list[dict[str, Any]], list[tuple[Image.Image, str]]]:
    """Filter each photo and detect lesions on the accepted ones.

    Returns the candidate crops, the table rows of photos without a candidate, and thumbnails
    of those photos captioned with their reasons.
    """
    candidates: list[Candidate] = []
    rows: list[dict[str, Any]] = []
    thumbnails: list[tuple[Image.Image, str]] = []
    for photo in tqdm(photos, desc="annotate", unit="photo", disable=None):
        if not photo.get("label"):
            rows.append(_empty_row(photo, photo.get("width", ""), photo.get("height", ""), "drop",
                                   "no keyword label in the crawl manifest"))
            continue
        path = stored_image_path(images_root, photo["sha256"])
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} (for {photo['url']}) is missing: rerun the crawl stage to restore "
                "data/crawl/images"
            )
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        width, height = image.size
        assessment = assess_photo(image, config.photo_filter)
        if not assessment.is_photo:
            rows.append(_empty_row(photo, width, height, "reject", f"not a clinical photo: {assessment.reason}"))
            thumbnails.append((_thumbnail(image), f"reject: {assessment.reason}"))
            continue
        detections = detector.detect(image)
        if not detections:
            rows.append(_empty_row(photo, width, height, "drop", "no lesion found"))
            thumbnails.append((_thumbnail(image), "drop: no lesion found"))
            continue
        for index, detection in enumerate(detections):
            crop_box = square_box(detection, width, height, config.box_margin)
            crop = image.crop((crop_box.x0, crop_box.y0, crop_box.x1, crop_box.y1))
            crop = crop.resize((config.crop_size, config.crop_size), Image.LANCZOS)
            candidates.append(Candidate(photo, index, detection, crop_box, (width, height), crop))
    return candidates, rows, thumbnails


def _empty_row(
    photo: Mapping[str, str], width: int | str, height: int | str, decision: str, reason: str
) -> dict[str, Any]:
    row = _base_row(photo, width, height)
    row.update({column: "" for column in ("crop_id", "x0", "y0", "x1", "y1", "score", "verified_label")})
    row.update({column: "" for column in ("crop_x0", "crop_y0", "crop_x1", "crop_y1")})
    row.update(decision=decision, reason=reason, crop_path="")
    return row


def _thumbnail(image: Image.Image, size: int = 160) -> Image.Image:
    thumbnail = image.copy()
    thumbnail.thumbnail((size, size))
    return thumbnail


def verify_candidates(candidates: Sequence[Candidate], config: AnnotateConfig) -> list[Verification]:
    """Run the configured label verifier over all candidates, in candidate order."""
    if not candidates:
        return []
    keyword_labels = [candidate.photo.get("label", "") for candidate in candidates]
    verifier = dict(config.verifier)
    kind = verifier.get("kind", "cleanlab")
    if kind == "classifier":
        return verify_with_classifier(
            [candidate.crop for candidate in candidates],
            keyword_labels,
            checkpoint=verifier.get("checkpoint") or "",
            min_confidence=float(verifier.get("min_confidence", 0.5)),
            label_issues=config.label_issues,
            relabel_min_confidence=config.relabel_min_confidence,
        )
    features = np.stack([crop_features(candidate.crop) for candidate in candidates])
    groups = [candidate.photo.get("dup_group") or candidate.photo["sha256"] for candidate in candidates]
    return verify_with_confident_learning(
        features,
        keyword_labels,
        groups,
        folds=config.folds,
        seed=config.seed,
        label_issues=config.label_issues,
        relabel_min_confidence=config.relabel_min_confidence,
        classifier=config.classifier,
        filter_by=config.filter_by,
    )


def annotate(
    manifest_rows: Sequence[Mapping[str, str]],
    images_root: str | os.PathLike[str],
    config: AnnotateConfig,
    *,
    output_root: str = "data/annotated",
) -> Annotation:
    """Annotate the crawl in memory: filter photos, detect lesions and verify labels.

    ``output_root`` is only used to build the ``crop_path`` column
    (``<output_root>/<verified_label>/<crop_id>.jpg``).
    """
    photos = candidate_photos(manifest_rows)
    log.info("annotating %d distinct downloaded images", len(photos))
    detector = make_detector(config.detector)
    candidates, rows, thumbnails = propose_crops(photos, images_root, config, detector)
    log.info("%d candidate crops from %d photos, %d photos without a crop",
             len(candidates), len(photos) - len(rows), len(rows))
    verifications = verify_candidates(candidates, config)

    crops: dict[str, Image.Image] = {}
    for candidate, verification in zip(candidates, verifications):
        crop_id = f"{candidate.photo['sha256'][:16]}_{candidate.index}"
        row = _base_row(candidate.photo, *candidate.image_size)
        box = candidate.detection
        crop_box = candidate.crop_box
        crop_path = ""
        if verification.decision in KEPT_DECISIONS:
            crop_path = f"{output_root}/{verification.verified_label}/{crop_id}.jpg"
            crops[crop_path] = candidate.crop
        else:
            thumbnails.append((candidate.crop, f"{verification.decision}: {verification.reason}"))
        row.update(
            crop_id=crop_id,
            x0=box.x0,
            y0=box.y0,
            x1=box.x1,
            y1=box.y1,
            crop_x0=crop_box.x0,
            crop_y0=crop_box.y0,
            crop_x1=crop_box.x1,
            crop_y1=crop_box.y1,
            score=box.score,
            verified_label=verification.verified_label,
            decision=verification.decision,
            reason=verification.reason,
            crop_path=crop_path,
        )
        rows.append(row)

    rows.sort(key=lambda row: (row["url"], row["crop_id"]))
    counts = {decision: sum(row["decision"] == decision for row in rows)
              for decision in ("keep", "relabel", "drop", "reject")}
    log.info("annotation decisions: %s", counts)
    return Annotation(rows, crops, thumbnails)


def manifest_entries(rows: Sequence[Mapping[str, Any]]) -> list[can_manifest.ManifestEntry]:
    """Return CAN-manifest entries for the kept and relabelled rows, in table order."""
    return [
        can_manifest.entry_from_pixels(
            row["verified_label"],
            (row["crop_x0"], row["crop_y0"], row["crop_x1"], row["crop_y1"]),
            int(row["image_width"]),
            int(row["image_height"]),
            row["url"],
        )
        for row in rows
        if row["decision"] in KEPT_DECISIONS
    ]


def write_annotation(annotation: Annotation, output_dir: str | os.PathLike[str], header: Sequence[str]) -> None:
    """Write crops, ``annotations.csv`` and ``can_manifest.txt`` under ``output_dir``.

    Everything is first written to a sibling ``.partial`` folder, which then replaces
    ``output_dir``, so an interrupted run leaves the previous output whole.
    """
    with replaced_folder(output_dir) as staging:
        for crop_path, crop in annotation.crops.items():
            relative = Path(crop_path).relative_to(Path(crop_path).parents[1])
            destination = staging / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            crop.save(destination, format="JPEG", quality=95)
        write_csv(staging / "annotations.csv", annotation.rows, ANNOTATION_COLUMNS)
        can_manifest.write_manifest(staging / "can_manifest.txt", manifest_entries(annotation.rows), header)


def contact_sheet_images(
    annotation: Annotation, *, max_thumbnails: int = 64, columns: int = 8
) -> dict[str, Image.Image]:
    """Return the contact sheets by file name: ``kept_<class>.png`` per class, ``rejected.png``.

    Each sheet shows at most ``max_thumbnails`` images, in table order. Kept crops are captioned
    with their crop id (and the keyword label when relabelled), rejected and dropped candidates
    with their decision and reason.
    """
    from dermcan.contact_sheets import contact_sheet

    by_class: dict[str, list[tuple[Image.Image, str]]] = {}
    for row in annotation.rows:
        if row["decision"] not in KEPT_DECISIONS:
            continue
        caption = row["crop_id"]
        if row["decision"] == "relabel":
            caption += f" (keyword {row['keyword_label']})"
        by_class.setdefault(row["verified_label"], []).append((annotation.crops[row["crop_path"]], caption))

    sheets = {
        f"kept_{label}.png": contact_sheet(
            items[:max_thumbnails], f"kept crops: {label} ({len(items)})", columns=columns
        )
        for label, items in sorted(by_class.items())
    }
    rejected = annotation.rejected_thumbnails
    sheets["rejected.png"] = contact_sheet(
        rejected[:max_thumbnails],
        f"rejected images and dropped crops ({len(rejected)})",
        columns=columns,
        caption_lines=6,
    )
    return sheets
