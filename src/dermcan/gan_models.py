"""Class-conditional GAN networks and differentiable augmentation (DiffAugment).

Images are float tensors of shape (N, 3, H, W) in [-1, 1], H = W = a power of two >= 8.
Class labels are integer indices into the class list stored with the model.

The generator is a DCGAN-style stack of upsampling blocks. Each block normalises features per
pixel (PixelNorm, as in ProGAN) and then applies a class-conditional gain and bias. No layer
keeps batch statistics, so a sample depends only on its own noise vector and label, and the
training and evaluation modes give the same output. The discriminator is a plain convolutional
stack with a projection head (Miyato and Koyama, "cGANs with Projection Discriminator", 2018).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

DIFFAUGMENT_OPERATIONS: tuple[str, ...] = ("color", "translation", "cutout")


def channels_per_level(resolution: int, width: int, max_channels: int) -> list[int]:
    """Return the channel count of each level from 4x4 up to ``resolution`` (coarse first).

    The finest level has ``width`` channels and each coarser level doubles it, up to
    ``max_channels``.
    """
    check_resolution(resolution)
    levels = int(math.log2(resolution)) - 1  # 4x4, 8x8, ..., resolution
    return [min(width * 2 ** (levels - 1 - level), max_channels) for level in range(levels)]


def check_resolution(resolution: int) -> int:
    if resolution < 8 or resolution & (resolution - 1):
        raise ValueError(f"GAN resolution must be a power of two >= 8, got {resolution}")
    return resolution


class PixelNorm(nn.Module):
    """Scale each pixel's feature vector to unit root mean square."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class ConditionalGainBias(nn.Module):
    """Per-channel gain and bias predicted from a style vector s: ``x * (1 + g(s)) + b(s)``."""

    def __init__(self, embedding_dim: int, channels: int) -> None:
        super().__init__()
        self.affine = nn.Linear(embedding_dim, 2 * channels)
        nn.init.normal_(self.affine.weight, std=0.1 / embedding_dim**0.5)
        nn.init.zeros_(self.affine.bias)

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        gain, bias = self.affine(embedding).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
        return x * (1 + gain) + bias


class GeneratorBlock(nn.Module):
    """Double the resolution with a 4x4 transposed convolution (as in DCGAN)."""

    def __init__(self, in_channels: int, out_channels: int, embedding_dim: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1)
        self.norm = PixelNorm()
        self.condition = ConditionalGainBias(embedding_dim, out_channels)

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.condition(self.norm(self.conv(x)), embedding), 0.2)


