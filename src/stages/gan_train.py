"""GAN training stage: a class-conditional GAN on the training crops of the CAN list.

Reads the train rows of data/split/can.csv (never validation or external images) and writes
models/cgan/checkpoint.pt (resumable) and models/cgan/generator.pt (the EMA generator).
Runs as one process, or under ``torchrun --nproc_per_node=N src/stages/gan_train.py``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from dermcan.atomic_io import read_csv, remove_stale_temporaries
from dermcan.classes import CLASSES
from dermcan.gan_training import GanConfig, load_training_images, train_gan
from dermcan.params import load_stage_params

TRAINING_LIST = Path("data/split/can.csv")
OUTPUT = Path("models/cgan")

log = logging.getLogger("gan_train")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = GanConfig.from_params(load_stage_params("gan"))
    if not TRAINING_LIST.is_file():
        raise SystemExit(f"{TRAINING_LIST} not found: run the split stage first (dvc repro split)")

    rows = [row for row in read_csv(TRAINING_LIST) if row["split"] == "train"]
    present = {row["label"] for row in rows}
    classes = [name for name in CLASSES if name in present]
    missing = [name for name in CLASSES if name not in present]
    if missing:
        log.warning("no training crops for %s: the GAN will not generate them", ", ".join(missing))
    if OUTPUT.is_dir():
        remove_stale_temporaries(OUTPUT)  # left by a run killed while writing a checkpoint
    images, labels = load_training_images(rows, classes, config.resolution)
    log.info("loaded %d training crops of %d classes from %s", len(rows), len(classes), TRAINING_LIST)

    started = time.monotonic()
    summary = train_gan(images, labels, classes=classes, config=config, output_dir=OUTPUT)
    log.info("GAN training reached step %d in %.1f s", summary["step"], time.monotonic() - started)


if __name__ == "__main__":
    main()
