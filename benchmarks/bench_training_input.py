"""Images per second of one training epoch through four input paths, timed in the same run.

Run by hand from the repository root::

    .venv/bin/python benchmarks/bench_training_input.py --images 300 --runs 5

All four paths train the classifier of the ``train`` section of params.yaml (architecture,
input size, batch size, optimiser, worker count) with the same training step:

* ``project``: the train stage's input path. :class:`dermcan.datasets.ImageCache` decodes
  every image once (its one-off fill is timed separately). :class:`dermcan.datasets.ImageDataset`
  then applies the training augmentation to the cached uint8 arrays, and the DataLoader is built
  by ``dermcan.training._make_train_loader`` (class-balanced sampler, persistent workers).
* ``project_no_augmentation``: the same with the augmentation off (a plain resize of the cached
  square), which separates the cost of the cache and the DataLoader from that of augmenting.
* ``imagefolder``: a plain ``torchvision.datasets.ImageFolder`` with ``Resize``, random flips,
  ``ToTensor`` and ``Normalize`` in a shuffled ``DataLoader``. Every access decodes the JPEG
  again, and the workers start again each epoch, as in a typical PyTorch training script.
* ``in_memory``: the same model on normalised tensors that are already in memory, batched by
  indexing, with no DataLoader and no augmentation. It is the ceiling for the other two.

The images are ``--images`` close-ups from :mod:`dermcan.synthetic_lesions`, saved as JPEG
crops like the annotate stage's, or the images of ``--folder`` (an ImageFolder tree whose folder
names are class names). Each run times one epoch of each path, in rotating order; the figures
are medians over ``--runs``. It also times each step of the training augmentation on one
cached image in this process with one torch thread, the profile that shows where the project
path's time goes. The record goes to benchmarks/results/training_input.json.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
import torchvision
from torchvision import transforms

from dermcan import datasets, models, synthetic_lesions, training
from dermcan.classes import CLASSES
from dermcan.distributed import DistributedContext
from dermcan.params import load_params

sys.path.insert(0, str(Path(__file__).resolve().parent))
from records import REPOSITORY_ROOT, median, new_record, write_record  # noqa: E402

PATHS = ("project", "project_no_augmentation", "imagefolder", "in_memory")


def write_crops(folder: Path, count: int, size: int, seed: int = 0) -> None:
    """Write ``count`` synthetic close-ups, round-robin over the classes, as JPEG crops."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        label = CLASSES[index % len(CLASSES)]
        image = synthetic_lesions.render_close_up(rng, label, size=size)
        target = folder / label / f"{index:05d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        image.save(target, format="JPEG", quality=95)


class InMemoryBatches:
    """Shuffled batches indexed out of one tensor of ready inputs: the no-input-cost ceiling."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, batch_size: int, seed: int) -> None:
        self.images = images
        self.targets = targets
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self.images), generator=self.generator)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            if len(batch) < 2:  # BatchNorm cannot train on one image; the train loader drops it too
                break
            yield self.images[batch], self.targets[batch]


def time_epoch(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    model: torch.nn.Module,
    criterion: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
) -> dict[str, float]:
    """Train one epoch (the step of ``training._train_one_epoch``); return seconds, images and input wait."""
    model.train()
    images_seen = 0
    waiting = 0.0
    started = time.perf_counter()
    iterator = iter(batches)
    while True:
        wait_started = time.perf_counter()
        try:
            images, targets = next(iterator)
        except StopIteration:
            break
        waiting += time.perf_counter() - wait_started
        loss = criterion(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        images_seen += len(targets)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "images": images_seen, "input_wait_seconds": waiting}


def time_loading(batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Return images per second of only iterating ``batches`` (no model)."""
    started = time.perf_counter()
    count = sum(len(targets) for _, targets in batches)
    return count / (time.perf_counter() - started)


