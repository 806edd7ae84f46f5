"""Image lists and cached image datasets for training and evaluation.

Training lists are CSV files with columns ``path, label, split, group`` (``path`` relative to
the repository root); external test sets are ImageFolder trees. Decoding a JPEG costs more
than a small CNN's forward pass on CPU, so :class:`ImageCache` decodes each image only once.
It resizes the shorter side to ``cache_size`` (a bit above the network input), centre-crops a
square and keeps the uint8 array in memory. With a cache folder it also stores the array as an
``.npy`` file keyed by path, size and modification time. Augmentations run on the small array.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.transforms import v2
from tqdm import tqdm

from dermcan import atomic_io
from dermcan.classes import CLASSES

log = logging.getLogger(__name__)

LIST_COLUMNS: tuple[str, ...] = ("path", "label", "split", "group")
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")

Sample = tuple[Path, str]


def read_training_lists(
    list_paths: Sequence[str | os.PathLike[str]], split: str, root: str | os.PathLike[str] = "."
) -> list[Sample]:
    """Return ``(image path, label)`` for the rows of ``list_paths`` whose ``split`` equals ``split``.

    Image paths in the lists are relative to ``root`` (the repository root). Raises
    ``FileNotFoundError`` for a missing list and ``ValueError`` for missing columns or a label
    outside :data:`dermcan.classes.CLASSES`.
    """
    samples: list[Sample] = []
    for list_path in list_paths:
        list_path = Path(list_path)
        if not list_path.is_file():
            raise FileNotFoundError(f"training list {list_path} not found: run the stage that writes it")
        rows = atomic_io.read_csv(list_path)
        if rows:
            missing = [column for column in LIST_COLUMNS if column not in rows[0]]
            if missing:
                raise ValueError(f"{list_path} lacks columns {', '.join(missing)}")
        for line, row in enumerate(rows, start=2):
            if row["label"] not in CLASSES:
                raise ValueError(
                    f"{list_path} line {line}: unknown label {row['label']!r}; "
                    f"valid labels are: {', '.join(CLASSES)}"
                )
            if row["split"] == split:
                samples.append((Path(root) / row["path"], row["label"]))
    return samples


def classes_present(labels: Iterable[str]) -> list[str]:
    """Return the distinct ``labels`` in :data:`CLASSES` order."""
    present = set(labels)
    return [name for name in CLASSES if name in present]


def read_image_folder(root: str | os.PathLike[str]) -> list[Sample]:
    """Return ``(image path, folder name)`` for every image in the ImageFolder tree ``root``, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} not found")
    samples: list[Sample] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
                samples.append((path, folder.name))
    return samples


def decode_and_resize(path: str | os.PathLike[str], size: int) -> np.ndarray:
    """Decode ``path`` to RGB, resize its shorter side to ``size`` and centre-crop a square.

    Returns a ``size x size x 3`` uint8 array. EXIF orientation is applied.
    """
    with Image.open(path) as image:
        # draft() lets the JPEG decoder downscale by 2, 4 or 8 while decoding, faster than decoding at full size.
        image.draft("RGB", (size, size))
        image = ImageOps.exif_transpose(image).convert("RGB")
    width, height = image.size
    scale = size / min(width, height)
    new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
    image = image.resize(new_size, Image.Resampling.BILINEAR, reducing_gap=3.0)
    left = (new_size[0] - size) // 2
    top = (new_size[1] - size) // 2
    image = image.crop((left, top, left + size, top + size))
    return np.array(image, dtype=np.uint8)


