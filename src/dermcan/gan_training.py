"""Training loop of the class-conditional GAN: data, losses, EMA, checkpoints and resumption.

Losses are the non-saturating logistic GAN loss with an R1 penalty on real images, applied
every ``r1_interval`` steps with its weight scaled by the interval ("lazy regularization", as
in StyleGAN2). DiffAugment transforms real and generated images on their way into the
discriminator only. The generator that is exported and sampled is an exponential moving
average (EMA) of the trained one.

A run under ``torchrun`` uses every process as one data-parallel worker: each draws its share
of the batch, gradients are averaged with ``all_reduce`` and rank 0 writes the checkpoints.
Gradients are averaged by hand instead of through ``DistributedDataParallel`` because the R1
penalty needs a double backward pass, which the DDP wrapper does not support.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from dermcan import atomic_io, distributed, gan_models
from dermcan.training_checkpoints import source_digest
from dermcan.distributed import init_distributed, shutdown_distributed
from dermcan.gan_models import (
    Discriminator,
    Generator,
    check_diffaugment_policy,
    check_resolution,
    diff_augment,
)

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
GENERATOR_NAME = "generator.pt"

# Settings that do not change what a training step computes: a checkpoint stays resumable
# when only these differ, so raising ``iterations`` continues a finished run.
RESUMABLE_SETTINGS = frozenset({"iterations", "checkpoint_every", "log_every", "device", "amp"})


@dataclasses.dataclass(frozen=True)
class GanConfig:
    """Settings of GAN training, the ``gan`` section of params.yaml minus generation keys."""

    seed: int = 0
    resolution: int = 64
    latent_dim: int = 64
    generator_width: int = 16
    discriminator_width: int = 32
    max_channels: int = 128
    iterations: int = 600
    batch_size: int = 32
    generator_lr: float = 0.0002
    discriminator_lr: float = 0.0002
    betas: tuple[float, float] = (0.5, 0.99)
    r1_gamma: float = 0.1
    r1_interval: int = 4
    mode_seeking_weight: float = 0.0
    ema_decay: float = 0.995
    diffaugment: tuple[str, ...] = ("color", "translation", "cutout")
    xflip: bool = True
    device: str = "auto"
    amp: bool = False
    checkpoint_every: int = 200
    log_every: int = 50

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> GanConfig:
        """Build a config from a params mapping, ignoring keys that are not training settings."""
        names = {field.name for field in dataclasses.fields(cls)}
        values = {key: value for key, value in params.items() if key in names}
        if "betas" in values:
            values["betas"] = tuple(float(beta) for beta in values["betas"])
        if "diffaugment" in values:
            values["diffaugment"] = tuple(values["diffaugment"] or ())
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        check_resolution(self.resolution)
        check_diffaugment_policy(self.diffaugment)
        for name in ("latent_dim", "generator_width", "discriminator_width", "max_channels",
                     "iterations", "batch_size", "r1_interval", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"gan.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"gan.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.mode_seeking_weight < 0:
            raise ValueError(
                f"gan.mode_seeking_weight must be >= 0, got {self.mode_seeking_weight}"
            )
        if self.r1_gamma < 0:
            raise ValueError(f"gan.r1_gamma must be >= 0, got {self.r1_gamma}")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ValueError(f"gan.device must be auto, cpu or cuda[:N], got {self.device!r}")

    def training_settings(self) -> dict[str, Any]:
        """Return the settings that define the training trajectory (see RESUMABLE_SETTINGS)."""
        settings = dataclasses.asdict(self)
        return {key: value for key, value in settings.items() if key not in RESUMABLE_SETTINGS}


def load_training_images(
    rows: Sequence[Mapping[str, str]], classes: Sequence[str], resolution: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load training crops as a uint8 tensor (N, 3, resolution, resolution) and labels (N,).

    Each crop is centre-cropped to a square and resized with Lanczos filtering. ``rows`` are
    training-list rows with ``path`` and ``label``; a label outside ``classes`` is an error.
    """
    class_index = {name: index for index, name in enumerate(classes)}
    images = np.empty((len(rows), resolution, resolution, 3), dtype=np.uint8)
    labels = np.empty(len(rows), dtype=np.int64)
    for i, row in enumerate(rows):
        if row["label"] not in class_index:
            raise ValueError(f"{row['path']}: label {row['label']!r} is not one of {list(classes)}")
        path = Path(row["path"])
        if not path.is_file():
            raise FileNotFoundError(
                f"training crop {path} not found: rerun the stage that wrote the training list"
            )
        with Image.open(path) as image:
            square = ImageOps.fit(
                image.convert("RGB"), (resolution, resolution), Image.Resampling.LANCZOS
            )
        images[i] = np.asarray(square)
        labels[i] = class_index[row["label"]]
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels)


