"""Lesion bounding boxes for clinical photographs.

Two detectors share one interface, ``detect(image) -> list[Box]``, with boxes in pixels of the
given image (``x1``/``y1`` exclusive):

- :class:`ColourDetector` needs no trained weights. It converts the photo to CIELAB and
  estimates the local skin colour with a masked (normalised) Gaussian blur, so lighting
  gradients and skin-tone changes across the photo cancel out. Pixels whose colour difference
  (CIE76 Delta E) from that background is large form the lesion mask. Connected components
  of the mask are scored by contrast, compactness, size and edge sharpness, and non-maximum
  suppression removes overlapping boxes.
- :class:`TorchvisionDetector` runs a trained torchvision detection model saved with
  :func:`save_torchvision_detector`.

:func:`square_box` turns a detection into the square crop box with a margin.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image
from scipy import ndimage

log = logging.getLogger(__name__)

DETECTOR_KINDS = ("colour", "torchvision")
TORCHVISION_ARCHS = (
    "fasterrcnn_mobilenet_v3_large_320_fpn",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_resnet50_fpn",
)


@dataclasses.dataclass(frozen=True)
class Box:
    """An axis-aligned box in pixels, ``x1``/``y1`` exclusive, with a detector score in [0, 1]."""

    x0: int
    y0: int
    x1: int
    y1: int
    score: float = 1.0

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def area(self) -> int:
        return max(0, self.width) * max(0, self.height)


class Detector(Protocol):
    def detect(self, image: Image.Image) -> list[Box]: ...


def box_iou(a: Sequence[float] | Box, b: Sequence[float] | Box) -> float:
    """Return the intersection over union of two ``(x0, y0, x1, y1)`` boxes, 0 when they do not overlap."""
    ax0, ay0, ax1, ay1 = _corners(a)
    bx0, by0, bx1, by1 = _corners(b)
    inter_w = min(ax1, bx1) - max(ax0, bx0)
    inter_h = min(ay1, by1) - max(ay0, by0)
    if inter_w <= 0 or inter_h <= 0:
        return 0.0
    intersection = inter_w * inter_h
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - intersection
    return float(intersection / union) if union > 0 else 0.0


def _corners(box: Sequence[float] | Box) -> tuple[float, float, float, float]:
    if isinstance(box, Box):
        return box.x0, box.y0, box.x1, box.y1
    x0, y0, x1, y1 = box
    return float(x0), float(y0), float(x1), float(y1)


def non_max_suppression(boxes: Sequence[Box], iou_threshold: float) -> list[Box]:
    """Keep the highest-scoring boxes, dropping any box that overlaps a kept one above the threshold.

    A box that lies mostly inside a kept box (intersection over its own area above the
    threshold) is dropped too, so a lesion's dark core does not survive beside the lesion.
    """
    kept: list[Box] = []
    for box in sorted(boxes, key=lambda b: b.score, reverse=True):
        if all(
            box_iou(box, other) <= iou_threshold and _covered_share(box, other) <= 0.8
            for other in kept
        ):
            kept.append(box)
    return kept


def _covered_share(box: Box, other: Box) -> float:
    inter_w = min(box.x1, other.x1) - max(box.x0, other.x0)
    inter_h = min(box.y1, other.y1) - max(box.y0, other.y0)
    if inter_w <= 0 or inter_h <= 0 or box.area == 0:
        return 0.0
    return inter_w * inter_h / box.area


def square_box(box: Box, image_width: int, image_height: int, margin: float) -> Box:
    """Return a square box centred on ``box``, its side the longer side times ``1 + 2 * margin``.

    The square is shifted to stay inside the image and clipped only when it is larger than the
    image, so boxes near an edge stay square whenever the image allows it.
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    side = max(box.width, box.height) * (1.0 + 2.0 * margin)
    side = int(round(min(side, image_width, image_height)))
    side = max(side, 1)
    centre_x = (box.x0 + box.x1) / 2.0
    centre_y = (box.y0 + box.y1) / 2.0
    x0 = int(round(centre_x - side / 2.0))
    y0 = int(round(centre_y - side / 2.0))
    x0 = min(max(x0, 0), image_width - side)
    y0 = min(max(y0, 0), image_height - side)
    return Box(x0, y0, x0 + side, y0 + side, box.score)


# --- CIELAB -----------------------------------------------------------------------------------

