"""External validation: predict on ImageFolder test sets and compute the reported metrics.

A test set's folder names map to project classes through an alias map (``MEL ->
malignantmelanoma``). A folder that is neither an alias nor a class name is skipped and
reported. Classes the test set lacks get a per-class AUROC of None with a reason. Images of
classes the model lacks still count for the malignancy AUROC, and as misses for top-k accuracy.

Malignancy score: the sum of the model's probabilities for malignant classes. Melanoma versus
nevus uses only images of those two classes, scored ``P(mel) / (P(mel) + P(nev))``.
Sensitivity and specificity come at two malignancy thresholds chosen on the test set itself
(Youden's J and the highest threshold reaching a target sensitivity); their bootstrap CIs keep
the threshold fixed, so they do not include the uncertainty of choosing it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dermcan import datasets, evaluation_metrics as em
from dermcan.classes import CLASSES, MALIGNANT, check_class_name

log = logging.getLogger(__name__)

MELANOMA = "malignantmelanoma"
NEVUS = "melanocyticnevus"


@dataclasses.dataclass
class ExternalSet:
    """The images of one external test set with their project class, and what was left out."""

    name: str
    samples: list[datasets.Sample]
    skipped_folders: dict[str, int]
    excluded_by_class_filter: dict[str, int]


def load_external_set(
    name: str,
    root: str | Path,
    aliases: Mapping[str, str] | None = None,
    classes: Sequence[str] | None = None,
) -> ExternalSet:
    """Read the ImageFolder ``root`` and map its folder names to project classes.

    ``aliases`` maps folder names to class names; a folder already named like a class needs
    no alias. ``classes`` keeps only images of those classes (None keeps all). Raises
    ``ValueError`` for an alias or class filter naming an unknown class.
    """
    aliases = dict(aliases or {})
    for folder, target in aliases.items():
        try:
            check_class_name(target)
        except ValueError as error:
            raise ValueError(f"evaluate.externals.{name}.aliases[{folder!r}]: {error}") from None
    keep = set(classes) if classes else None
    for target in keep or ():
        check_class_name(target)

    if not Path(root).is_dir():
        raise FileNotFoundError(
            f"external test set {name}: folder {root} not found. Place a test set there in ImageFolder "
            f"layout (one subfolder of images per class), run `dvc repro demo_external` for the demo set "
            f"data/external/demo_shifted, or correct evaluate.externals.{name}.path in params.yaml"
        )
    samples: list[datasets.Sample] = []
    skipped: Counter[str] = Counter()
    excluded: Counter[str] = Counter()
    for path, folder in datasets.read_image_folder(root):
        label = aliases.get(folder, folder if folder in CLASSES else None)
        if label is None:
            skipped[folder] += 1
        elif keep is not None and label not in keep:
            excluded[label] += 1
        else:
            samples.append((path, label))
    for folder, count in sorted(skipped.items()):
        log.warning("%s: folder %r (%d images) matches no alias or class and is skipped", name, folder, count)
    if not samples:
        raise ValueError(f"external set {name} at {root} has no images of a known class; check its aliases")
    return ExternalSet(name, samples, dict(sorted(skipped.items())), dict(sorted(excluded.items())))


@torch.no_grad()
def predict_images(
    model: torch.nn.Module,
    metadata: Mapping[str, Any],
    paths: Sequence[Path],
    *,
    batch_size: int = 64,
    cache_margin: float = 0.15,
    cache_dir: str | None = None,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Return the softmax probabilities (images x model classes) of ``model`` on ``paths``.

    ``num_workers`` DataLoader workers decode and resize the images, one torch thread each.
    """
    input_size = int(metadata["input_size"])
    cache = datasets.ImageCache(datasets.cache_size_for(input_size, cache_margin), cache_dir)
    transform = datasets.eval_transform(input_size, metadata["mean"], metadata["std"])
    dataset = datasets.ImageDataset([(Path(p), 0) for p in paths], transform, cache)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    model = model.to(device).eval()
    outputs = []
    for images, _ in loader:
        outputs.append(torch.softmax(model(images.to(device)).float(), dim=1).cpu().numpy())
    return np.concatenate(outputs) if outputs else np.zeros((0, len(metadata["classes"])))


def malignancy_scores(probabilities: np.ndarray, model_classes: Sequence[str], malignant: Sequence[str]) -> np.ndarray:
    columns = [i for i, name in enumerate(model_classes) if name in set(malignant)]
    return probabilities[:, columns].sum(axis=1)


def melanoma_vs_nevus_scores(probabilities: np.ndarray, model_classes: Sequence[str]) -> np.ndarray:
    melanoma = probabilities[:, list(model_classes).index(MELANOMA)]
    nevus = probabilities[:, list(model_classes).index(NEVUS)]
    total = melanoma + nevus
    # When the model gives both classes zero probability it has no preference: score one half.
    return np.divide(melanoma, total, out=np.full_like(total, 0.5), where=total > 0)


