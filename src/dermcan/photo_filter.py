"""Decide whether an image is a clinical photograph of skin, with a reason when it is not.

Web pages about skin diseases also carry logos, banners, diagrams, scanned text and
screenshots. These differ from photographs of skin in simple image statistics, measured on a
copy whose long side is ``work_size`` pixels:

- ``dominant_colour_share``: share of pixels covered by the four most frequent colours (RGB
  quantised to 5 bits per channel). Drawn graphics use few colours, and sensor noise and
  shading spread a photograph's pixels over many.
- ``flat_share``: share of pixels whose 3x3 neighbourhood has the same colour as them
  (max absolute difference to the neighbours below ``flat_tolerance`` levels). Drawn graphics
  have large flat areas, and photographs almost none.
- ``edge_share``: share of pixels with a luminance gradient magnitude above 60 levels per pixel,
  which text strokes and line drawings produce in great numbers.
- ``skin_share``: share of pixels inside the skin-colour cluster in YCbCr
  (Cb 77..127, Cr 133..173, after Chai and Ngan 1999, widened slightly for darker skin).

Each statistic has a limit in params. An image outside any limit is rejected, and the reason
names every failed check.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage


@dataclasses.dataclass(frozen=True)
class PhotoFilterConfig:
    """Limits for :func:`assess_photo`, with shares as fractions of the image's pixels."""

    # NOTE: the limits separate dermcan.synthetic_lesions photos from its off-topic images with
    # a wide margin. Real photos with much clothing or background may fall below min_skin_share.

    work_size: int = 128
    max_dominant_colour_share: float = 0.9
    max_flat_share: float = 0.45
    flat_tolerance: int = 2
    max_edge_share: float = 0.06
    min_skin_share: float = 0.5

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "PhotoFilterConfig":
        fields = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(params) - fields)
        if unknown:
            raise ValueError(
                f"unknown annotate.photo_filter keys {unknown}; valid keys are {sorted(fields)}"
            )
        return cls(**params)


@dataclasses.dataclass(frozen=True)
class PhotoAssessment:
    """The filter's decision, the reason for a rejection (empty when accepted) and the statistics."""

    is_photo: bool
    reason: str
    statistics: dict[str, float]


def photo_statistics(image: Image.Image, work_size: int = 128, flat_tolerance: int = 2) -> dict[str, float]:
    """Measure the statistics the module docstring describes on a ``work_size`` copy of ``image``."""
    small = image.convert("RGB")
    scale = work_size / max(small.size)
    if scale < 1.0:
        small = small.resize(
            (max(1, round(small.width * scale)), max(1, round(small.height * scale))),
            Image.BILINEAR,
        )
    rgb = np.asarray(small).astype(np.int16)
    pixels = rgb.shape[0] * rgb.shape[1]

    quantised = (rgb >> 3).reshape(-1, 3).astype(np.int32)
    codes = (quantised[:, 0] << 10) | (quantised[:, 1] << 5) | quantised[:, 2]
    _, counts = np.unique(codes, return_counts=True)
    dominant_colour_share = float(np.sort(counts)[::-1][:4].sum()) / pixels

    neighbourhood_max = ndimage.maximum_filter(rgb, size=(3, 3, 1), mode="nearest")
    neighbourhood_min = ndimage.minimum_filter(rgb, size=(3, 3, 1), mode="nearest")
    spread = (neighbourhood_max - neighbourhood_min).max(axis=2)
    flat_share = float((spread <= flat_tolerance).mean())

    luminance = rgb @ np.array([0.299, 0.587, 0.114])
    gradient = np.hypot(ndimage.sobel(luminance, axis=0), ndimage.sobel(luminance, axis=1)) / 4.0
    edge_share = float((gradient > 60.0).mean())

    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    cb = 128.0 - 0.168736 * red - 0.331264 * green + 0.5 * blue
    cr = 128.0 + 0.5 * red - 0.418688 * green - 0.081312 * blue
    skin = (cb >= 77) & (cb <= 127) & (cr >= 133) & (cr <= 173)
    skin_share = float(skin.mean())

    return {
        "dominant_colour_share": round(dominant_colour_share, 4),
        "flat_share": round(flat_share, 4),
        "edge_share": round(edge_share, 4),
        "skin_share": round(skin_share, 4),
    }


def assess_photo(image: Image.Image, config: PhotoFilterConfig | None = None) -> PhotoAssessment:
    """Accept ``image`` as a clinical photograph or reject it, naming each failed check."""
    config = config or PhotoFilterConfig()
    stats = photo_statistics(image, config.work_size, config.flat_tolerance)
    reasons = []
    if stats["dominant_colour_share"] > config.max_dominant_colour_share:
        reasons.append(
            f"few distinct colours (4 colours cover {stats['dominant_colour_share']:.2f} "
            f"> {config.max_dominant_colour_share} of the pixels)"
        )
    if stats["flat_share"] > config.max_flat_share:
        reasons.append(f"large flat regions ({stats['flat_share']:.2f} > {config.max_flat_share})")
    if stats["edge_share"] > config.max_edge_share:
        reasons.append(
            f"high edge density of text or line strokes ({stats['edge_share']:.3f} > {config.max_edge_share})"
        )
    if stats["skin_share"] < config.min_skin_share:
        reasons.append(f"low skin-colour share ({stats['skin_share']:.2f} < {config.min_skin_share})")
    return PhotoAssessment(not reasons, "; ".join(reasons), stats)
