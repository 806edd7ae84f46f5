"""A small generated crawl for the annotation tests: stored images, a crawl manifest and the truth.

The layout matches the crawl stage's outputs (``images/<sha[:2]>/<sha>.jpg`` and
``manifest.csv`` rows), and the truth matches ``data/demo/truth.json`` (keyed by URL path).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dermcan.atomic_io import write_csv
from dermcan.classes import CLASSES
from dermcan.synthetic_lesions import OFF_TOPIC_KINDS, render_clinical_photo, render_off_topic

MANIFEST_COLUMNS = (
    "url", "page_url", "caption", "keyword", "language", "label", "status", "reason",
    "sha256", "phash", "dup_group", "width", "height", "bytes",
)
HOST = "http://127.0.0.1:8000"


def _store(images_root: Path, image: Image.Image) -> tuple[str, int]:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    data = buffer.getvalue()
    sha256 = hashlib.sha256(data).hexdigest()
    path = images_root / sha256[:2] / f"{sha256}.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return sha256, len(data)


def make_crawl(
    root: Path,
    *,
    per_class: int = 6,
    classes: Sequence[str] = CLASSES,
    wrong_captions: int = 0,
    off_topic: int = 0,
    width: int = 256,
    height: int = 192,
    seed: int = 0,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Write ``root/images`` and ``root/manifest.csv``; return the manifest rows and the truth.

    Every photo has one lesion. ``wrong_captions`` photos (spread over the classes) carry a
    keyword label that differs from the true label. One exact duplicate row (status
    ``duplicate``) of the first photo is added on another page.
    """
    rng = np.random.default_rng(seed)
    images_root = root / "images"
    rows: list[dict[str, Any]] = []
    truth: dict[str, dict[str, Any]] = {}
    photo_count = per_class * len(classes)
    wrong = set(rng.choice(photo_count, size=wrong_captions, replace=False).tolist())
    for index in range(photo_count):
        true_label = classes[index % len(classes)]
        image, boxes = render_clinical_photo(rng, true_label, width=width, height=height, n_lesions=1)
        keyword_label = true_label
        if index in wrong:
            others = [label for label in classes if label != true_label]
            keyword_label = others[int(rng.integers(len(others)))]
        sha256, size = _store(images_root, image)
        path = f"/img/photos/{index:04d}.jpg"
        rows.append(_row(path, f"/atlas/{keyword_label}/page-{index // 20}.html", keyword_label,
                         sha256, width, height, size))
        truth[path] = {"kind": "lesion", "true_label": true_label, "caption_label": keyword_label,
                       "boxes": [list(box) for box in boxes], "duplicate_of": None, "duplicate_kind": None}
    for index in range(off_topic):
        kind = OFF_TOPIC_KINDS[index % len(OFF_TOPIC_KINDS)]
        image = render_off_topic(rng, kind, width=width, height=height)
        keyword_label = classes[index % len(classes)]
        sha256, size = _store(images_root, image)
        path = f"/img/media/{index:04d}.jpg"
        rows.append(_row(path, f"/blog/post-{index:02d}.html", keyword_label, sha256, width, height, size))
        truth[path] = {"kind": "off_topic", "true_label": None, "caption_label": keyword_label,
                       "boxes": [], "duplicate_of": None, "duplicate_kind": None}
    first = rows[0]
    duplicate = dict(first, url=f"{HOST}/img/copies/0000.jpg", page_url=f"{HOST}/blog/copy.html",
                     status="duplicate", reason=f"same bytes as {first['url']}")
    rows.append(duplicate)
    truth["/img/copies/0000.jpg"] = dict(truth["/img/photos/0000.jpg"], duplicate_of="/img/photos/0000.jpg",
                                         duplicate_kind="exact")
    rows.sort(key=lambda row: row["url"])
    write_csv(root / "manifest.csv", rows, MANIFEST_COLUMNS)
    return rows, truth


def _row(path: str, page: str, label: str, sha256: str, width: int, height: int, size: int) -> dict[str, Any]:
    return {
        "url": HOST + path, "page_url": HOST + page, "caption": f"{label} photo", "keyword": label,
        "language": "en", "label": label, "status": "downloaded", "reason": "", "sha256": sha256,
        "phash": "", "dup_group": sha256, "width": width, "height": height, "bytes": size,
    }