# sRGB (IEC 61966-2-1) to CIE XYZ under D65, and the D65 reference white.
_RGB_TO_XYZ = np.array(
    [
        [0.4124564, 0.3575761, 0.1804375],
        [0.2126729, 0.7151522, 0.0721750],
        [0.0193339, 0.1191920, 0.9503041],
    ],
    dtype=np.float32,
)
_D65_WHITE = np.array([0.95047, 1.0, 1.08883], dtype=np.float32)


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """Convert an ``(..., 3)`` uint8 sRGB array to float32 CIELAB (L in 0..100, D65 white)."""
    values = rgb.astype(np.float32) / 255.0
    linear = np.where(values <= 0.04045, values / 12.92, ((values + 0.055) / 1.055) ** 2.4)
    xyz = linear @ _RGB_TO_XYZ.T / _D65_WHITE
    epsilon = 216.0 / 24389.0
    kappa = 24389.0 / 27.0
    f = np.where(xyz > epsilon, np.cbrt(xyz), (kappa * xyz + 16.0) / 116.0)
    lab = np.empty_like(f)
    lab[..., 0] = 116.0 * f[..., 1] - 16.0
    lab[..., 1] = 500.0 * (f[..., 0] - f[..., 1])
    lab[..., 2] = 200.0 * (f[..., 1] - f[..., 2])
    return lab


# --- colour/contrast detector -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ColourDetectorConfig:
    """Settings of :class:`ColourDetector`, with lengths as fractions of the working image's long side."""

    # NOTE: the defaults were tuned on photos from dermcan.synthetic_lesions (smooth skin, hair,
    # one or two lesions). They have not been checked on real clinical photographs.

    work_size: int = 256
    background_sigma: float = 0.12
    min_delta_e: float = 4.0
    mad_factor: float = 5.0
    full_contrast_delta_e: float = 12.0
    min_edge_sharpness: float = 0.12
    lightness_weight: float = 0.7
    opening_radius: int = 2
    closing_radius: float = 0.01
    min_fill: float = 0.4
    min_area_fraction: float = 0.0008
    max_area_fraction: float = 0.5
    min_score: float = 0.5
    max_boxes: int = 5
    nms_iou: float = 0.3

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "ColourDetectorConfig":
        fields = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(params) - fields - {"kind", "checkpoint", "arch", "score_threshold"})
        if unknown:
            raise ValueError(
                f"unknown annotate.detector keys {unknown}; valid keys are {sorted(fields)}"
            )
        return cls(**{key: value for key, value in params.items() if key in fields})


