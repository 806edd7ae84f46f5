"""Tests for the clinical-photo filter on generated photos and off-topic images."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from dermcan.classes import CLASSES
from dermcan.photo_filter import PhotoFilterConfig, assess_photo, photo_statistics
from dermcan.synthetic_lesions import OFF_TOPIC_KINDS, render_clinical_photo, render_close_up, render_off_topic


def _as_jpeg(image: Image.Image) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def test_clinical_photos_are_accepted() -> None:
    rng = np.random.default_rng(0)
    rejected = []
    for index, label in enumerate(CLASSES * 2):
        tone = index / (2 * len(CLASSES) - 1)
        image, _ = render_clinical_photo(rng, label, width=256, height=192, skin_tone=tone)
        assessment = assess_photo(_as_jpeg(image))
        if not assessment.is_photo:
            rejected.append((label, round(tone, 2), assessment.reason))
    assert rejected == []


def test_close_ups_are_accepted() -> None:
    rng = np.random.default_rng(1)
    for label in CLASSES:
        assessment = assess_photo(_as_jpeg(render_close_up(rng, label, size=160)))
        assert assessment.is_photo, (label, assessment.reason)


@pytest.mark.parametrize("kind", OFF_TOPIC_KINDS)
def test_off_topic_images_are_rejected(kind: str) -> None:
    rng = np.random.default_rng(2)
    for _ in range(4):
        width, height = int(rng.integers(160, 400)), int(rng.integers(100, 300))
        assessment = assess_photo(_as_jpeg(render_off_topic(rng, kind, width=width, height=height)))
        assert not assessment.is_photo
        assert assessment.reason != ""


def test_rejection_reason_names_each_failed_check() -> None:
    flat_logo = Image.new("RGB", (200, 100), (0, 86, 179))
    assessment = assess_photo(flat_logo)
    assert "few distinct colours" in assessment.reason
    assert "large flat regions" in assessment.reason
    assert "low skin-colour share" in assessment.reason


def test_text_strokes_raise_edge_share() -> None:
    stripes = np.full((128, 128, 3), 255, dtype=np.uint8)
    stripes[:, ::4] = 0
    statistics = photo_statistics(Image.fromarray(stripes))
    assert statistics["edge_share"] > PhotoFilterConfig().max_edge_share


def test_unknown_filter_key_is_rejected() -> None:
    with pytest.raises(ValueError, match="min_colour_share"):
        PhotoFilterConfig.from_params({"min_colour_share": 0.1})
