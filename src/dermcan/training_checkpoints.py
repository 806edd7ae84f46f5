"""Per-epoch checkpoints that let an interrupted classifier training resume.

:func:`save_checkpoint` writes, atomically, everything the next epoch depends on: the model,
optimiser and LR scheduler states, the epoch, the best validation score with its weights, the
history of epoch metrics (which the train stage replays into dvclive), and the RNG states of
Python, numpy, torch (CPU and CUDA) and the training DataLoader's generator, of every rank.

:func:`load_resumable_checkpoint` accepts a checkpoint only when it was written for the same
training data (a hash of the decoded images and their labels), the same settings, the same
number of processes and the same training code. Otherwise training restarts at epoch 1.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dermcan import atomic_io

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1

# TrainConfig fields that do not change what an epoch computes, so a checkpoint stays resumable
# when only they differ. NOTE: only with num_workers 0 does a resumed run reproduce the weights
# of an uninterrupted one. With DataLoader workers the augmentations draw from the workers' RNGs,
# which persist across epochs and are seeded afresh when a resumed run starts its workers.
RESUMABLE_SETTINGS = frozenset({"resume", "num_workers", "device", "cache_dir"})


def source_digest(paths: Sequence[str | os.PathLike[str]]) -> str:
    """Return a SHA-256 over the bytes of the source files ``paths``, in the order given.

    A resume checkpoint records it for the modules that define training. After a code change,
    ``dvc repro`` reruns the stage, and resuming the old run would keep the old weights.
    """
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def training_fingerprint(
    config: Any,
    samples: Mapping[str, Sequence[tuple[str, int]]],
    classes: Sequence[str],
    images: Any,
    world_size: int,
) -> str:
    """Return a hash of the training settings and code, classes, process count and the decoded images.

    ``samples`` maps "train" and "val" to ``(path, class index)`` lists. ``images`` is an
    :class:`dermcan.datasets.ImageCache` already holding every path, so hashing the pixels costs
    no further decoding.
    """
    settings = {key: value for key, value in dataclasses.asdict(config).items() if key not in RESUMABLE_SETTINGS}
    digest = hashlib.sha256()
    digest.update(repr(sorted(settings.items())).encode("utf-8"))
    digest.update(repr((list(classes), world_size)).encode("utf-8"))
    digest.update(source_digest(_training_sources()).encode("ascii"))
    for role in sorted(samples):
        for path, target in samples[role]:
            digest.update(f"{role}|{path}|{target}|".encode("utf-8"))
            digest.update(np.ascontiguousarray(images.get(path)).tobytes())
    return digest.hexdigest()


def rng_snapshot(loader_generator: torch.Generator) -> dict[str, Any]:
    """Return this process's RNG states, with the training DataLoader's generator."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "loader": loader_generator.get_state(),
    }


def restore_rng(snapshot: Mapping[str, Any], loader_generator: torch.Generator) -> None:
    random.setstate(snapshot["python"])
    np.random.set_state(snapshot["numpy"])
    torch.set_rng_state(snapshot["torch"])
    if snapshot["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(snapshot["cuda"])
    loader_generator.set_state(snapshot["loader"])


def save_checkpoint(path: str | os.PathLike[str], state: Mapping[str, Any]) -> None:
    """Write ``state`` (see the module docstring) to ``path`` atomically."""
    atomic_io.write_torch(path, {"version": CHECKPOINT_VERSION, **state})


def load_resumable_checkpoint(path: str | os.PathLike[str], *, fingerprint: str) -> dict[str, Any] | None:
    """Return the checkpoint at ``path`` if it continues a run with ``fingerprint``, else None.

    A missing file returns None silently. An unreadable one, or one for other data, settings
    or training code, returns None with a log line that says why training starts at epoch 1.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError, ValueError) as error:
        log.warning("ignoring the unreadable checkpoint %s (%s); training starts at epoch 1", path, error)
        return None
    if not isinstance(checkpoint, dict) or checkpoint.get("version") != CHECKPOINT_VERSION:
        log.info("checkpoint %s has another format; training starts at epoch 1", path)
        return None
    if checkpoint.get("fingerprint") != fingerprint:
        log.info("checkpoint %s was made with other data, settings or training code; training starts at epoch 1", path)
        return None
    return checkpoint


def remove_checkpoint(path: str | os.PathLike[str]) -> None:
    """Delete the checkpoint once the model it led to is published."""
    Path(path).unlink(missing_ok=True)


def _training_sources() -> list[Path]:
    # By path rather than by import, because dermcan.training imports this module.
    package = Path(__file__).parent
    return [package / name for name in ("training.py", "models.py", "datasets.py")]