def training_code_digest() -> str:
    """Return a SHA-256 over the source of the modules that define GAN training."""
    return source_digest([__file__, gan_models.__file__, distributed.__file__])  # type: ignore[list-item]


def data_fingerprint(images: torch.Tensor, labels: torch.Tensor) -> str:
    """Return a SHA-256 over the preprocessed images and labels, to detect changed data."""
    digest = hashlib.sha256()
    digest.update(images.numpy().tobytes())
    digest.update(labels.numpy().tobytes())
    return digest.hexdigest()


@dataclasses.dataclass
class TrainingState:
    """Everything a checkpoint stores: networks, optimisers, step counter and RNG states."""

    generator: Generator
    generator_ema: Generator
    discriminator: Discriminator
    generator_optimizer: torch.optim.Optimizer
    discriminator_optimizer: torch.optim.Optimizer
    batch_rng: torch.Generator  # batch indices and flips, on the CPU
    noise_rng: torch.Generator  # noise vectors and DiffAugment draws, on the training device
    step: int = 0


def build_state(
    config: GanConfig, num_classes: int, device: torch.device, rank: int = 0
) -> TrainingState:
    """Create fresh networks and optimisers; initial weights depend only on ``config.seed``."""
    torch.manual_seed(config.seed)
    generator = Generator(
        num_classes=num_classes,
        resolution=config.resolution,
        latent_dim=config.latent_dim,
        width=config.generator_width,
        max_channels=config.max_channels,
    ).to(device)
    discriminator = Discriminator(
        num_classes=num_classes,
        resolution=config.resolution,
        width=config.discriminator_width,
        max_channels=config.max_channels,
    ).to(device)
    generator_ema = copy.deepcopy(generator).eval().requires_grad_(False)

    # Adam's hyperparameters are scaled for lazy R1 as in StyleGAN2, so that the effective
    # discriminator update matches one with the penalty applied at every step.
    ratio = config.r1_interval / (config.r1_interval + 1)
    discriminator_betas = (config.betas[0] ** ratio, config.betas[1] ** ratio)
    generator_optimizer = torch.optim.Adam(
        generator.parameters(), lr=config.generator_lr, betas=config.betas
    )
    discriminator_optimizer = torch.optim.Adam(
        discriminator.parameters(), lr=config.discriminator_lr * ratio, betas=discriminator_betas
    )

    batch_rng = torch.Generator().manual_seed(config.seed * 1000 + rank + 1)
    noise_rng = torch.Generator(device=device).manual_seed(config.seed * 1000 + rank + 2)
    return TrainingState(
        generator, generator_ema, discriminator, generator_optimizer, discriminator_optimizer,
        batch_rng, noise_rng,
    )


def save_checkpoint(
    state: TrainingState,
    path: Path,
    *,
    config: GanConfig,
    classes: Sequence[str],
    fingerprint: str,
    rng_states: Sequence[dict[str, torch.Tensor]] | None = None,
) -> None:
    """Write ``state`` to ``path`` atomically, so an interrupted write leaves the old file.

    ``rng_states`` lists the RNG states of every data-parallel rank; by default only this
    process's states are stored.
    """
    checkpoint = {
        "step": state.step,
        "config": dataclasses.asdict(config),
        "classes": list(classes),
        "fingerprint": fingerprint,
        "code": training_code_digest(),
        "generator": state.generator.state_dict(),
        "generator_ema": state.generator_ema.state_dict(),
        "discriminator": state.discriminator.state_dict(),
        "generator_optimizer": state.generator_optimizer.state_dict(),
        "discriminator_optimizer": state.discriminator_optimizer.state_dict(),
        "rng_states": list(rng_states) if rng_states is not None else [rng_snapshot(state)],
    }
    atomic_io.write_torch(path, checkpoint)


def rng_snapshot(state: TrainingState) -> dict[str, torch.Tensor]:
    return {"batch": state.batch_rng.get_state(), "noise": state.noise_rng.get_state().cpu()}


