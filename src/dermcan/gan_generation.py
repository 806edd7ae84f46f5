"""Sampling a trained class-conditional generator into an image folder, a list and a grid plot.

Generation calls the generator only: DiffAugment belongs to the discriminator's input during
training and never touches these images.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dermcan import atomic_io
from dermcan.classes import DISPLAY_NAMES
from dermcan.gan_models import Generator

logger = logging.getLogger(__name__)

INDEX_COLUMNS = ("path", "label", "split", "group")


@torch.no_grad()
def generate_images(
    generator: Generator,
    class_index: int,
    count: int,
    *,
    seed: int,
    batch_size: int = 64,
) -> np.ndarray:
    """Sample ``count`` images of one class; return uint8 RGB arrays (count, H, W, 3).

    The noise vectors come from a CPU generator seeded with ``seed``, so the output is the
    same on every device and batch size, up to floating-point differences.
    """
    rng = torch.Generator().manual_seed(seed)
    z = torch.randn(count, generator.latent_dim, generator=rng)
    device = next(generator.parameters()).device
    batches = []
    for start in range(0, count, batch_size):
        z_batch = z[start:start + batch_size].to(device)
        labels = torch.full((z_batch.shape[0],), class_index, dtype=torch.long, device=device)
        batches.append(generator(z_batch, labels).float().cpu())
    if not batches:
        return np.empty((0, generator.resolution, generator.resolution, 3), dtype=np.uint8)
    images = torch.cat(batches)
    images = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return images.permute(0, 2, 3, 1).numpy()


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def write_generated_set(
    generator: Generator,
    *,
    classes: Sequence[str],
    images_per_class: int,
    seed: int,
    output_dir: str | os.PathLike[str],
    batch_size: int = 64,
) -> list[dict[str, str]]:
    """Write ``images_per_class`` PNGs per class to ``output_dir/<class>/NNNNN.png`` and return
    the index rows (path, label, split=train, group=unique id). Each path starts with
    ``output_dir`` as given, so a relative ``output_dir`` gives relative paths.

    Class ``i`` is sampled with seed ``seed + i``, so adding images keeps the earlier ones.
    PNGs left in the class folders from an earlier run are removed first.
    """
    output_dir = Path(output_dir)
    rows: list[dict[str, str]] = []
    for class_index, name in enumerate(classes):
        class_dir = output_dir / name
        class_dir.mkdir(parents=True, exist_ok=True)
        for stale in class_dir.glob("*.png"):
            stale.unlink()
        images = generate_images(
            generator, class_index, images_per_class, seed=seed + class_index,
            batch_size=batch_size,
        )
        for number, image in enumerate(images):
            path = class_dir / f"{number:05d}.png"
            atomic_io.write_bytes(path, png_bytes(image))
            rows.append({
                "path": path.as_posix(),
                "label": name,
                "split": "train",
                "group": f"gan-{name}-{number:05d}",
            })
        logger.info("wrote %d generated images of %s to %s", len(images), name, class_dir)
    return rows


def plot_sample_grid(
    generator: Generator,
    *,
    classes: Sequence[str],
    columns: int,
    seed: int,
    destination: str | os.PathLike[str],
) -> None:
    """Save a grid with one labelled row per class, ``columns`` samples each, as a PNG.

    Every row uses the same noise vectors, so a column shows one noise vector across classes.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for class_index in range(len(classes)):
        rows.append(generate_images(generator, class_index, columns, seed=seed))
    figure, axes = plt.subplots(
        len(classes), 1, figsize=(columns * 0.9 + 2.2, len(classes) * 0.95 + 0.3), squeeze=False
    )
    for axis, name, images in zip(axes[:, 0], classes, rows, strict=True):
        axis.imshow(np.concatenate(list(images), axis=1))
        axis.set_xticks([])
        axis.set_yticks([])
        axis.set_ylabel(DISPLAY_NAMES.get(name, name), rotation=0, ha="right", va="center",
                        fontsize=8)
    figure.suptitle("GAN samples (EMA generator), one noise vector per column", fontsize=9)
    figure.tight_layout()
    with atomic_io.atomic_path(destination) as temporary:
        figure.savefig(temporary, format="png", dpi=100)
    plt.close(figure)
