"""Measure the decoded-image cache: epoch time with and without it, in the same run.

Run by hand from the repository root, for example::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_image_cache.py --images 400

It writes ``--images`` JPEG photographs (``--photo-size`` pixels, textured so that JPEG
decoding costs what it does on real photographs) to a temporary folder, or reads the images
of ``--folder`` instead, then times for the default classifier:

* loading only: one pass over a DataLoader that decodes every image per access, against one
  over the in-memory cache (after the one-off decoding pass, also timed);
* a training epoch (forward, backward, optimiser step) with each of the two inputs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dermcan import datasets, models, training


def write_photos(folder: Path, count: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        base = rng.integers(150, 220, size=3)
        noise = rng.normal(0, 18, size=(size[1] // 4, size[0] // 4, 3))
        texture = np.kron(noise, np.ones((4, 4, 1)))[: size[1], : size[0]]
        array = np.clip(base + texture, 0, 255).astype(np.uint8)
        path = folder / f"{i:04d}.jpg"
        Image.fromarray(array).save(path, quality=90)
        paths.append(path)
    return paths


def time_loader(loader: torch.utils.data.DataLoader) -> float:
    started = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - started


def time_training_epoch(loader: torch.utils.data.DataLoader, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> float:
    criterion = torch.nn.CrossEntropyLoss()
    model.train()
    started = time.perf_counter()
    for images, targets in loader:
        loss = criterion(model(images), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=400, help="number of generated photographs (default 400)")
    parser.add_argument("--photo-size", type=int, nargs=2, default=(640, 480), help="generated photo width and height in pixels (default 640 480)")
    parser.add_argument("--folder", type=Path, help="time these images (an ImageFolder tree) instead of generated ones")
    parser.add_argument("--arch", default="mobilenet_v3_small", help="torchvision model (default mobilenet_v3_small)")
    parser.add_argument("--input-size", type=int, default=96, help="network input in pixels (default 96)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads of the main process (default 2)")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader worker processes, one thread each (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as temporary:
        if args.folder:
            paths = [p for p, _ in datasets.read_image_folder(args.folder)]
        else:
            paths = write_photos(Path(temporary), args.images, tuple(args.photo_size))
        samples = [(p, i % 2) for i, p in enumerate(paths)]
        size = datasets.cache_size_for(args.input_size, 0.15)
        augmentation = {"crop_scale": [0.6, 1.0], "hflip": True, "vflip": True, "rotation": 20, "color_jitter": 0.2}
        transform = datasets.train_transform(args.input_size, augmentation, models.IMAGENET_MEAN, models.IMAGENET_STD)

        uncached = datasets.ImageDataset(samples, transform, cache=None, size=size)
        cache = datasets.ImageCache(size)
        started = time.perf_counter()
        cache.preload(paths)
        fill_seconds = time.perf_counter() - started
        cached = datasets.ImageDataset(samples, transform, cache)

        def loader(dataset: datasets.ImageDataset) -> torch.utils.data.DataLoader:
            return torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers)

        load_uncached = time_loader(loader(uncached))
        load_cached = time_loader(loader(cached))
        model = models.build_classifier(args.arch, 2)
        optimizer = training.make_optimizer("adamw", model.parameters(), lr=1e-3, weight_decay=0.05)
        time_training_epoch(loader(cached), model, optimizer)  # warm-up: allocator and kernels
        train_uncached = time_training_epoch(loader(uncached), model, optimizer)
        train_cached = time_training_epoch(loader(cached), model, optimizer)

    print(
        f"{len(paths)} images, cache side {size} px, {args.arch} at {args.input_size} px, "
        f"batch {args.batch_size}, {args.threads} threads, {args.workers} workers"
    )
    print(f"one-off cache fill (decode + resize):  {fill_seconds:6.2f} s")
    print(f"loading epoch, decoding every image:   {load_uncached:6.2f} s")
    print(f"loading epoch, from the cache:         {load_cached:6.2f} s  ({load_uncached / load_cached:.1f}x faster)")
    print(f"training epoch, decoding every image:  {train_uncached:6.2f} s")
    print(f"training epoch, from the cache:        {train_cached:6.2f} s  ({train_uncached / train_cached:.1f}x faster)")


if __name__ == "__main__":
    main()