class Generator(nn.Module):
    """Map a noise vector ``z`` (N, latent_dim) and class labels (N,) to images in [-1, 1]."""

    def __init__(
        self,
        *,
        num_classes: int,
        resolution: int = 64,
        latent_dim: int = 64,
        width: int = 32,
        max_channels: int = 256,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.resolution = resolution
        self.latent_dim = latent_dim
        channels = channels_per_level(resolution, width, max_channels)
        embedding_dim = latent_dim
        self.class_embedding = nn.Embedding(num_classes, embedding_dim)
        # A small mapping network turns noise and class into one style vector that sets the
        # gain and bias of every layer, so the noise acts at every resolution (as in StyleGAN).
        self.mapping = nn.Sequential(
            nn.Linear(latent_dim + embedding_dim, embedding_dim), nn.LeakyReLU(0.2),
            nn.Linear(embedding_dim, embedding_dim), nn.LeakyReLU(0.2),
        )
        self.initial = nn.Linear(latent_dim + embedding_dim, channels[0] * 16)
        self.initial_channels = channels[0]
        self.norm = PixelNorm()
        self.initial_condition = ConditionalGainBias(embedding_dim, channels[0])
        self.blocks = nn.ModuleList(
            GeneratorBlock(channels[i], channels[i + 1], embedding_dim)
            for i in range(len(channels) - 1)
        )
        self.to_rgb = nn.Conv2d(channels[-1], 3, 1)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        noise_and_class = torch.cat(
            [self.norm(z.unsqueeze(-1)).squeeze(-1), self.class_embedding(labels)], dim=1
        )
        style = self.mapping(noise_and_class)
        x = self.initial(noise_and_class).view(-1, self.initial_channels, 4, 4)
        x = F.leaky_relu(self.initial_condition(self.norm(x), style), 0.2)
        for block in self.blocks:
            x = block(x, style)
        return torch.tanh(self.to_rgb(x))


class DiscriminatorBlock(nn.Module):
    """Halve the resolution with a 4x4 strided convolution (as in DCGAN)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 4, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.conv(x), 0.2)


def minibatch_stddev(x: torch.Tensor, group_size: int = 4) -> torch.Tensor:
    """Append one channel with the feature standard deviation across a group of samples.

    The minibatch standard deviation layer of ProGAN (Karras et al., 2018): a discriminator
    that sees how much a group of images varies can penalise a generator that ignores its
    noise vector (mode collapse). Groups are samples ``i, i + N/G, ...``, and a batch that
    ``group_size`` does not divide uses the whole batch as one group.
    """
    n, _, height, width = x.shape
    group = min(group_size, n)
    if n % group:
        group = n
    grouped = x.reshape(group, n // group, *x.shape[1:]).float()
    stddev = (grouped.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))
    channel = stddev.repeat(group).view(n, 1, 1, 1).expand(n, 1, height, width)
    return torch.cat([x, channel.to(x.dtype)], dim=1)


class Discriminator(nn.Module):
    """Return one realness logit per image; the class enters through a projection term."""

    def __init__(
        self,
        *,
        num_classes: int,
        resolution: int = 64,
        width: int = 32,
        max_channels: int = 256,
    ) -> None:
        super().__init__()
        channels = channels_per_level(resolution, width, max_channels)[::-1]  # fine to coarse
        self.from_rgb = nn.Conv2d(3, channels[0], 1)
        self.blocks = nn.Sequential(
            *(DiscriminatorBlock(channels[i], channels[i + 1]) for i in range(len(channels) - 1))
        )
        self.final_conv = nn.Conv2d(channels[-1] + 1, channels[-1], 3, padding=1)
        self.output = nn.Linear(channels[-1], 1)
        self.class_projection = nn.Embedding(num_classes, channels[-1])
        nn.init.normal_(self.class_projection.weight, std=0.02)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.from_rgb(images), 0.2)
        x = minibatch_stddev(self.blocks(x))
        x = F.leaky_relu(self.final_conv(x), 0.2)
        features = x.sum(dim=(2, 3))
        projection = (self.class_projection(labels) * features).sum(dim=1)
        return self.output(features).squeeze(1) + projection


def check_diffaugment_policy(policy: Sequence[str]) -> list[str]:
    unknown = [name for name in policy if name not in DIFFAUGMENT_OPERATIONS]
    if unknown:
        raise ValueError(
            f"unknown DiffAugment operation(s) {unknown}; valid ones are "
            f"{', '.join(DIFFAUGMENT_OPERATIONS)}"
        )
    return list(policy)


def diff_augment(
    images: torch.Tensor, policy: Sequence[str], generator: torch.Generator | None = None
) -> torch.Tensor:
    """Apply DiffAugment (Zhao et al., "Differentiable Augmentation for Data-Efficient GAN
    Training", 2020) to a batch in [-1, 1], drawing fresh random parameters per image.

    Every operation is differentiable in ``images``, so the generator trains through it. The
    training loop applies it to real and generated images alike, only on their way into the
    discriminator. ``generator`` makes the draws reproducible.
    """
    for name in policy:
        if name == "color":
            images = _random_color(images, generator)
        elif name == "translation":
            images = _random_translation(images, generator)
        elif name == "cutout":
            images = _random_cutout(images, generator)
        else:
            check_diffaugment_policy([name])
    return images


def _uniform(shape: tuple[int, ...], images: torch.Tensor, generator: torch.Generator | None):
    return torch.rand(shape, generator=generator, device=images.device, dtype=images.dtype)


def _random_color(images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    n = images.shape[0]
    brightness = _uniform((n, 1, 1, 1), images, generator) - 0.5  # shift in [-0.5, 0.5)
    images = images + brightness
    mean = images.mean(dim=1, keepdim=True)
    saturation = _uniform((n, 1, 1, 1), images, generator) * 2  # factor in [0, 2)
    images = (images - mean) * saturation + mean
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    contrast = _uniform((n, 1, 1, 1), images, generator) + 0.5  # factor in [0.5, 1.5)
    return (images - mean) * contrast + mean


def _random_translation(
    images: torch.Tensor, generator: torch.Generator | None, ratio: float = 0.125
) -> torch.Tensor:
    """Shift each image by up to ``ratio`` of its size, filling the uncovered border with zeros."""
    n, _, height, width = images.shape
    max_dy, max_dx = int(height * ratio + 0.5), int(width * ratio + 0.5)
    device = images.device
    dy = torch.randint(-max_dy, max_dy + 1, (n, 1, 1), generator=generator, device=device)
    dx = torch.randint(-max_dx, max_dx + 1, (n, 1, 1), generator=generator, device=device)
    rows = torch.arange(height, device=device).view(1, height, 1)
    cols = torch.arange(width, device=device).view(1, 1, width)
    # Index into an image padded by one zero pixel on each side: clamping a source coordinate
    # onto the pad reads zeros, so pixels shifted in from outside the image are black.
    source_rows = (rows - dy + 1).clamp(0, height + 1).expand(n, height, width)
    source_cols = (cols - dx + 1).clamp(0, width + 1).expand(n, height, width)
    padded = F.pad(images, [1, 1, 1, 1]).permute(0, 2, 3, 1)
    batch = torch.arange(n, device=device).view(n, 1, 1).expand(n, height, width)
    return padded[batch, source_rows, source_cols].permute(0, 3, 1, 2)


def _random_cutout(
    images: torch.Tensor, generator: torch.Generator | None, ratio: float = 0.5
) -> torch.Tensor:
    """Zero one square of side ``ratio`` times the image size at a random place in each image."""
    n, _, height, width = images.shape
    cut_h, cut_w = int(height * ratio + 0.5), int(width * ratio + 0.5)
    device = images.device
    top = torch.randint(0, height - cut_h + 1, (n, 1, 1), generator=generator, device=device)
    left = torch.randint(0, width - cut_w + 1, (n, 1, 1), generator=generator, device=device)
    rows = torch.arange(height, device=device).view(1, height, 1)
    cols = torch.arange(width, device=device).view(1, 1, width)
    inside = (rows >= top) & (rows < top + cut_h) & (cols >= left) & (cols < left + cut_w)
    return images * (~inside).unsqueeze(1).to(images.dtype)