def _threshold_block(
    y: np.ndarray, scores: np.ndarray, threshold: float, iterations: int, seed: int
) -> dict[str, Any]:
    def sensitivity(yy: np.ndarray, ss: np.ndarray) -> float | None:
        return em.sensitivity_specificity(yy, ss, threshold)[0]

    def specificity(yy: np.ndarray, ss: np.ndarray) -> float | None:
        return em.sensitivity_specificity(yy, ss, threshold)[1]

    return {
        "threshold": round(threshold, 4),
        "sensitivity": em.bootstrap(sensitivity, [y, scores], iterations=iterations, seed=seed).as_dict(),
        "specificity": em.bootstrap(specificity, [y, scores], iterations=iterations, seed=seed).as_dict(),
    }


def _malignancy_block(
    true_labels: np.ndarray,
    probabilities: np.ndarray,
    model_classes: Sequence[str],
    malignant: Sequence[str],
    high_sensitivity: float,
    iterations: int,
    seed: int,
) -> dict[str, Any]:
    y = np.isin(true_labels, list(malignant))
    if not any(name in malignant for name in model_classes):
        reason = "the model has no malignant class"
        return {"auroc": em.Estimate(None, n=len(y), reason=reason).as_dict()}
    scores = malignancy_scores(probabilities, model_classes, malignant)
    block: dict[str, Any] = {
        "auroc": em.bootstrap(
            em.auroc, [y, scores], iterations=iterations, seed=seed,
            reason_if_undefined="the test set needs both malignant and benign images",
        ).as_dict(),
        "n_malignant": int(y.sum()),
        "n_benign": int((~y).sum()),
    }
    if y.any() and not y.all():
        block["youden"] = _threshold_block(y, scores, em.youden_threshold(y, scores), iterations, seed)
        high = _threshold_block(y, scores, em.threshold_for_sensitivity(y, scores, high_sensitivity), iterations, seed)
        block["high_sensitivity"] = {"target": high_sensitivity, **high}
    return block


def _melanoma_vs_nevus(
    true_labels: np.ndarray, probabilities: np.ndarray, model_classes: Sequence[str], iterations: int, seed: int
) -> dict[str, Any]:
    rows = np.isin(true_labels, [MELANOMA, NEVUS])
    if MELANOMA not in model_classes or NEVUS not in model_classes:
        return em.Estimate(None, n=int(rows.sum()), reason="the model lacks melanoma or nevus").as_dict()
    scores = melanoma_vs_nevus_scores(probabilities[rows], model_classes)
    return em.bootstrap(
        em.auroc, [true_labels[rows] == MELANOMA, scores], iterations=iterations, seed=seed,
        reason_if_undefined="the test set needs images of both melanoma and nevus",
    ).as_dict()


def evaluate_predictions(
    true_labels: Sequence[str],
    probabilities: np.ndarray,
    model_classes: Sequence[str],
    *,
    malignant: Sequence[str] = MALIGNANT,
    high_sensitivity: float = 0.95,
    iterations: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Compute every reported metric, each with a bootstrap 95 % CI, rounded to 4 decimals."""
    labels = np.asarray(true_labels)
    model_classes = list(model_classes)
    index = {name: i for i, name in enumerate(model_classes)}
    targets = np.array([index.get(label, -1) for label in labels])
    counts = Counter(labels.tolist())

    def top_k(k: int):
        return lambda t, p: em.top_k_accuracy(t, p, k)

    per_class: dict[str, Any] = {}
    for name in model_classes:
        column = index[name]
        per_class[name] = em.bootstrap(
            em.auroc, [targets == column, probabilities[:, column]], iterations=iterations, seed=seed,
            reason_if_undefined="no images of this class in the test set" if counts[name] == 0 else "only this class in the test set",
        ).as_dict()

    return {
        "n_images": int(len(labels)),
        "images_per_class": dict(sorted(counts.items())),
        "classes_model_lacks": sorted(name for name in counts if name not in index),
        "classes_test_set_lacks": [name for name in model_classes if counts[name] == 0],
        "top1_accuracy": em.bootstrap(top_k(1), [targets, probabilities], iterations=iterations, seed=seed).as_dict(),
        "top3_accuracy": em.bootstrap(top_k(3), [targets, probabilities], iterations=iterations, seed=seed).as_dict(),
        "macro_auroc": em.bootstrap(
            em.macro_auroc, [targets, probabilities], iterations=iterations, seed=seed,
            reason_if_undefined="no class has both positives and negatives",
        ).as_dict(),
        "per_class_auroc": per_class,
        "malignancy": _malignancy_block(labels, probabilities, model_classes, malignant, high_sensitivity, iterations, seed),
        "melanoma_vs_nevus_auroc": _melanoma_vs_nevus(labels, probabilities, model_classes, iterations, seed),
    }
