"""Synthetic lesion photographs: sizes, boxes on the lesion, determinism, off-topic images, speed."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from dermcan.classes import CLASSES
from dermcan.synthetic_lesions import (
    LIGHTINGS,
    OFF_TOPIC_KINDS,
    render_clinical_photo,
    render_close_up,
    render_off_topic,
    skin_colour,
)


def _flat_colour_share(image: Image.Image, n_colours: int = 8) -> float:
    """Share of pixels covered by the ``n_colours`` most frequent exact colours."""
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    _, counts = np.unique(pixels, axis=0, return_counts=True)
    return float(np.sort(counts)[::-1][:n_colours].sum() / len(pixels))


def _contrast_ratio(image: Image.Image, box: tuple[int, int, int, int]) -> float:
    """Mean colour distance to the surrounding skin inside ``box``, divided by that of the surroundings.

    The surroundings are the box grown by half its size on each side, minus the box.
    """
    pixels = np.asarray(image, dtype=np.float64)
    height, width = pixels.shape[:2]
    x0, y0, x1, y1 = box
    box_w, box_h = x1 - x0, y1 - y0
    ring = np.zeros((height, width), dtype=bool)
    ring[
        max(0, y0 - box_h // 2) : min(height, y1 + box_h // 2),
        max(0, x0 - box_w // 2) : min(width, x1 + box_w // 2),
    ] = True
    ring[y0:y1, x0:x1] = False
    skin = pixels[ring].mean(axis=0)
    inside = np.linalg.norm(pixels[y0:y1, x0:x1] - skin, axis=2).mean()
    around = np.linalg.norm(pixels[ring] - skin, axis=1).mean()
    return float(inside / around)


@pytest.mark.parametrize("label", CLASSES)
def test_clinical_photo_size_and_boxes(label: str) -> None:
    rng = np.random.default_rng(3)
    image, boxes = render_clinical_photo(rng, label, width=200, height=150)
    assert image.mode == "RGB"
    assert image.size == (200, 150)
    assert 1 <= len(boxes) <= 2
    for x0, y0, x1, y1 in boxes:
        assert 0 <= x0 < x1 <= 200
        assert 0 <= y0 < y1 <= 150


@pytest.mark.parametrize("label", CLASSES)
def test_clinical_photo_box_lies_on_lesion(label: str) -> None:
    ratios = []
    for seed in range(5):
        image, boxes = render_clinical_photo(
            np.random.default_rng(seed), label, width=192, height=144, n_lesions=1
        )
        ratios.append(_contrast_ratio(image, boxes[0]))
    assert sum(ratio > 1.3 for ratio in ratios) >= 4, ratios
    assert float(np.median(ratios)) > 1.8, ratios


def test_clinical_photo_lesion_width_share() -> None:
    rng = np.random.default_rng(11)
    shares = []
    for label in CLASSES:
        for _ in range(6):
            _, boxes = render_clinical_photo(rng, label, width=384, height=288, n_lesions=1)
            shares.append((boxes[0][2] - boxes[0][0]) / 384)
    assert min(shares) >= 0.025
    assert max(shares) <= 0.35
    assert float(np.median(shares)) < 0.2


def test_clinical_photo_two_lesions_do_not_overlap() -> None:
    _, boxes = render_clinical_photo(
        np.random.default_rng(5), "melanocyticnevus", width=384, height=288, n_lesions=2
    )
    assert len(boxes) == 2
    (a0, b0, a1, b1), (c0, d0, c1, d1) = boxes
    assert a1 <= c0 or c1 <= a0 or b1 <= d0 or d1 <= b0


def test_same_seed_same_pixels() -> None:
    first, first_boxes = render_clinical_photo(
        np.random.default_rng(42), "malignantmelanoma", width=120, height=90
    )
    second, second_boxes = render_clinical_photo(
        np.random.default_rng(42), "malignantmelanoma", width=120, height=90
    )
    assert first.tobytes() == second.tobytes()
    assert first_boxes == second_boxes


def test_different_seed_different_pixels() -> None:
    first, _ = render_clinical_photo(np.random.default_rng(1), "hemangioma", width=120, height=90)
    second, _ = render_clinical_photo(np.random.default_rng(2), "hemangioma", width=120, height=90)
    assert first.tobytes() != second.tobytes()


def test_skin_tone_runs_pale_to_dark() -> None:
    brightness = [float(skin_colour(tone).mean()) for tone in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert brightness == sorted(brightness, reverse=True)
    pale, _ = render_clinical_photo(
        np.random.default_rng(0), "dermatofibroma", width=120, height=90, skin_tone=0.0
    )
    dark, _ = render_clinical_photo(
        np.random.default_rng(0), "dermatofibroma", width=120, height=90, skin_tone=1.0
    )
    assert np.asarray(pale).mean() > np.asarray(dark).mean() + 60


@pytest.mark.parametrize("lighting", LIGHTINGS)
def test_close_up_lesion_fills_frame(lighting: str) -> None:
    image = render_close_up(
        np.random.default_rng(8), "malignantmelanoma", size=96, skin_tone=0.2, lighting=lighting
    )
    pixels = np.asarray(image, dtype=np.float64)
    assert image.size == (96, 96)
    corners = np.concatenate(
        [pixels[:10, :10], pixels[:10, -10:], pixels[-10:, :10], pixels[-10:, -10:]]
    ).reshape(-1, 3)
    centre = pixels[38:58, 38:58].reshape(-1, 3)
    assert np.linalg.norm(centre.mean(axis=0) - corners.mean(axis=0)) > 30


def test_close_up_lighting_changes_colour() -> None:
    warm = np.asarray(
        render_close_up(
            np.random.default_rng(4), "hemangioma", size=64, skin_tone=0.3, lighting="warm"
        ),
        dtype=float,
    )
    cool = np.asarray(
        render_close_up(
            np.random.default_rng(4), "hemangioma", size=64, skin_tone=0.3, lighting="cool"
        ),
        dtype=float,
    )
    assert warm[..., 2].mean() < cool[..., 2].mean()
    assert warm[..., 0].mean() > cool[..., 0].mean()


@pytest.mark.parametrize("kind", OFF_TOPIC_KINDS)
def test_off_topic_is_flat_not_skin(kind: str) -> None:
    image = render_off_topic(np.random.default_rng(6), kind, width=240, height=180)
    assert image.size == (240, 180)
    assert _flat_colour_share(image) > 0.5


def test_clinical_photo_has_no_flat_colours() -> None:
    image, _ = render_clinical_photo(
        np.random.default_rng(6), "seborrheickeratosis", width=240, height=180
    )
    assert _flat_colour_share(image) < 0.05


def test_invalid_arguments_raise() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown class"):
        render_clinical_photo(rng, "melanoma", width=100, height=100)
    with pytest.raises(ValueError, match="lighting"):
        render_close_up(rng, "hemangioma", size=64, lighting="sunset")
    with pytest.raises(ValueError, match="skin_tone"):
        render_close_up(rng, "hemangioma", size=64, skin_tone=1.5)
    with pytest.raises(ValueError, match="off-topic kind"):
        render_off_topic(rng, "poster", width=100, height=100)


def test_clinical_photo_render_time() -> None:
    rng = np.random.default_rng(0)
    render_clinical_photo(rng, "malignantmelanoma", width=384, height=288)  # warm-up
    started = time.process_time()
    for label in CLASSES:
        render_clinical_photo(rng, label, width=384, height=288)
    per_photo_ms = (time.process_time() - started) / len(CLASSES) * 1000
    assert per_photo_ms < 50, f"{per_photo_ms:.1f} ms CPU time per 384x288 photo"