def restore_checkpoint(
    state: TrainingState, checkpoint: Mapping[str, Any], rank: int = 0, world_size: int = 1
) -> None:
    """Load networks, optimisers, step and this rank's RNG states from ``checkpoint``."""
    state.generator.load_state_dict(checkpoint["generator"])
    state.generator_ema.load_state_dict(checkpoint["generator_ema"])
    state.discriminator.load_state_dict(checkpoint["discriminator"])
    state.generator_optimizer.load_state_dict(checkpoint["generator_optimizer"])
    state.discriminator_optimizer.load_state_dict(checkpoint["discriminator_optimizer"])
    state.step = int(checkpoint["step"])
    rng_states = checkpoint["rng_states"]
    if len(rng_states) == world_size:
        state.batch_rng.set_state(rng_states[rank]["batch"])
        state.noise_rng.set_state(rng_states[rank]["noise"].to(state.noise_rng.device))
    else:
        logger.warning(
            "checkpoint was written by %d process(es), this run has %d: random streams are "
            "reseeded, so the run will not match an uninterrupted one",
            len(rng_states), world_size,
        )
        state.batch_rng.manual_seed(state.step * 1000 + rank + 1)
        state.noise_rng.manual_seed(state.step * 1000 + rank + 2)


def load_resumable_checkpoint(
    path: Path, *, config: GanConfig, classes: Sequence[str], fingerprint: str
) -> dict[str, Any] | None:
    """Return the checkpoint at ``path`` if it continues this run's data and settings, else None.

    A checkpoint for other data, classes, training settings or training code is not resumed:
    training starts from step 0 and overwrites it at the first save.
    """
    if not path.is_file():
        return None
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    saved_config = GanConfig.from_params(checkpoint["config"])
    reasons = []
    if checkpoint["fingerprint"] != fingerprint:
        reasons.append("the training images differ")
    if list(checkpoint["classes"]) != list(classes):
        reasons.append("the class list differs")
    if checkpoint.get("code") != training_code_digest():
        # dvc repro reruns gan_train after a code change; resuming would keep the old generator.
        reasons.append("the training code changed")
    # A setting absent from an older checkpoint counts as changed: the run that wrote it did
    # not use the setting, whatever its default is now.
    changed = sorted(
        key for key, value in config.training_settings().items()
        if key not in checkpoint["config"] or saved_config.training_settings()[key] != value
    )
    if changed:
        reasons.append(f"settings changed: {', '.join(changed)}")
    if reasons:
        logger.warning("not resuming from %s (%s); training starts at step 0", path,
                       "; ".join(reasons))
        return None
    return checkpoint


def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    with torch.no_grad():
        for ema_param, param in zip(ema.parameters(), model.parameters(), strict=True):
            ema_param.lerp_(param, 1.0 - decay)
        for ema_buffer, buffer in zip(ema.buffers(), model.buffers(), strict=True):
            ema_buffer.copy_(buffer)


def average_gradients(module: nn.Module, world_size: int) -> None:
    """All-reduce and average the gradients of ``module`` across data-parallel processes."""
    if world_size == 1:
        return
    for param in module.parameters():
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        torch.distributed.all_reduce(param.grad)
        param.grad /= world_size


