"""Classifier construction, saving and loading.

A classifier is any torchvision classification model (``torchvision.models.list_models``) with
its head sized for the project's classes. Pretrained weights come from a torchvision weights
name (``IMAGENET1K_V1``, downloaded into the torch hub cache) or from a local ``state_dict``
file. Pretrained tensors whose shape does not fit (the ImageNet head) keep their initial values.

A saved model (``models/SET/model.pt``) is a ``torch.save`` dict with ``arch``, ``state_dict``,
``classes``, ``input_size``, ``mean``, ``std`` and ``train_set``; :func:`load_classifier`
rebuilds the model from that file alone.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torchvision

from dermcan import atomic_io

log = logging.getLogger(__name__)

# ImageNet channel statistics, the normalisation torchvision's pretrained weights expect.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

REQUIRED_KEYS: tuple[str, ...] = ("arch", "state_dict", "classes", "input_size", "mean", "std")


def classification_architectures() -> list[str]:
    """Return the names of torchvision's image classification models, sorted."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def check_architecture(arch: str) -> str:
    """Return ``arch`` if torchvision has a classification model of that name, else raise."""
    valid = classification_architectures()
    if arch not in valid:
        matches = difflib.get_close_matches(arch, valid, n=3) if isinstance(arch, str) else []
        suggestion = f" Did you mean {' or '.join(matches)}?" if matches else ""
        raise ValueError(
            f"unknown model {arch!r}.{suggestion} Valid names are the image classification models of "
            f"torchvision {torchvision.__version__}, from torchvision.models.list_models(module=torchvision.models): "
            f"{', '.join(valid)}"
        )
    return arch


def _pretrained_state_dict(arch: str, weights: str) -> Mapping[str, torch.Tensor]:
    """Return the state_dict named by ``weights``: a file path or a torchvision weights name."""
    looks_like_path = os.sep in weights or weights.endswith((".pt", ".pth", ".bin"))
    if looks_like_path or Path(weights).exists():
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(
                f"pretrained weights file {path} not found: set train.model.weights to an existing "
                "state_dict file, a torchvision weights name such as IMAGENET1K_V1, or null"
            )
        loaded = torch.load(path, map_location="cpu", weights_only=True)
        # Accept a saved dermcan model as well as a bare state_dict.
        if isinstance(loaded, dict) and "state_dict" in loaded and "arch" in loaded:
            loaded = loaded["state_dict"]
        log.info("loading pretrained weights for %s from %s", arch, path)
        return loaded

    enum = torchvision.models.get_model_weights(arch)
    names = [member.name for member in enum]
    if weights not in names:
        raise ValueError(
            f"unknown weights {weights!r} for {arch}; valid names are: {', '.join(names)} "
            "(or give the path of a local state_dict file)"
        )
    log.info("loading torchvision weights %s.%s", enum.__name__, weights)
    return enum[weights].get_state_dict(progress=False)


def build_classifier(arch: str, num_classes: int, weights: str | None = None) -> torch.nn.Module:
    """Build torchvision model ``arch`` with ``num_classes`` outputs.

    ``weights`` is None (random initialisation), a torchvision weights name or a path to a
    state_dict. Pretrained tensors whose shape differs from the new model's (the classification
    head) are skipped and logged. Raises ``ValueError`` for an unknown architecture or weights
    name and ``FileNotFoundError`` for a missing weights file.
    """
    check_architecture(arch)
    if num_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
    model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    if weights:
        pretrained = _pretrained_state_dict(arch, weights)
        own = model.state_dict()
        fitting = {k: v for k, v in pretrained.items() if k in own and own[k].shape == v.shape}
        skipped = sorted(set(pretrained) - set(fitting))
        missing = sorted(set(own) - set(fitting))
        model.load_state_dict(fitting, strict=False)
        log.info(
            "pretrained weights: %d tensors loaded, %d skipped (%s), %d left at initial values",
            len(fitting), len(skipped), ", ".join(skipped[:4]), len(missing),
        )
        if len(fitting) < len(own) // 2:
            raise ValueError(
                f"weights {weights!r} fit only {len(fitting)} of {len(own)} tensors of {arch}: "
                "they are probably for another architecture"
            )
    return model


def save_classifier(
    path: str | os.PathLike[str],
    model: torch.nn.Module,
    *,
    arch: str,
    classes: list[str],
    input_size: int,
    mean: tuple[float, ...] | list[float],
    std: tuple[float, ...] | list[float],
    train_set: str,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write ``model`` and its metadata atomically to ``path`` (the format in the module doc)."""
    state_dict = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    checkpoint: dict[str, Any] = {
        "arch": arch,
        "state_dict": state_dict,
        "classes": list(classes),
        "input_size": int(input_size),
        "mean": [float(x) for x in mean],
        "std": [float(x) for x in std],
        "train_set": train_set,
    }
    if extra:
        checkpoint.update(extra)
    atomic_io.write_torch(path, checkpoint)


def load_classifier(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Load a model saved by :func:`save_classifier`.

    Returns the model in eval mode and the metadata dict (every key but ``state_dict``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} not found: run the train stage first")
    checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    missing = [key for key in REQUIRED_KEYS if key not in checkpoint]
    if missing:
        raise ValueError(f"{path} is not a dermcan model: keys {', '.join(missing)} are missing")
    model = build_classifier(checkpoint["arch"], len(checkpoint["classes"]), weights=None)
    model.load_state_dict(checkpoint["state_dict"])
    model.to(map_location)
    model.eval()
    metadata = {key: value for key, value in checkpoint.items() if key != "state_dict"}
    return model, metadata
