"""Measure the annotation against the demo web's truth file.

Only the measure_annotation stage uses this module. The annotate stage does not read the truth,
which tests/test_annotation.py checks.

The truth file maps each image URL path (``/img/...``) to its ``kind``, ``true_label``,
``caption_label`` and lesion ``boxes`` (pixels of the served image, ``x1``/``y1`` exclusive).

Definitions, with each distinct sha256 of the crawl counted once:

- A kept crop (decision ``keep`` or ``relabel``) is correct when its verified label equals the
  image's true label and its detected lesion box (``x0 y0 x1 y1``, not the padded crop box)
  overlaps one of the true boxes with IoU at or above the threshold. Precision is the correct share of kept crops.
- Recall is over the true lesions of downloaded lesion photos: a true lesion is found when a
  correct kept crop of the same image overlaps it with IoU at or above the threshold.
- Noise removal: an off-topic image is removed when none of its crops is kept. A lesion image
  whose keyword label differs from its true label (a wrong caption) is removed when no kept
  crop of it carries the wrong keyword label (dropped or relabelled).
"""

from __future__ import annotations

import json
import os
import urllib.parse
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from dermcan.lesion_detection import box_iou

KEPT_DECISIONS = ("keep", "relabel")


def load_truth(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Read the truth file: a JSON object keyed by URL path."""
    with open(path, encoding="utf-8") as handle:
        truth = json.load(handle)
    if not isinstance(truth, dict):
        raise ValueError(f"{path}: expected a JSON object keyed by URL path")
    return truth


def truth_for_url(truth: Mapping[str, Mapping[str, Any]], url: str) -> Mapping[str, Any] | None:
    """Return the truth entry for ``url`` (looked up by its path), or None when it has none."""
    return truth.get(urllib.parse.urlsplit(url).path)


def _ratio(numerator: int, denominator: int) -> float | None:
    return round(numerator / denominator, 4) if denominator else None


def measure_annotation(
    annotation_rows: Sequence[Mapping[str, str]],
    manifest_rows: Sequence[Mapping[str, str]],
    truth: Mapping[str, Mapping[str, Any]],
    *,
    iou_threshold: float = 0.5,
) -> dict[str, Any]:
    """Return precision, recall, mean box IoU and noise-removal shares as a JSON-ready dict."""
    images: dict[str, Mapping[str, Any]] = {}
    keyword_labels: dict[str, str] = {}
    missing_truth = 0
    for row in manifest_rows:
        if row.get("status") != "downloaded" or row["sha256"] in images:
            continue
        entry = truth_for_url(truth, row["url"])
        if entry is None:
            missing_truth += 1
            continue
        images[row["sha256"]] = entry
        keyword_labels[row["sha256"]] = row.get("label", "")

    kept_by_image: dict[str, list[Mapping[str, str]]] = defaultdict(list)
    decisions: dict[str, int] = defaultdict(int)
    for row in annotation_rows:
        decisions[row["decision"]] += 1
        if row["decision"] in KEPT_DECISIONS and row["sha256"] in images:
            kept_by_image[row["sha256"]].append(row)

    correct = 0
    kept = 0
    ious: list[float] = []
    found_lesions = 0
    true_lesions = 0
    for sha256, entry in images.items():
        true_boxes = [tuple(box) for box in entry.get("boxes") or []]
        true_label = entry.get("true_label")
        crops = kept_by_image.get(sha256, [])
        found = [False] * len(true_boxes)
        for crop in crops:
            kept += 1
            box = (float(crop["x0"]), float(crop["y0"]), float(crop["x1"]), float(crop["y1"]))
            overlaps = [box_iou(box, true_box) for true_box in true_boxes]
            best = max(overlaps, default=0.0)
            if true_label:
                ious.append(best)
            if true_label and crop["verified_label"] == true_label and best >= iou_threshold:
                correct += 1
                for index, overlap in enumerate(overlaps):
                    if overlap >= iou_threshold:
                        found[index] = True
        if true_label and true_boxes:
            true_lesions += len(true_boxes)
            found_lesions += sum(found)

    off_topic = [sha for sha, entry in images.items() if not entry.get("true_label")]
    off_topic_removed = sum(not kept_by_image.get(sha) for sha in off_topic)
    wrong_caption = [
        sha for sha, entry in images.items()
        if entry.get("true_label") and keyword_labels[sha] != entry["true_label"]
    ]
    wrong_caption_removed = sum(
        all(crop["verified_label"] != keyword_labels[sha] for crop in kept_by_image.get(sha, []))
        for sha in wrong_caption
    )
    wrong_caption_corrected = sum(
        any(crop["verified_label"] == images[sha]["true_label"] for crop in kept_by_image.get(sha, []))
        for sha in wrong_caption
    )
    clean_lesion = [
        sha for sha, entry in images.items()
        if entry.get("true_label") and keyword_labels[sha] == entry["true_label"]
    ]
    clean_lost = sum(
        not any(crop["verified_label"] == keyword_labels[sha] for crop in kept_by_image.get(sha, []))
        for sha in clean_lesion
    )

    return {
        "iou_threshold": iou_threshold,
        "distinct_images": len(images),
        "images_without_truth": missing_truth,
        "decisions": dict(sorted(decisions.items())),
        "kept_crops": kept,
        "correct_kept_crops": correct,
        "precision": _ratio(correct, kept),
        "true_lesions": true_lesions,
        "found_lesions": found_lesions,
        "recall": _ratio(found_lesions, true_lesions),
        "mean_box_iou": round(sum(ious) / len(ious), 4) if ious else None,
        "off_topic_images": len(off_topic),
        "off_topic_removed_share": _ratio(off_topic_removed, len(off_topic)),
        "wrong_caption_images": len(wrong_caption),
        "wrong_caption_removed_share": _ratio(wrong_caption_removed, len(wrong_caption)),
        "wrong_caption_relabelled_correctly_share": _ratio(wrong_caption_corrected, len(wrong_caption)),
        "correct_caption_images": len(clean_lesion),
        "correct_caption_lost_share": _ratio(clean_lost, len(clean_lesion)),
    }
