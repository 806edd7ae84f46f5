"""Train a classifier on one training set: ``python src/stages/train.py SET``.

SET names an entry of ``train.sets`` in params.yaml. Writes ``models/SET/model.pt`` and the
dvclive log ``metrics/train/SET/`` (per-epoch loss, validation accuracy and macro AUROC).
Under ``torchrun --nproc-per-node N src/stages/train.py SET`` it trains with
DistributedDataParallel and only rank 0 writes files.

After every epoch it writes a checkpoint to ``.cache/train_state/SET/checkpoint.pt``. A rerun
after an interruption resumes from it when ``train.resume`` is true and the data, settings and
training code are unchanged. The checkpoint is deleted once the model is published.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from dvclive import Live

from dermcan import atomic_io, datasets, distributed, models, training, training_checkpoints
from dermcan.params import load_stage_params

log = logging.getLogger("train")

# Scratch folder for resume checkpoints: not a DVC output (see the comment in dvc.yaml).
CHECKPOINT_DIR = Path(".cache/train_state")


def training_set(params: dict[str, Any], name: str) -> dict[str, list[str]]:
    sets = params.get("sets") or {}
    if name not in sets:
        raise SystemExit(f"unknown training set {name!r}; train.sets in params.yaml defines: {', '.join(sets)}")
    return sets[name]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("set", help="training set name, a key of train.sets in params.yaml")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    params = load_stage_params("train")
    lists = training_set(params, args.set)
    config = training.TrainConfig.from_params(params)
    context = distributed.init_distributed(config.device)
    train_samples = datasets.read_training_lists(lists["train"], "train")
    val_samples = datasets.read_training_lists(lists["val"], "val")
    model_path = Path("models") / args.set / "model.pt"
    checkpoint_path = CHECKPOINT_DIR / args.set / "checkpoint.pt"
    if context.is_main:
        for folder in (model_path.parent, checkpoint_path.parent):
            atomic_io.remove_stale_temporaries(folder)

    try:
        if context.is_main:
            with Live(dir=f"metrics/train/{args.set}", save_dvc_exp=False, dvcyaml=None) as live:

                def log_epoch(record: dict[str, float | None]) -> None:
                    for key, value in record.items():
                        if value is not None and key not in ("epoch", "steps", "seconds"):
                            live.log_metric(key.replace("_", "/", 1), value)
                    live.next_step()

                result = training.train_classifier(
                    config, train_samples, val_samples, context=context, on_epoch_end=log_epoch,
                    checkpoint_path=checkpoint_path,
                )
                live.summary["selected_epoch"] = result.selected_epoch
        else:
            result = training.train_classifier(config, train_samples, val_samples, context=context, checkpoint_path=checkpoint_path)

        if context.is_main:
            models.save_classifier(
                model_path,
                result.model,
                arch=config.arch,
                classes=result.classes,
                input_size=config.input_size,
                mean=models.IMAGENET_MEAN,
                std=models.IMAGENET_STD,
                train_set=args.set,
                extra={
                    "selected_epoch": result.selected_epoch,
                    "selection": config.select,
                    "epochs": config.epochs,
                    "steps_per_epoch": result.steps_per_epoch,
                    "world_size": context.world_size,
                },
            )
            log.info("saved %s (epoch %d of %d, selection: %s)", model_path, result.selected_epoch, config.epochs, config.select)
            training_checkpoints.remove_checkpoint(checkpoint_path)
    finally:
        distributed.barrier(context)
        distributed.shutdown_distributed(context)


if __name__ == "__main__":
    main()
