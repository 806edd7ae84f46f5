"""Tiny generated image sets for the classifier tests: one coloured shape per class."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLOURS = [(200, 40, 40), (40, 160, 40), (40, 40, 200), (200, 200, 40), (160, 40, 160)]


def draw_image(class_index: int, rng: np.random.Generator, size: int = 40) -> Image.Image:
    """Draw a skin-toned square with a class-coloured ellipse (odd classes) or rectangle (even)."""
    background = tuple(int(v) for v in rng.integers(170, 230, size=3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    x0, y0 = (int(v) for v in rng.integers(2, size // 3, size=2))
    x1, y1 = (int(v) for v in rng.integers(2 * size // 3, size - 2, size=2))
    colour = COLOURS[class_index % len(COLOURS)]
    if class_index % 2:
        draw.ellipse((x0, y0, x1, y1), fill=colour)
    else:
        draw.rectangle((x0, y0, x1, y1), fill=colour)
    return image


def write_image_folder(root: Path, class_names: Sequence[str], per_class: int, seed: int = 0) -> list[Path]:
    """Write ``per_class`` JPEGs per class as ``root/<class>/<i>.jpg``; return the paths."""
    rng = np.random.default_rng(seed)
    paths = []
    for index, name in enumerate(class_names):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            path = root / name / f"{i}.jpg"
            draw_image(index, rng).save(path, quality=90)
            paths.append(path)
    return paths


def write_training_list(
    repo: Path, list_path: Path, class_names: Sequence[str], per_class: int, val_per_class: int, seed: int = 0
) -> None:
    """Write images under ``repo/images`` and a path,label,split,group CSV with repo-relative paths."""
    paths = write_image_folder(repo / "images", class_names, per_class, seed)
    list_path.parent.mkdir(parents=True, exist_ok=True)
    with open(list_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split", "group"])
        for path in paths:
            label = path.parent.name
            split = "val" if int(path.stem) < val_per_class else "train"
            writer.writerow([path.relative_to(repo).as_posix(), label, split, f"{label}-{path.stem}"])