def profile_augmentation(config: training.TrainConfig, repeats: int = 300) -> dict[str, float]:
    """Return milliseconds per image of each training-augmentation step, with one torch thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    try:
        transform = datasets.train_transform(config.input_size, config.augmentation, models.IMAGENET_MEAN, models.IMAGENET_STD)
        size = datasets.cache_size_for(config.input_size, config.cache_margin)
        image = torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        profile = {}
        for step in transform.transforms:
            for _ in range(10):
                step(image)
            started = time.perf_counter()
            for _ in range(repeats):
                output = step(image)
            profile[type(step).__name__] = round((time.perf_counter() - started) / repeats * 1000, 3)
            image = output
        profile["total"] = round(sum(profile.values()), 3)
        return profile
    finally:
        torch.set_num_threads(threads)


def build_inputs(
    root: Path, config: training.TrainConfig
) -> tuple[dict[str, Callable[[int], Iterable]], int, float]:
    """Build the four input paths over the ImageFolder ``root``.

    Returns a function per path that gives the batches of epoch ``n``, the class count and the
    seconds of the project path's one-off cache fill.
    """
    samples = datasets.read_image_folder(root)
    classes = datasets.classes_present(label for _, label in samples)
    index = {name: i for i, name in enumerate(classes)}
    indexed = [(path, index[label]) for path, label in samples]
    targets = [target for _, target in indexed]
    mean, std = models.IMAGENET_MEAN, models.IMAGENET_STD

    cache = datasets.ImageCache(datasets.cache_size_for(config.input_size, config.cache_margin))
    started = time.perf_counter()
    cache.preload([path for path, _ in indexed])
    fill_seconds = time.perf_counter() - started
    project_set = datasets.ImageDataset(indexed, datasets.train_transform(config.input_size, config.augmentation, mean, std), cache)
    project_loader = training._make_train_loader(project_set, targets, config, DistributedContext(), len(classes))
    plain_set = datasets.ImageDataset(indexed, datasets.train_transform(config.input_size, {}, mean, std), cache)
    plain_loader = training._make_train_loader(plain_set, targets, config, DistributedContext(), len(classes))

    plain_transform = transforms.Compose(
        [
            transforms.Resize((config.input_size, config.input_size)),
            transforms.RandomHorizontalFlip(),
            transforms.RandomVerticalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )
    folder_set = torchvision.datasets.ImageFolder(str(root), transform=plain_transform)
    folder_loader = torch.utils.data.DataLoader(
        folder_set, batch_size=config.batch_size, shuffle=True, num_workers=config.num_workers,
        drop_last=len(folder_set) % config.batch_size == 1,
    )

    ready = datasets.ImageDataset(indexed, datasets.eval_transform(config.input_size, mean, std), cache)
    images = torch.stack([ready[i][0] for i in range(len(ready))])
    memory_batches = InMemoryBatches(images, torch.as_tensor(targets), config.batch_size, config.seed)

    def epoch_of(loader: torch.utils.data.DataLoader) -> Callable[[int], Iterable]:
        def batches(epoch: int) -> Iterable:
            loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
            return loader

        return batches

    epochs = {
        "project": epoch_of(project_loader),
        "project_no_augmentation": epoch_of(plain_loader),
        "imagefolder": lambda epoch: folder_loader,
        "in_memory": lambda epoch: memory_batches,
    }
    return epochs, len(classes), fill_seconds


def measure(epochs: dict[str, Callable[[int], Iterable]], num_classes: int, config: training.TrainConfig, runs: int) -> dict[str, list[dict[str, float]]]:
    """Time ``runs`` training epochs of each path after one warm-up epoch, rotating the order."""
    trainers = {}
    for name in PATHS:
        torch.manual_seed(config.seed)
        model = models.build_classifier(config.arch, num_classes, config.weights)
        if config.bn_momentum is not None:
            training.set_batchnorm_momentum(model, float(config.bn_momentum))
        optimizer = training.make_optimizer(config.optimizer, model.parameters(), lr=config.lr, weight_decay=config.weight_decay, momentum=config.momentum)
        criterion = torch.nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        trainers[name] = (model, criterion, optimizer)
        time_epoch(epochs[name](0), *trainers[name])  # warm-up: allocator, kernels, persistent workers

    results: dict[str, list[dict[str, float]]] = {name: [] for name in PATHS}
    for run in range(runs):
        order = PATHS[run % len(PATHS) :] + PATHS[: run % len(PATHS)]
        for name in order:
            timing = time_epoch(epochs[name](run + 1), *trainers[name])
            timing["images_per_second"] = timing["images"] / timing["seconds"]
            results[name].append(timing)
            logging.info("run %d %-11s %6.1f images/s (%.2f s, %.2f s waiting for input)", run + 1, name,
                         timing["images_per_second"], timing["seconds"], timing["input_wait_seconds"])
    return results


def summarise(results: dict[str, list[dict[str, float]]], loading: dict[str, float]) -> dict[str, dict[str, float]]:
    ceiling = median([t["images_per_second"] for t in results["in_memory"]])
    summary = {}
    for name, timings in results.items():
        rate = median([t["images_per_second"] for t in timings])
        summary[name] = {
            "images_per_epoch": timings[0]["images"],
            "median_images_per_second": round(rate, 2),
            "median_epoch_seconds": round(median([t["seconds"] for t in timings]), 3),
            "median_input_wait_seconds": round(median([t["input_wait_seconds"] for t in timings]), 3),
            "share_of_in_memory": round(rate / ceiling, 3),
            "loading_only_images_per_second": round(loading[name], 1),
            "runs_images_per_second": [round(t["images_per_second"], 2) for t in timings],
        }
    return summary


def print_table(summary: dict[str, dict[str, float]], fill_seconds: float) -> None:
    print("| input path | images/s (median) | epoch (s) | waiting for input (s) | share of in-memory | loading only (images/s) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, row in summary.items():
        print(f"| {name} | {row['median_images_per_second']:.1f} | {row['median_epoch_seconds']:.2f} | "
              f"{row['median_input_wait_seconds']:.2f} | {row['share_of_in_memory']:.2f} | {row['loading_only_images_per_second']:.0f} |")
    print(f"project path one-off cache fill: {fill_seconds:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300, help="number of generated crops (default 300)")
    parser.add_argument("--crop-size", type=int, default=224, help="pixels of a generated square crop, as annotate.crop_size (default 224)")
    parser.add_argument("--folder", type=Path, help="time the images of this ImageFolder tree instead of generated crops")
    parser.add_argument("--runs", type=int, default=5, help="timed epochs per input path; medians are reported (default 5)")
    parser.add_argument("--batch-size", type=int, help="override train.batch_size")
    parser.add_argument("--workers", type=int, help="override train.num_workers (DataLoader worker processes)")
    parser.add_argument("--threads", type=int, help="torch threads of the main process (default: torch's own choice)")
    parser.add_argument("--no-record", action="store_true", help="print only; do not write benchmarks/results/training_input.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)

    train_params = load_params("train", REPOSITORY_ROOT / "params.yaml")
    if args.batch_size:
        train_params["batch_size"] = args.batch_size
    if args.workers is not None:
        train_params["num_workers"] = args.workers
    train_params["device"] = "cpu"
    config = training.TrainConfig.from_params(train_params)

    with tempfile.TemporaryDirectory(prefix="bench-training-input-") as temporary:
        root = args.folder
        if root is None:
            root = Path(temporary) / "crops"
            started = time.perf_counter()
            write_crops(root, args.images, args.crop_size)
            logging.info("wrote %d crops in %.1f s", args.images, time.perf_counter() - started)
        epochs, num_classes, fill_seconds = build_inputs(root, config)
        results = measure(epochs, num_classes, config, args.runs)
        loading = {name: time_loading(epochs[name](args.runs + 1)) for name in PATHS}

    summary = summarise(results, loading)
    print(f"{config.arch} at {config.input_size} px, batch {config.batch_size}, {config.num_workers} workers, "
          f"{torch.get_num_threads()} torch threads, median of {args.runs} epochs")
    print_table(summary, fill_seconds)
    profile = profile_augmentation(config)
    print("training augmentation, ms per image with one torch thread: "
          + ", ".join(f"{name} {ms:.2f}" for name, ms in profile.items()))
    share = summary["project"]["share_of_in_memory"]
    print(f"project path: {share:.0%} of the in-memory ceiling (target: at least 90 %)")

    if not args.no_record:
        record = new_record("training_input", {
            "images": len(datasets.read_image_folder(root)) if args.folder else args.images,
            "source": str(args.folder) if args.folder else f"generated {args.crop_size}x{args.crop_size} JPEG close-ups",
            "arch": config.arch, "input_size": config.input_size, "batch_size": config.batch_size,
            "num_workers": config.num_workers, "torch_threads": torch.get_num_threads(), "runs": args.runs,
            "augmentation": config.augmentation,
        })
        record.update(cache_fill_seconds=round(fill_seconds, 3), paths=summary, augmentation_ms_per_image=profile, project_share_of_in_memory=share,
                      target="project path at least 90 % of in_memory images/s")
        print(f"wrote {write_record('training_input', record)}")


if __name__ == "__main__":
    main()