class ColourDetector:
    """Detect lesions as regions whose CIELAB colour differs from the surrounding skin."""

    def __init__(self, config: ColourDetectorConfig | None = None) -> None:
        self.config = config or ColourDetectorConfig()

    def detect(self, image: Image.Image) -> list[Box]:
        config = self.config
        width, height = image.size
        scale = min(1.0, config.work_size / max(width, height))
        work = image.convert("RGB")
        if scale < 1.0:
            work = work.resize(
                (max(1, round(width * scale)), max(1, round(height * scale))), Image.BILINEAR
            )
        lab = rgb_to_lab(np.asarray(work))
        contrast = self.contrast_map(lab)
        mask = self._lesion_mask(contrast)
        boxes = self._score_components(mask, contrast)
        boxes = non_max_suppression(boxes, config.nms_iou)[: config.max_boxes]
        return [_rescale(box, 1.0 / scale, width, height) for box in boxes]

    def contrast_map(self, lab: np.ndarray) -> np.ndarray:
        """Return per-pixel Delta E from the local skin colour of an ``(H, W, 3)`` CIELAB array.

        The skin colour is a Gaussian blur that ignores pixels already marked as lesion: a first
        pass blurs everything, a second pass masks the pixels the first pass marked.
        """
        config = self.config
        sigma = config.background_sigma * max(lab.shape[:2])
        weights = np.ones(lab.shape[:2], dtype=np.float32)
        channel_weights = np.array([config.lightness_weight, 1.0, 1.0], dtype=np.float32)
        contrast = np.zeros(lab.shape[:2], dtype=np.float32)
        for _ in range(2):
            background = _masked_blur(lab, weights, sigma)
            difference = (lab - background) * channel_weights
            contrast = np.sqrt((difference**2).sum(axis=2))
            weights = (~self._threshold(contrast)).astype(np.float32)
            if weights.sum() < 0.2 * weights.size:
                # Almost everything looks like lesion: keep the unmasked estimate.
                break
        return contrast

    def _threshold(self, contrast: np.ndarray) -> np.ndarray:
        median = float(np.median(contrast))
        mad = float(np.median(np.abs(contrast - median))) * 1.4826
        level = max(self.config.min_delta_e, median + self.config.mad_factor * mad)
        return contrast > level

    def _lesion_mask(self, contrast: np.ndarray) -> np.ndarray:
        mask = self._threshold(contrast)
        radius = max(1, round(self.config.closing_radius * max(contrast.shape)))
        structure = _disk(radius)
        mask = ndimage.binary_opening(mask, structure=_disk(self.config.opening_radius))
        mask = ndimage.binary_closing(mask, structure=structure, border_value=0)
        return ndimage.binary_fill_holes(mask)

    def _score_components(self, mask: np.ndarray, contrast: np.ndarray) -> list[Box]:
        """Score each connected component of ``mask`` and return the boxes of those that pass.

        Edge sharpness is the mean contrast gradient on a 2-pixel band around the component
        divided by its mean contrast. Lesions have a defined border, whereas uneven skin
        (blotches, shading) fades out gradually and scores below ``min_edge_sharpness``.
        Components with a mean contrast of ``full_contrast_delta_e`` or more skip this test.
        """
        config = self.config
        labels, count = ndimage.label(mask)
        if count == 0:
            return []
        total = mask.size
        gradient = np.hypot(ndimage.sobel(contrast, axis=0), ndimage.sobel(contrast, axis=1)) / 8.0
        boxes: list[Box] = []
        for index, region in enumerate(ndimage.find_objects(labels), start=1):
            if region is None:
                continue
            rows, cols = region
            box_h = rows.stop - rows.start
            box_w = cols.stop - cols.start
            area = int((labels[region] == index).sum())
            area_fraction = area / total
            if area_fraction < config.min_area_fraction or area_fraction > config.max_area_fraction:
                continue
            # Share of the bounding box the component fills: hairs and their crossings fill
            # little of it, lesions most of it.
            fill = area / (box_h * box_w)
            if fill < config.min_fill:
                continue

            window = (
                slice(max(0, rows.start - 3), rows.stop + 3),
                slice(max(0, cols.start - 3), cols.stop + 3),
            )
            component = labels[window] == index
            band = ndimage.binary_dilation(component, iterations=2) ^ ndimage.binary_erosion(
                component, iterations=2
            )
            mean_contrast = float(contrast[window][component].mean())
            sharpness = float(gradient[window][band].mean()) / max(mean_contrast, 1e-6)
            if mean_contrast >= config.full_contrast_delta_e:
                # Uneven skin never differs this much from its surroundings.
                sharpness = max(sharpness, 2.0 * config.min_edge_sharpness)
            if sharpness < config.min_edge_sharpness:
                continue

            aspect = min(box_h, box_w) / max(box_h, box_w)
            contrast_score = min(1.0, mean_contrast / config.full_contrast_delta_e)
            size_score = min(1.0, area_fraction / (10.0 * config.min_area_fraction))
            sharpness_score = min(1.0, sharpness / (2.0 * config.min_edge_sharpness))
            score = contrast_score * (0.5 + 0.5 * fill) * (0.5 + 0.5 * aspect) * size_score
            score = float(score * sharpness_score) ** 0.25
            if score < config.min_score:
                continue
            boxes.append(Box(cols.start, rows.start, cols.stop, rows.stop, round(score, 4)))
        return boxes