class ImageCache:
    """Decoded, resized images kept in memory and optionally in a folder of ``.npy`` files.

    A disk entry's name hashes the absolute path, ``size`` and the file's modification time
    in nanoseconds, so an edited image is decoded again. Stale entries are never deleted.
    """

    def __init__(self, size: int, cache_dir: str | os.PathLike[str] | None = None) -> None:
        self.size = int(size)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._memory: dict[Path, np.ndarray] = {}
        self.decoded = 0
        self.read_from_disk = 0

    def _disk_path(self, path: Path) -> Path:
        assert self.cache_dir is not None
        stat = path.stat()
        key = f"{path.resolve()}|{self.size}|{stat.st_mtime_ns}"
        digest = hashlib.sha1(key.encode("utf-8")).hexdigest()
        return self.cache_dir / str(self.size) / digest[:2] / f"{digest}.npy"

    def get(self, path: str | os.PathLike[str]) -> np.ndarray:
        """Return the ``size x size x 3`` uint8 array of ``path``, decoding it on first use."""
        path = Path(path)
        cached = self._memory.get(path)
        if cached is not None:
            return cached
        disk_path = self._disk_path(path) if self.cache_dir else None
        array: np.ndarray | None = None
        if disk_path is not None and disk_path.is_file():
            try:
                array = np.load(disk_path, allow_pickle=False)
                self.read_from_disk += 1
            except (OSError, ValueError) as error:
                log.warning("unreadable cache entry %s for %s (%s); decoding again", disk_path, path, error)
                array = None
        if array is None or array.shape != (self.size, self.size, 3):
            array = decode_and_resize(path, self.size)
            self.decoded += 1
            if disk_path is not None:
                with atomic_io.atomic_path(disk_path) as temporary:
                    with open(temporary, "wb") as handle:
                        np.save(handle, array, allow_pickle=False)
        self._memory[path] = array
        return array

    def preload(self, paths: Iterable[str | os.PathLike[str]], description: str = "decoding") -> None:
        """Fill the in-memory cache for ``paths`` (before DataLoader workers fork and share it)."""
        paths = list(paths)
        for path in tqdm(paths, desc=description, unit="image", disable=None, leave=False):
            self.get(path)
        log.info(
            "image cache: %d images at %d px, %d decoded, %d read from the disk cache %s",
            len(paths), self.size, self.decoded, self.read_from_disk, self.cache_dir or "(none)",
        )


class ImageDataset(torch.utils.data.Dataset):
    """``(image tensor, class index)`` pairs from ``(path, index)`` samples.

    With ``cache`` the arrays come from an :class:`ImageCache`; with ``cache=None`` every
    access decodes the file again at ``size`` (the uncached baseline of the benchmark).
    """

    def __init__(
        self,
        samples: Sequence[tuple[Path, int]],
        transform: Callable[[torch.Tensor], torch.Tensor],
        cache: ImageCache | None,
        size: int | None = None,
    ) -> None:
        if cache is None and size is None:
            raise ValueError("ImageDataset needs a cache or a size")
        self.samples = list(samples)
        self.transform = transform
        self.cache = cache
        self.size = cache.size if cache is not None else int(size)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, target = self.samples[index]
        array = self.cache.get(path) if self.cache is not None else decode_and_resize(path, self.size)
        image = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)
        return self.transform(image), target


def cache_size_for(input_size: int, margin: float) -> int:
    """Return the cached image side: ``input_size`` enlarged by ``margin`` (0.15 means 15 %)."""
    return int(round(input_size * (1.0 + margin)))


def train_transform(
    input_size: int, augmentation: Mapping[str, Any], mean: Sequence[float], std: Sequence[float]
) -> v2.Compose:
    """Build the training augmentation for uint8 CHW tensors.

    ``augmentation`` keys: ``crop_scale`` is the [min, max] area fraction of the random
    resized crop (null for a plain resize). ``hflip`` and ``vflip`` are booleans and
    ``rotation`` is in degrees. ``color_jitter`` is the strength of brightness, contrast and
    saturation jitter, and hue jitter gets a fifth of it.
    """
    steps: list[Any] = []
    crop_scale = augmentation.get("crop_scale")
    if crop_scale:
        steps.append(v2.RandomResizedCrop(input_size, scale=tuple(crop_scale), antialias=True))
    else:
        steps.append(v2.Resize((input_size, input_size), antialias=True))
    if augmentation.get("hflip"):
        steps.append(v2.RandomHorizontalFlip())
    if augmentation.get("vflip"):
        steps.append(v2.RandomVerticalFlip())
    if augmentation.get("rotation"):
        steps.append(v2.RandomRotation(float(augmentation["rotation"])))
    jitter = float(augmentation.get("color_jitter") or 0.0)
    if jitter > 0:
        steps.append(v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter, hue=min(0.5, jitter / 5)))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(steps)


def eval_transform(input_size: int, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """Build the evaluation transform: resize the cached square to ``input_size`` and normalise."""
    return v2.Compose(
        [
            v2.Resize((input_size, input_size), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
        ]
    )
