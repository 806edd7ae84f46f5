"""Plot data for DVC: ROC curves (CSV with fpr/tpr), confusion rows and an error sheet (PNG).

DVC renders the CSV files with the templates named in dvc.yaml's top-level ``plots``: ROC
files with ``x: fpr, y: tpr`` and the confusion file with the ``confusion`` template over
``actual``/``predicted``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from dermcan import atomic_io, evaluation_metrics as em  # noqa: E402
from dermcan.classes import DISPLAY_NAMES  # noqa: E402

ROC_FIELDS = ("fpr", "tpr", "threshold")


def write_roc_csv(path: str | Path, y_true: np.ndarray, scores: np.ndarray) -> bool:
    """Write the ROC curve of ``scores`` to ``path``; return False (no file) when it is undefined."""
    y_true = np.asarray(y_true, dtype=bool)
    if y_true.all() or not y_true.any():
        return False
    fpr, tpr, thresholds = em.roc_points(y_true, scores)
    rows = [
        # The first threshold is +inf (nothing called positive); CSV gets an empty cell for it.
        {"fpr": round(float(f), 6), "tpr": round(float(t), 6), "threshold": "" if math.isinf(h) else round(float(h), 6)}
        for f, t, h in zip(fpr, tpr, thresholds)
    ]
    atomic_io.write_csv(path, rows, ROC_FIELDS)
    return True


def write_class_rocs(folder: str | Path, targets: np.ndarray, probabilities: np.ndarray, model_classes: Sequence[str]) -> list[str]:
    """Write one one-vs-rest ROC CSV per class as ``folder/<class>.csv``; return the classes written."""
    written = []
    for column, name in enumerate(model_classes):
        if write_roc_csv(Path(folder) / f"{name}.csv", np.asarray(targets) == column, probabilities[:, column]):
            written.append(name)
    return written


def write_confusion_csv(path: str | Path, actual: Sequence[str], predicted: Sequence[str]) -> None:
    """Write one ``actual,predicted`` row per image, the input of DVC's confusion template."""
    rows = [{"actual": a, "predicted": p} for a, p in zip(actual, predicted)]
    atomic_io.write_csv(path, rows, ("actual", "predicted"))


def most_confident_errors(
    true_labels: Sequence[str], probabilities: np.ndarray, model_classes: Sequence[str], count: int
) -> list[tuple[int, str, float]]:
    """Return ``(image index, predicted class, its probability)`` of the ``count`` most confident errors."""
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    wrong = [i for i, label in enumerate(true_labels) if model_classes[predicted[i]] != label]
    wrong.sort(key=lambda i: (-confidence[i], i))
    return [(i, model_classes[predicted[i]], float(confidence[i])) for i in wrong[:count]]


def write_error_sheet(
    path: str | Path,
    image_paths: Sequence[Path],
    true_labels: Sequence[str],
    errors: Sequence[tuple[int, str, float]],
    title: str,
    columns: int = 4,
) -> None:
    """Draw the images of ``errors`` in a grid, each captioned with its true and predicted class."""
    rows = max(1, math.ceil(len(errors) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 2.6, rows * 2.9), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, (index, predicted, confidence) in zip(axes.flat, errors):
        with Image.open(image_paths[index]) as image:
            image.thumbnail((256, 256))
            axis.imshow(np.asarray(image.convert("RGB")))
        true_name = DISPLAY_NAMES.get(true_labels[index], true_labels[index])
        predicted_name = DISPLAY_NAMES.get(predicted, predicted)
        axis.set_title(f"true: {true_name}\npred: {predicted_name} ({confidence:.2f})", fontsize=7)
    if not errors:
        axes.flat[0].text(0.5, 0.5, "no errors", ha="center", va="center")
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    with atomic_io.atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100)
    plt.close(figure)