def _masked_blur(lab: np.ndarray, weights: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of ``lab`` where each pixel counts with its weight (normalised convolution)."""
    # Blurring a 4x smaller image and enlarging it gives nearly the same background, faster.
    factor = 4 if min(lab.shape[:2]) >= 64 else 1
    small = lab[::factor, ::factor]
    small_weights = weights[::factor, ::factor]
    small_sigma = max(sigma / factor, 0.5)
    denominator = ndimage.gaussian_filter(small_weights, small_sigma, mode="reflect") + 1e-6
    blurred = np.stack(
        [
            ndimage.gaussian_filter(small[..., c] * small_weights, small_sigma, mode="reflect")
            / denominator
            for c in range(3)
        ],
        axis=2,
    )
    if factor == 1:
        return blurred
    zoom = (lab.shape[0] / small.shape[0], lab.shape[1] / small.shape[1], 1)
    enlarged = ndimage.zoom(blurred, zoom, order=1, mode="nearest")
    return enlarged[: lab.shape[0], : lab.shape[1]]


def _disk(radius: int) -> np.ndarray:
    grid = np.arange(-radius, radius + 1)
    return (grid[:, None] ** 2 + grid[None, :] ** 2) <= radius**2


def _rescale(box: Box, factor: float, width: int, height: int) -> Box:
    return Box(
        max(0, int(math.floor(box.x0 * factor))),
        max(0, int(math.floor(box.y0 * factor))),
        min(width, int(math.ceil(box.x1 * factor))),
        min(height, int(math.ceil(box.y1 * factor))),
        box.score,
    )


# --- torchvision detector ---------------------------------------------------------------------


def build_torchvision_detector(arch: str, num_classes: int = 2) -> Any:
    """Build an untrained torchvision detection model (class 0 is background, 1 is lesion)."""
    from torchvision.models import detection

    if arch not in TORCHVISION_ARCHS:
        raise ValueError(f"unknown detector arch {arch!r}; valid archs are {TORCHVISION_ARCHS}")
    builder = getattr(detection, arch)
    return builder(weights=None, weights_backbone=None, num_classes=num_classes)


def save_torchvision_detector(model: Any, arch: str, path: str | Path) -> None:
    """Save ``model`` as a dict with ``arch``, ``num_classes`` and ``state_dict`` for loading."""
    from dermcan import atomic_io

    num_classes = int(model.roi_heads.box_predictor.cls_score.out_features)
    atomic_io.write_torch(path, {"arch": arch, "num_classes": num_classes, "state_dict": model.state_dict()})


class TorchvisionDetector:
    """Run a torchvision detection checkpoint written by :func:`save_torchvision_detector`."""

    def __init__(self, checkpoint: str | Path, arch: str, score_threshold: float = 0.5) -> None:
        import torch

        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(
                f"detector checkpoint {path} not found: train one, or set "
                "annotate.detector.kind to 'colour' in params.yaml"
            )
        saved = torch.load(path, map_location="cpu", weights_only=True)
        saved_arch = saved.get("arch", arch)
        if saved_arch != arch:
            raise ValueError(
                f"detector checkpoint {path} was saved for {saved_arch!r}, but "
                f"annotate.detector.arch is {arch!r}"
            )
        self.model = build_torchvision_detector(arch, int(saved.get("num_classes", 2)))
        self.model.load_state_dict(saved["state_dict"])
        self.model.eval()
        self.score_threshold = score_threshold

    def detect(self, image: Image.Image) -> list[Box]:
        import torch
        from torchvision.transforms.functional import pil_to_tensor

        width, height = image.size
        tensor = pil_to_tensor(image.convert("RGB")).float() / 255.0
        with torch.inference_mode():
            output = self.model([tensor])[0]
        boxes = []
        for (x0, y0, x1, y1), score in zip(output["boxes"].tolist(), output["scores"].tolist()):
            if score < self.score_threshold:
                continue
            box = Box(
                max(0, int(math.floor(x0))),
                max(0, int(math.floor(y0))),
                min(width, int(math.ceil(x1))),
                min(height, int(math.ceil(y1))),
                round(float(score), 4),
            )
            if box.area > 0:
                boxes.append(box)
        return boxes


def make_detector(params: Mapping[str, Any]) -> Detector:
    """Build the detector that ``annotate.detector`` params name (``kind``: colour or torchvision)."""
    kind = params.get("kind", "colour")
    if kind == "colour":
        return ColourDetector(ColourDetectorConfig.from_params(params))
    if kind == "torchvision":
        checkpoint = params.get("checkpoint")
        if not checkpoint:
            raise ValueError("annotate.detector.kind is 'torchvision' but no checkpoint is set")
        return TorchvisionDetector(
            checkpoint,
            params.get("arch", TORCHVISION_ARCHS[0]),
            float(params.get("score_threshold", 0.5)),
        )
    raise ValueError(f"unknown annotate.detector.kind {kind!r}; valid kinds are {DETECTOR_KINDS}")
