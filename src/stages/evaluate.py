"""Validate one trained model on every external test set: ``python src/stages/evaluate.py SET``.

Reads ``models/SET/model.pt`` and the sets in ``evaluate.externals``; writes
``metrics/evaluate/SET.json`` and, per test set NAME, ``plots/evaluate/SET/NAME/``
(``roc_malignancy.csv``, ``roc_melanoma_vs_nevus.csv``, ``roc_classes/<class>.csv``,
``confusion.csv``, ``errors.png``).
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from dermcan import atomic_io, evaluation, evaluation_plots, models
from dermcan.classes import MALIGNANT, check_class_name
from dermcan.params import load_stage_params

log = logging.getLogger("evaluate")


def write_plots(folder: Path, external: evaluation.ExternalSet, probabilities: np.ndarray, metadata: dict[str, Any],
                malignant: list[str], top_errors: int) -> None:
    classes = list(metadata["classes"])
    paths = [p for p, _ in external.samples]
    labels = [label for _, label in external.samples]
    targets = np.array([classes.index(label) if label in classes else -1 for label in labels])

    is_malignant = np.isin(labels, malignant)
    evaluation_plots.write_roc_csv(folder / "roc_malignancy.csv", is_malignant, evaluation.malignancy_scores(probabilities, classes, malignant))
    if evaluation.MELANOMA in classes and evaluation.NEVUS in classes:
        rows = np.isin(labels, [evaluation.MELANOMA, evaluation.NEVUS])
        evaluation_plots.write_roc_csv(
            folder / "roc_melanoma_vs_nevus.csv",
            np.asarray(labels)[rows] == evaluation.MELANOMA,
            evaluation.melanoma_vs_nevus_scores(probabilities[rows], classes),
        )
    evaluation_plots.write_class_rocs(folder / "roc_classes", targets, probabilities, classes)
    predicted = [classes[i] for i in probabilities.argmax(axis=1)]
    evaluation_plots.write_confusion_csv(folder / "confusion.csv", labels, predicted)
    errors = evaluation_plots.most_confident_errors(labels, probabilities, classes, top_errors)
    title = f"{metadata['train_set']} on {external.name}: {len(errors)} most confident errors"
    evaluation_plots.write_error_sheet(folder / "errors.png", paths, labels, errors, title)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("set", help="training set name: evaluates models/SET/model.pt")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    params = load_stage_params("evaluate")
    malignant = [check_class_name(name) for name in (params.get("malignant") or MALIGNANT)]
    bootstrap = params.get("bootstrap", {})
    cache = params.get("cache", {})
    model, metadata = models.load_classifier(Path("models") / args.set / "model.pt")
    plots_root = Path("plots/evaluate") / args.set
    shutil.rmtree(plots_root, ignore_errors=True)

    results: dict[str, Any] = {}
    for name, spec in params["externals"].items():
        external = evaluation.load_external_set(name, spec["path"], spec.get("aliases"), spec.get("classes"))
        probabilities = evaluation.predict_images(
            model, metadata, [p for p, _ in external.samples], batch_size=int(params.get("batch_size", 64)),
            cache_margin=float(cache.get("margin", 0.15)), cache_dir=cache.get("dir"),
            num_workers=int(params.get("num_workers", 1)),
        )
        result = evaluation.evaluate_predictions(
            [label for _, label in external.samples], probabilities, metadata["classes"],
            malignant=malignant, high_sensitivity=float(params.get("high_sensitivity", 0.95)),
            iterations=int(bootstrap.get("iterations", 1000)), seed=int(params.get("seed", 0)),
        )
        result["skipped_folders"] = external.skipped_folders
        result["excluded_by_class_filter"] = external.excluded_by_class_filter
        results[name] = result
        write_plots(plots_root / name, external, probabilities, metadata, malignant, int(params.get("top_errors", 16)))
        log.info(
            "%s on %s: %d images, malignancy AUROC %s, top-1 %s",
            args.set, name, result["n_images"], result["malignancy"]["auroc"]["value"], result["top1_accuracy"]["value"],
        )

    atomic_io.write_json(Path("metrics/evaluate") / f"{args.set}.json", results)


if __name__ == "__main__":
    main()
