"""The classifier training loop: optimisers, LR schedules, class balancing, validation.

:func:`train_classifier` trains on ``(path, label)`` samples, validates after each epoch
(loss, accuracy, macro AUROC) and keeps either the epoch with the best validation macro
AUROC or the last epoch (``TrainConfig.select``). Under ``torchrun`` it wraps the model in
DistributedDataParallel. Each rank trains on ``1/world_size`` of every epoch's samples, and
rank 0 alone validates.

Deterministic mode (``deterministic: true``) calls ``torch.use_deterministic_algorithms(True)``,
turns off cuDNN benchmarking and sets ``CUBLAS_WORKSPACE_CONFIG``: two runs with the same seed,
data, device type and process count then give the same weights, at some cost in speed. An
operation without a deterministic implementation raises a RuntimeError in that mode.

Given a ``checkpoint_path``, :func:`train_classifier` writes a checkpoint after every epoch and,
with ``resume: true``, continues from one that matches this run's data and settings
(:mod:`dermcan.training_checkpoints`). In deterministic mode with ``num_workers: 0`` a resumed
run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from dermcan import datasets, evaluation_metrics, models, training_checkpoints
from dermcan.distributed import DistributedContext

log = logging.getLogger(__name__)

OPTIMIZERS: tuple[str, ...] = ("adamw", "radam", "sgd")
SCHEDULES: tuple[str, ...] = ("cosine", "step", "none")
BALANCING: tuple[str, ...] = ("sampler", "loss", "none")
SELECTIONS: tuple[str, ...] = ("best", "last")


def _check_choice(kind: str, value: str, valid: Sequence[str]) -> str:
    lowered = str(value).lower()
    if lowered not in valid:
        raise ValueError(f"unknown {kind} {value!r}; valid values are: {', '.join(valid)}")
    return lowered


@dataclasses.dataclass
class TrainConfig:
    """Training settings; :meth:`from_params` reads them from the ``train`` params section."""

    arch: str = "mobilenet_v3_small"
    weights: str | None = None
    input_size: int = 96
    cache_margin: float = 0.15
    cache_dir: str | None = None
    epochs: int = 8
    batch_size: int = 32
    optimizer: str = "adamw"
    lr: float = 3e-3
    weight_decay: float = 0.05
    momentum: float = 0.9
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    step_size: int = 10
    gamma: float = 0.1
    label_smoothing: float = 0.1
    bn_momentum: float | None = 0.1
    balance: str = "sampler"
    augmentation: dict[str, Any] = dataclasses.field(default_factory=dict)
    seed: int = 0
    deterministic: bool = False
    num_workers: int = 0
    device: str = "auto"
    select: str = "best"
    resume: bool = True

    def __post_init__(self) -> None:
        models.check_architecture(self.arch)
        self.optimizer = _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        self.schedule = _check_choice("LR schedule", self.schedule, SCHEDULES)
        self.balance = _check_choice("class balancing", self.balance, BALANCING)
        self.select = _check_choice("model selection", self.select, SELECTIONS)
        if self.epochs < 1 or self.batch_size < 1 or self.input_size < 16:
            raise ValueError(
                f"epochs ({self.epochs}) and batch_size ({self.batch_size}) must be at least 1 "
                f"and input_size ({self.input_size}) at least 16"
            )

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "TrainConfig":
        """Build a config from the ``train`` params section (nested as in params.yaml)."""
        model = params.get("model", {})
        optimizer = params.get("optimizer", {})
        schedule = params.get("schedule", {})
        cache = params.get("cache", {})
        return cls(
            arch=model.get("arch", cls.arch),
            weights=model.get("weights"),
            input_size=int(model.get("input_size", cls.input_size)),
            cache_margin=float(cache.get("margin", cls.cache_margin)),
            cache_dir=cache.get("dir"),
            epochs=int(params.get("epochs", cls.epochs)),
            batch_size=int(params.get("batch_size", cls.batch_size)),
            optimizer=optimizer.get("name", cls.optimizer),
            lr=float(optimizer.get("lr", cls.lr)),
            weight_decay=float(optimizer.get("weight_decay", cls.weight_decay)),
            momentum=float(optimizer.get("momentum", cls.momentum)),
            schedule=schedule.get("name", cls.schedule),
            warmup_epochs=float(schedule.get("warmup_epochs", cls.warmup_epochs)),
            step_size=int(schedule.get("step_size", cls.step_size)),
            gamma=float(schedule.get("gamma", cls.gamma)),
            label_smoothing=float(params.get("label_smoothing", cls.label_smoothing)),
            bn_momentum=params.get("bn_momentum", cls.bn_momentum),
            balance=params.get("balance", cls.balance),
            augmentation=dict(params.get("augmentation") or {}),
            seed=int(params.get("seed", cls.seed)),
            deterministic=bool(params.get("deterministic", cls.deterministic)),
            num_workers=int(params.get("num_workers", cls.num_workers)),
            device=str(params.get("device", cls.device)),
            select=params.get("select", cls.select),
            resume=bool(params.get("resume", cls.resume)),
        )


@dataclasses.dataclass
class TrainResult:
    """The trained model (weights of the selected epoch) and what happened per epoch."""

    model: torch.nn.Module
    classes: list[str]
    history: list[dict[str, float | None]]
    selected_epoch: int
    steps_per_epoch: int


def make_optimizer(
    name: str, parameters: Iterator[torch.nn.Parameter], *, lr: float, weight_decay: float, momentum: float = 0.9
) -> torch.optim.Optimizer:
    """Build optimizer ``name`` (adamw, radam or sgd with Nesterov momentum)."""
    name = _check_choice("optimizer", name, OPTIMIZERS)
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    if name == "radam":
        return torch.optim.RAdam(parameters, lr=lr, weight_decay=weight_decay, decoupled_weight_decay=True)
    return torch.optim.SGD(parameters, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=momentum > 0)


def lr_factor(
    step: int, *, schedule: str, total_steps: int, warmup_steps: int, step_size_steps: int, gamma: float
) -> float:
    """Return the LR multiplier at optimisation ``step`` (0-based).

    Warmup rises linearly from ``1/(warmup_steps+1)`` to 1; afterwards ``cosine`` decays to 0
    at ``total_steps``, ``step`` multiplies by ``gamma`` every ``step_size_steps`` and ``none``
    stays at 1.
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if schedule == "cosine":
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    if schedule == "step":
        return gamma ** ((step - warmup_steps) // max(1, step_size_steps))
    return 1.0


class BalancedDistributedSampler(torch.utils.data.Sampler[int]):
    """Class-balanced sampling with replacement, split across ranks like DistributedSampler.

    Each epoch draws ``len(weights)`` indices, rounded up to a multiple of ``world_size``, with
    probability proportional to ``weights``. The generator is seeded with ``seed + epoch``, so
    all ranks draw the same list, and rank r takes every ``world_size``-th index from position r.
    """

    def __init__(self, weights: Sequence[float], *, rank: int = 0, world_size: int = 1, seed: int = 0) -> None:
        self.weights = torch.as_tensor(weights, dtype=torch.double)
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.epoch = 0
        self.num_samples = math.ceil(len(self.weights) / world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        total = self.num_samples * self.world_size
        drawn = torch.multinomial(self.weights, total, replacement=True, generator=generator)
        return iter(drawn[self.rank :: self.world_size].tolist())


def inverse_frequency_weights(targets: Sequence[int], num_classes: int) -> np.ndarray:
    """Return per-class weights ``n / (k * count)`` (mean 1 over present classes; 0 if absent)."""
    counts = np.bincount(np.asarray(targets, dtype=int), minlength=num_classes).astype(float)
    present = counts > 0
    weights = np.zeros(num_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


def set_batchnorm_momentum(model: torch.nn.Module, momentum: float) -> int:
    """Set the running-statistics momentum of every BatchNorm layer; return how many were changed.

    torchvision builds MobileNetV3 and EfficientNet with momentum 0.01, tuned for long ImageNet
    runs. A few hundred steps then leave the running statistics near their initial values, and
    the model predicts almost uniform probabilities in eval mode although training went well.
    """
    layers = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for layer in layers:
        layer.momentum = momentum
    return len(layers)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, numpy and torch; in deterministic mode also force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True)


def _make_train_loader(
    dataset: datasets.ImageDataset,
    targets: Sequence[int],
    config: TrainConfig,
    context: DistributedContext,
    num_classes: int,
) -> torch.utils.data.DataLoader:
    if config.balance == "sampler":
        class_weights = inverse_frequency_weights(targets, num_classes)
        sample_weights = [class_weights[t] for t in targets]
        sampler: torch.utils.data.Sampler[int] = BalancedDistributedSampler(
            sample_weights, rank=context.rank, world_size=context.world_size, seed=config.seed
        )
    else:
        sampler = torch.utils.data.DistributedSampler(
            dataset, num_replicas=context.world_size, rank=context.rank, shuffle=True, seed=config.seed
        )
    per_rank = len(sampler)  # type: ignore[arg-type]
    # BatchNorm cannot normalise a batch of one image, so a final batch of one is dropped.
    drop_last = per_rank % config.batch_size == 1 and per_rank > 1
    generator = torch.Generator().manual_seed(config.seed + 1000 * context.rank)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=config.num_workers,
        persistent_workers=config.num_workers > 0,
        pin_memory=context.device.type == "cuda",
        generator=generator,
    )


@torch.no_grad()
def predict(
    model: torch.nn.Module, loader: torch.utils.data.DataLoader, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(softmax probabilities, targets)`` of ``model`` over ``loader``, in loader order."""
    model.eval()
    probabilities, targets = [], []
    for images, batch_targets in loader:
        logits = model(images.to(device, non_blocking=True))
        probabilities.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        targets.append(np.asarray(batch_targets))
    if not probabilities:
        return np.zeros((0, 0)), np.zeros(0, dtype=int)
    return np.concatenate(probabilities), np.concatenate(targets)


def validation_metrics(probabilities: np.ndarray, targets: np.ndarray) -> dict[str, float | None]:
    """Return validation loss (cross-entropy), accuracy and macro AUROC."""
    if len(targets) == 0:
        return {"loss": None, "accuracy": None, "macro_auroc": None}
    picked = probabilities[np.arange(len(targets)), targets]
    return {
        "loss": float(-np.log(np.clip(picked, 1e-12, None)).mean()),
        "accuracy": float((probabilities.argmax(axis=1) == targets).mean()),
        "macro_auroc": evaluation_metrics.macro_auroc(targets, probabilities),
    }


def _train_one_epoch(
    model: torch.nn.Module,
    loader: torch.utils.data.DataLoader,
    criterion: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    context: DistributedContext,
    description: str,
) -> tuple[float, int]:
    """Run one epoch; return the mean training loss over all ranks and this rank's step count."""
    model.train()
    loss_sum = torch.zeros(2, dtype=torch.float64, device=context.device)
    steps = 0
    for images, targets in tqdm(loader, desc=description, unit="batch", disable=None, leave=False):
        images = images.to(context.device, non_blocking=True)
        targets = targets.to(context.device, non_blocking=True)
        loss = criterion(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss_sum[0] += loss.detach().double() * len(targets)
        loss_sum[1] += len(targets)
        steps += 1
    if context.is_distributed:
        dist.all_reduce(loss_sum)
    return float(loss_sum[0] / loss_sum[1].clamp(min=1)), steps


def train_classifier(
    config: TrainConfig,
    train_samples: Sequence[datasets.Sample],
    val_samples: Sequence[datasets.Sample],
    *,
    context: DistributedContext | None = None,
    on_epoch_end: Callable[[dict[str, float | None]], None] | None = None,
    checkpoint_path: str | os.PathLike[str] | None = None,
) -> TrainResult:
    """Train a classifier on ``train_samples`` and validate on ``val_samples`` each epoch.

    The classes are those present in ``train_samples``, in :data:`dermcan.classes.CLASSES`
    order; validation images of other classes are left out with a warning. ``on_epoch_end``
    receives each epoch's metrics on rank 0; after a resume it first receives the records of
    the epochs restored from the checkpoint. With ``checkpoint_path`` rank 0 writes a
    checkpoint there after every epoch. The returned model is on the CPU, in eval mode.
    """
    context = context or DistributedContext()
    classes = datasets.classes_present(label for _, label in train_samples)
    if len(classes) < 2:
        raise ValueError(f"training needs images of at least 2 classes, found {classes or 'none'}")
    index = {name: i for i, name in enumerate(classes)}
    train_indexed = [(path, index[label]) for path, label in train_samples]
    val_indexed = [(path, index[label]) for path, label in val_samples if label in index]
    if len(val_indexed) < len(val_samples):
        log.warning("%d validation images of classes absent from training are left out", len(val_samples) - len(val_indexed))

    seed_everything(config.seed, config.deterministic)
    mean, std = models.IMAGENET_MEAN, models.IMAGENET_STD
    cache = datasets.ImageCache(datasets.cache_size_for(config.input_size, config.cache_margin), config.cache_dir)
    cache.preload([p for p, _ in train_indexed] + [p for p, _ in val_indexed])
    train_set = datasets.ImageDataset(train_indexed, datasets.train_transform(config.input_size, config.augmentation, mean, std), cache)
    val_set = datasets.ImageDataset(val_indexed, datasets.eval_transform(config.input_size, mean, std), cache)
    targets = [t for _, t in train_indexed]
    loader = _make_train_loader(train_set, targets, config, context, len(classes))
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=config.batch_size * 2, num_workers=config.num_workers)

    model = models.build_classifier(config.arch, len(classes), config.weights).to(context.device)
    if config.bn_momentum is not None:
        set_batchnorm_momentum(model, float(config.bn_momentum))
    trained: torch.nn.Module = model
    if context.is_distributed:
        trained = DistributedDataParallel(model, device_ids=[context.device.index] if context.device.type == "cuda" else None)
    loss_weights = None
    if config.balance == "loss":
        loss_weights = torch.as_tensor(inverse_frequency_weights(targets, len(classes)), dtype=torch.float32, device=context.device)
    criterion = torch.nn.CrossEntropyLoss(weight=loss_weights, label_smoothing=config.label_smoothing)
    optimizer = make_optimizer(config.optimizer, model.parameters(), lr=config.lr, weight_decay=config.weight_decay, momentum=config.momentum)
    steps_per_epoch = len(loader)
    schedule = dict(
        schedule=config.schedule,
        total_steps=steps_per_epoch * config.epochs,
        warmup_steps=int(round(config.warmup_epochs * steps_per_epoch)),
        step_size_steps=config.step_size * steps_per_epoch,
        gamma=config.gamma,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, **schedule))
    log.info(
        "training %s on %d images (%d classes, %d per rank, %d steps per epoch), validating on %d",
        config.arch, len(train_indexed), len(classes), len(loader.sampler), steps_per_epoch, len(val_indexed),  # type: ignore[arg-type]
    )

    history: list[dict[str, float | None]] = []
    best_score, best_epoch, best_state = -math.inf, config.epochs, None
    start_epoch, fingerprint = 1, ""
    if checkpoint_path is not None:
        indexed = {"train": train_indexed, "val": val_indexed}
        fingerprint = training_checkpoints.training_fingerprint(config, indexed, classes, cache, context.world_size)
        checkpoint = _resumable_checkpoint(checkpoint_path, fingerprint, config.resume)
        if checkpoint is not None:
            model.load_state_dict(checkpoint["model"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            scheduler.load_state_dict(checkpoint["scheduler"])
            training_checkpoints.restore_rng(checkpoint["rng_states"][context.rank], loader.generator)
            history = list(checkpoint["history"])
            best_score, best_epoch, best_state = checkpoint["best_score"], checkpoint["best_epoch"], checkpoint["best_state"]
            start_epoch = checkpoint["epoch"] + 1
            log.info("resuming from %s after epoch %d of %d", checkpoint_path, checkpoint["epoch"], config.epochs)
            if context.is_main and on_epoch_end is not None:
                for record in history:
                    on_epoch_end(record)

    for epoch in range(start_epoch, config.epochs + 1):
        started = time.perf_counter()
        loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        lr = optimizer.param_groups[0]["lr"]
        train_loss, steps = _train_one_epoch(trained, loader, criterion, optimizer, scheduler, context, f"epoch {epoch}")
        record: dict[str, float | None] = {"epoch": epoch, "train_loss": train_loss, "lr": lr, "steps": steps}
        if context.is_main:
            probabilities, val_targets = predict(model, val_loader, context.device)
            record.update({f"val_{k}": v for k, v in validation_metrics(probabilities, val_targets).items()})
            record["seconds"] = time.perf_counter() - started
            score = record["val_macro_auroc"] if record["val_macro_auroc"] is not None else record["val_accuracy"]
            if score is not None and score > best_score:
                best_score, best_epoch = score, epoch
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            log.info(
                "epoch %d/%d: train loss %.4f, val loss %s, accuracy %s, macro AUROC %s, %.1f s",
                epoch, config.epochs, train_loss, _fmt(record["val_loss"]), _fmt(record["val_accuracy"]),
                _fmt(record["val_macro_auroc"]), record["seconds"],
            )
            history.append(record)
            if on_epoch_end is not None:
                on_epoch_end(record)
        else:
            history.append(record)
        if checkpoint_path is not None:
            rng_states = _gather_rng_states(loader.generator, context)
            if context.is_main:
                training_checkpoints.save_checkpoint(checkpoint_path, {
                    "fingerprint": fingerprint, "epoch": epoch, "dvclive_step": len(history),
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "history": history, "best_score": best_score,
                    "best_epoch": best_epoch, "best_state": best_state, "rng_states": rng_states,
                })

    model = model.cpu()
    if config.select == "best" and best_state is not None:
        model.load_state_dict(best_state)
        selected = best_epoch
    else:
        selected = config.epochs
    model.eval()
    return TrainResult(model=model, classes=classes, history=history, selected_epoch=selected, steps_per_epoch=steps_per_epoch)


def _resumable_checkpoint(path: str | os.PathLike[str], fingerprint: str, resume: bool) -> dict[str, Any] | None:
    if not resume:
        if os.path.exists(path):
            log.info("train.resume is false: ignoring the checkpoint %s and starting at epoch 1", path)
        return None
    return training_checkpoints.load_resumable_checkpoint(path, fingerprint=fingerprint)


def _gather_rng_states(loader_generator: torch.Generator, context: DistributedContext) -> list[dict[str, Any]]:
    """Return the RNG states of every rank, in rank order (on every rank)."""
    snapshot = training_checkpoints.rng_snapshot(loader_generator)
    if not context.is_distributed:
        return [snapshot]
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, snapshot)
    return gathered


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