def sample_batch(
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    *,
    xflip: bool,
    rng: torch.Generator,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw a batch with replacement and scale it to [-1, 1]. ``xflip`` mirrors half the images.

    NOTE: mirroring is data augmentation, not DiffAugment, so the generator learns to produce
    mirrored lesions too. That suits clinical photographs, which have no preferred side.
    """
    indices = torch.randint(0, images.shape[0], (batch_size,), generator=rng)
    batch = images[indices].to(device=device, dtype=torch.float32) / 127.5 - 1.0
    if xflip:
        flip = (torch.rand(batch_size, generator=rng) < 0.5).to(device)
        batch = torch.where(flip.view(-1, 1, 1, 1), batch.flip(3), batch)
    return batch, labels[indices].to(device)


def training_step(
    state: TrainingState,
    real: torch.Tensor,
    real_labels: torch.Tensor,
    config: GanConfig,
    *,
    world_size: int = 1,
) -> dict[str, float]:
    """Run one discriminator and one generator update; return the losses of this step.

    ``r1_penalty`` is present only on the steps that apply it.
    """
    device = real.device
    batch_size = real.shape[0]
    generator, discriminator = state.generator, state.discriminator
    rng = state.noise_rng
    # NOTE: the bfloat16 autocast path has not been run on a GPU by the tests, which use the CPU.
    use_amp = config.amp and device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp)

    def augment(images: torch.Tensor) -> torch.Tensor:
        return diff_augment(images, config.diffaugment, generator=rng)

    # Discriminator update; fakes are conditioned on the real batch's labels, so every class
    # is seen by the discriminator in proportion to its training images.
    z = torch.randn(batch_size, config.latent_dim, generator=rng, device=device)
    with autocast:
        with torch.no_grad():
            fake = generator(z, real_labels)
        real_logits = discriminator(augment(real), real_labels)
        fake_logits = discriminator(augment(fake), real_labels)
        discriminator_loss = F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()
    state.discriminator_optimizer.zero_grad(set_to_none=True)
    discriminator_loss.backward()
    r1_penalty = None
    if config.r1_gamma > 0 and state.step % config.r1_interval == 0:
        # R1 is taken on the augmented reals, so the augmentation needs no double backward.
        augmented_real = augment(real).detach().requires_grad_(True)
        logits = discriminator(augmented_real, real_labels)
        (gradient,) = torch.autograd.grad(logits.sum(), augmented_real, create_graph=True)
        r1_penalty = gradient.pow(2).sum(dim=(1, 2, 3)).mean()
        (r1_penalty * (config.r1_gamma / 2) * config.r1_interval).backward()
    average_gradients(discriminator, world_size)
    state.discriminator_optimizer.step()

    # Generator update. With the mode-seeking term on, the second half of the batch repeats the
    # first half's labels, so each pair (i, i + half) differs only in its noise.
    z = torch.randn(batch_size, config.latent_dim, generator=rng, device=device)
    half = batch_size // 2 if config.mode_seeking_weight > 0 else 0
    generator_labels = real_labels.clone()
    generator_labels[half:2 * half] = real_labels[:half]
    discriminator.requires_grad_(False)
    with autocast:
        fake = generator(z, generator_labels)
        adversarial_loss = F.softplus(-discriminator(augment(fake), generator_labels)).mean()
    generator_loss = adversarial_loss
    if config.mode_seeking_weight > 0 and half > 0:
        generator_loss = generator_loss + config.mode_seeking_weight * mode_seeking_penalty(
            fake[:half].float(), fake[half:2 * half].float(), z[:half], z[half:2 * half]
        )
    state.generator_optimizer.zero_grad(set_to_none=True)
    generator_loss.backward()
    discriminator.requires_grad_(True)
    average_gradients(generator, world_size)
    state.generator_optimizer.step()

    # The EMA decay ramps up from 0.1, so the early EMA follows the fast-changing generator.
    decay = min(config.ema_decay, (1 + state.step) / (10 + state.step))
    update_ema(state.generator_ema, generator, decay)
    state.step += 1
    losses = {
        "discriminator_loss": float(discriminator_loss.detach()),
        "generator_loss": float(adversarial_loss.detach()),
        "real_logit": float(real_logits.detach().float().mean()),
        "fake_logit": float(fake_logits.detach().float().mean()),
    }
    if r1_penalty is not None:
        losses["r1_penalty"] = float(r1_penalty.detach())
    return losses


def mode_seeking_penalty(
    images_a: torch.Tensor, images_b: torch.Tensor, z_a: torch.Tensor, z_b: torch.Tensor
) -> torch.Tensor:
    """Return the mode-seeking penalty 1 / (mean |G(z_a) - G(z_b)| / mean |z_a - z_b| + 1e-5).

    From MSGAN (Mao et al., "Mode Seeking Generative Adversarial Networks for Diverse Image
    Synthesis", 2019): the penalty grows when two noise vectors of one class give similar
    images, which counters mode collapse.
    """
    image_distance = (images_a - images_b).abs().mean(dim=(1, 2, 3))
    noise_distance = (z_a - z_b).abs().mean(dim=1)
    return 1.0 / ((image_distance / noise_distance).mean() + 1e-5)


def gather_rng_states(state: TrainingState, world_size: int) -> list[dict[str, torch.Tensor]]:
    if world_size == 1:
        return [rng_snapshot(state)]
    gathered: list[Any] = [None] * world_size
    torch.distributed.all_gather_object(gathered, rng_snapshot(state))
    return gathered


def train_gan(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    classes: Sequence[str],
    config: GanConfig,
    output_dir: str | os.PathLike[str],
) -> dict[str, Any]:
    """Train (or resume training) the GAN and write checkpoint and generator to ``output_dir``.

    ``images`` is uint8 (N, 3, R, R) with R = ``config.resolution``; ``labels`` index
    ``classes``. A checkpoint in ``output_dir`` made with the same data and training settings
    is resumed; a run already at ``config.iterations`` only rewrites the generator file.
    Returns a summary with the final step and the last logged losses.
    """
    if images.shape[1:] != (3, config.resolution, config.resolution):
        raise ValueError(
            f"images have shape {tuple(images.shape[1:])}, expected "
            f"(3, {config.resolution}, {config.resolution})"
        )
    if images.shape[0] == 0:
        raise ValueError("no training images: the training list has no train rows")
    output_dir = Path(output_dir)
    checkpoint_path = output_dir / CHECKPOINT_NAME
    context = init_distributed(config.device)
    rank, world_size, device = context.rank, context.world_size, context.device
    if config.batch_size % world_size:
        raise ValueError(
            f"gan.batch_size {config.batch_size} is not divisible by the {world_size} processes"
        )
    fingerprint = data_fingerprint(images, labels)
    state = build_state(config, len(classes), device, rank)
    checkpoint = load_resumable_checkpoint(
        checkpoint_path, config=config, classes=classes, fingerprint=fingerprint
    )
    if checkpoint is not None:
        restore_checkpoint(state, checkpoint, rank, world_size)
        logger.info("resuming GAN training from %s at step %d", checkpoint_path, state.step)
    if state.step > config.iterations:
        logger.warning(
            "checkpoint is at step %d, beyond gan.iterations %d; keeping its weights",
            state.step, config.iterations,
        )

    def save() -> None:
        rng_states = gather_rng_states(state, world_size)
        if rank == 0:
            save_checkpoint(state, checkpoint_path, config=config, classes=classes,
                            fingerprint=fingerprint, rng_states=rng_states)
            logger.info("saved checkpoint %s at step %d", checkpoint_path, state.step)

    logger.info(
        "training GAN on %d images of %d classes at %dx%d on %s (%d process(es)), steps %d to %d",
        images.shape[0], len(classes), config.resolution, config.resolution, device, world_size,
        state.step, config.iterations,
    )
    start_step = state.step
    losses: dict[str, float] = {}
    window: dict[str, list[float]] = {}
    progress = tqdm(total=config.iterations, initial=min(state.step, config.iterations),
                    desc="gan", disable=None if rank == 0 else True)
    try:
        while state.step < config.iterations:
            real, real_labels = sample_batch(
                images, labels, config.batch_size // world_size,
                xflip=config.xflip, rng=state.batch_rng, device=device,
            )
            losses = training_step(state, real, real_labels, config, world_size=world_size)
            progress.update(1)
            if not all(math.isfinite(value) for value in losses.values()):
                raise FloatingPointError(
                    f"GAN losses became non-finite at step {state.step}: {losses}; lower "
                    "gan.generator_lr / gan.discriminator_lr or raise gan.r1_gamma"
                )
            for key, value in losses.items():
                window.setdefault(key, []).append(value)
            if state.step % config.log_every == 0 and rank == 0:
                logger.info("step %d, mean of the last %d steps: %s", state.step,
                            len(window["generator_loss"]),
                            ", ".join(f"{key} {np.mean(values):.3f}"
                                      for key, values in window.items()))
                window.clear()
            if state.step % config.checkpoint_every == 0 and state.step < config.iterations:
                save()
    except KeyboardInterrupt:
        if world_size == 1:
            save()
        raise
    finally:
        progress.close()

    if state.step > start_step:
        save()
    if rank == 0:
        export_generator(state.generator_ema, output_dir / GENERATOR_NAME, config=config,
                         classes=classes, step=state.step)
    shutdown_distributed(context)
    return {"step": state.step, "images": int(images.shape[0]), "losses": losses}


def export_generator(
    generator: Generator,
    path: Path,
    *,
    config: GanConfig,
    classes: Sequence[str],
    step: int,
) -> None:
    """Write the (EMA) generator with what is needed to rebuild it, atomically."""
    payload = {
        "state_dict": generator.state_dict(),
        "classes": list(classes),
        "resolution": config.resolution,
        "latent_dim": config.latent_dim,
        "width": config.generator_width,
        "max_channels": config.max_channels,
        "step": step,
        "config": dataclasses.asdict(config),
    }
    atomic_io.write_torch(path, payload)
    logger.info("wrote generator %s (step %d)", path, step)


def load_generator(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[Generator, dict[str, Any]]:
    """Load a generator written by :func:`export_generator`; return it in eval mode and its
    metadata (classes, resolution, latent_dim, step)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"generator {path} not found: run the gan_train stage first")
    payload = torch.load(path, map_location="cpu", weights_only=False)
    generator = Generator(
        num_classes=len(payload["classes"]),
        resolution=payload["resolution"],
        latent_dim=payload["latent_dim"],
        width=payload["width"],
        max_channels=payload["max_channels"],
    )
    generator.load_state_dict(payload["state_dict"])
    metadata = {key: value for key, value in payload.items() if key != "state_dict"}
    return generator.to(device).eval(), metadata
