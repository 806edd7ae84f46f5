"""Check the keyword labels of lesion crops by algorithm.

The keyword label of a crop is the class whose name appeared in the caption of its source
photo, and captions are sometimes wrong. Two verifiers decide, crop by crop, whether to keep
the label, drop the crop or relabel it:

- ``cleanlab`` (default, no external model): hand-made colour, texture and border features per
  crop, a scikit-learn classifier trained in K folds on the keyword labels, and confident
  learning (``cleanlab.filter.find_label_issues``) on the out-of-fold predicted probabilities.
  Folds are grouped (near-duplicate photos in one fold), so a copy of a photo never predicts
  its own label. The probabilities are only as good as the features, so the verifier suits
  classes that differ in colour and texture. On 100 generated crops with 12 wrong labels, a
  random forest with ``filter_by="predicted_neq_given"`` removed 83 to 100 % of the wrong
  labels and 6 to 10 % of the correct ones (seeds 0 to 3, tests/test_label_verification.py).
- ``classifier``: a trained classifier checkpoint loaded with ``dermcan.models.load_classifier``.
  Its prediction must equal the keyword label with at least ``min_confidence`` probability.

A flagged crop is relabelled only when ``label_issues`` is ``relabel`` and the predicted
class has at least ``relabel_min_confidence`` probability. Otherwise it is dropped.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from dermcan.lesion_detection import rgb_to_lab

log = logging.getLogger(__name__)

VERIFIER_KINDS = ("cleanlab", "classifier")
LABEL_ISSUE_ACTIONS = ("drop", "relabel")
CLASSIFIERS = ("logistic", "random_forest")
FEATURE_SIZE = 64


@dataclasses.dataclass(frozen=True)
class Verification:
    """Per-crop outcome of a label check.

    ``decision`` is keep, relabel or drop. ``confidence`` is the verifier's probability for
    ``verified_label``, or for the predicted class when the crop is dropped.
    """

    decision: str
    verified_label: str
    confidence: float
    reason: str


# --- features ---------------------------------------------------------------------------------


def crop_features(crop: Image.Image) -> np.ndarray:
    """Return a fixed-length float32 feature vector of a lesion crop.

    The crop is resized to 64x64 and converted to CIELAB. The skin colour is the median of a
    6-pixel ring along the crop's edge. The lesion is the set of pixels farther than Delta E 10
    from it, or the central quarter when fewer than 16 pixels are. Features: lesion colour relative to skin
    (mean, std and 8-bin histograms of L*, a*, b*), absolute skin and lesion colour, gradient
    texture inside the lesion, lesion area share, border irregularity and asymmetry.
    """
    rgb = np.asarray(crop.convert("RGB").resize((FEATURE_SIZE, FEATURE_SIZE), Image.BILINEAR))
    lab = rgb_to_lab(rgb)
    ring = np.zeros((FEATURE_SIZE, FEATURE_SIZE), dtype=bool)
    ring[:6, :] = ring[-6:, :] = ring[:, :6] = ring[:, -6:] = True
    skin = np.median(lab[ring], axis=0)
    relative = lab - skin
    distance = np.sqrt((relative**2).sum(axis=2))
    lesion = ndimage.binary_fill_holes(distance > 10.0)
    if lesion.sum() < 16:
        lesion = np.zeros_like(lesion)
        lesion[16:48, 16:48] = True

    inside = relative[lesion]
    features = [inside.mean(axis=0), inside.std(axis=0), skin, lab[lesion].mean(axis=0)]
    histogram_ranges = ((-80.0, 20.0), (-20.0, 60.0), (-40.0, 40.0))
    for channel, (low, high) in enumerate(histogram_ranges):
        counts, _ = np.histogram(inside[:, channel], bins=8, range=(low, high))
        features.append(counts / max(1, len(inside)))

    lightness = lab[..., 0]
    gradient = np.hypot(ndimage.sobel(lightness, axis=0), ndimage.sobel(lightness, axis=1))
    fine = lightness - ndimage.gaussian_filter(lightness, 1.5)
    area = float(lesion.mean())
    perimeter = float((lesion ^ ndimage.binary_erosion(lesion)).sum())
    irregularity = perimeter**2 / (4.0 * np.pi * max(1.0, lesion.sum()))
    asymmetry = float((lesion ^ lesion[::-1, ::-1]).sum() / max(1, lesion.sum()))
    features.append(
        np.array(
            [
                gradient[lesion].mean(),
                gradient[lesion].std(),
                np.abs(fine[lesion]).mean(),
                np.abs(fine[~lesion]).mean() if (~lesion).any() else 0.0,
                area,
                irregularity,
                asymmetry,
            ]
        )
    )
    return np.concatenate([np.ravel(part) for part in features]).astype(np.float32)


# --- confident learning -----------------------------------------------------------------------


def out_of_fold_probabilities(
    features: np.ndarray,
    labels: np.ndarray,
    groups: Sequence[str],
    *,
    n_classes: int,
    folds: int,
    seed: int,
    classifier: str = "logistic",
) -> np.ndarray:
    """Return ``(n, n_classes)`` probabilities, each row from a model that never saw its group.

    ``labels`` are integers in ``range(n_classes)``. Raises ``ValueError`` when a class has
    fewer than two groups, because such a class cannot appear in training and held-out folds.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    group_codes = np.unique(np.asarray(groups), return_inverse=True)[1]
    groups_per_class = [len(np.unique(group_codes[labels == k])) for k in range(n_classes)]
    smallest = min(groups_per_class)
    if smallest < 2:
        raise ValueError(
            f"class index {int(np.argmin(groups_per_class))} has {smallest} photo groups, but "
            "confident learning needs at least 2 per class"
        )
    splitter = StratifiedGroupKFold(n_splits=min(folds, smallest), shuffle=True, random_state=seed)
    probabilities = np.zeros((len(labels), n_classes), dtype=np.float64)
    for train_index, test_index in splitter.split(features, labels, group_codes):
        model = _make_classifier(classifier, seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)
            model.fit(features[train_index], labels[train_index])
        fold_probabilities = np.zeros((len(test_index), n_classes))
        fold_probabilities[:, model.classes_] = model.predict_proba(features[test_index])
        probabilities[test_index] = fold_probabilities
    return probabilities


def _make_classifier(name: str, seed: int):
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if name == "logistic":
        return make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=2000))
    if name == "random_forest":
        return RandomForestClassifier(
            n_estimators=200, min_samples_leaf=1, random_state=seed, n_jobs=1
        )
    raise ValueError(f"unknown annotate.classifier {name!r}; valid classifiers are {CLASSIFIERS}")


def verify_with_confident_learning(
    features: np.ndarray,
    keyword_labels: Sequence[str],
    groups: Sequence[str],
    *,
    folds: int,
    seed: int,
    label_issues: str,
    relabel_min_confidence: float,
    classifier: str = "logistic",
    filter_by: str = "prune_by_noise_rate",
) -> list[Verification]:
    """Flag label issues among crops with cleanlab and decide keep, relabel or drop for each.

    ``features`` is ``(n, d)``, one row per crop in the order of ``keyword_labels`` and
    ``groups`` (near-duplicate group of the source photo). ``filter_by`` is the
    ``cleanlab.filter.find_label_issues`` method. Classes with fewer than two groups
    cannot be checked: their crops are kept unchecked with a warning in the reason.
    """
    from cleanlab.filter import find_label_issues

    _check_action(label_issues)
    keyword_labels = list(keyword_labels)
    if len(keyword_labels) != len(features) or len(groups) != len(features):
        raise ValueError(
            f"features ({len(features)}), keyword_labels ({len(keyword_labels)}) and groups "
            f"({len(groups)}) must have one entry per crop"
        )
    results = [Verification("keep", label, float("nan"), "unchecked") for label in keyword_labels]
    group_array = np.asarray(groups)
    checkable = _classes_with_enough_groups(keyword_labels, group_array)
    unchecked = sorted(set(keyword_labels) - set(checkable))
    if unchecked:
        log.warning("too few photos to check the labels of classes %s, so their crops are kept", unchecked)
        for index, label in enumerate(keyword_labels):
            if label in unchecked:
                results[index] = Verification(
                    "keep", label, float("nan"), "kept unchecked: too few photos of this class"
                )
    if len(checkable) < 2:
        return results

    selected = np.array([label in checkable for label in keyword_labels])
    indices = np.flatnonzero(selected)
    label_codes = np.array([checkable.index(keyword_labels[i]) for i in indices])
    probabilities = out_of_fold_probabilities(
        features[indices],
        label_codes,
        group_array[indices],
        n_classes=len(checkable),
        folds=folds,
        seed=seed,
        classifier=classifier,
    )
    issues = find_label_issues(label_codes, probabilities, filter_by=filter_by)
    for row, index in enumerate(indices):
        results[index] = _decide(
            keyword_labels[index],
            checkable,
            probabilities[row],
            is_issue=bool(issues[row]),
            label_issues=label_issues,
            relabel_min_confidence=relabel_min_confidence,
            source="confident learning",
        )
    return results


def _classes_with_enough_groups(labels: Sequence[str], groups: np.ndarray) -> list[str]:
    checkable = []
    for label in sorted(set(labels)):
        label_groups = {group for lab, group in zip(labels, groups) if lab == label}
        if len(label_groups) >= 2:
            checkable.append(label)
    return checkable


def _decide(
    keyword_label: str,
    classes: Sequence[str],
    probabilities: np.ndarray,
    *,
    is_issue: bool,
    label_issues: str,
    relabel_min_confidence: float,
    source: str,
) -> Verification:
    given = classes.index(keyword_label) if keyword_label in classes else None
    given_probability = float(probabilities[given]) if given is not None else 0.0
    predicted = int(np.argmax(probabilities))
    predicted_label = classes[predicted]
    predicted_probability = float(probabilities[predicted])
    if not is_issue:
        return Verification(
            "keep", keyword_label, round(given_probability, 4), f"{source} agrees with the keyword"
        )
    if (
        label_issues == "relabel"
        and predicted_label != keyword_label
        and predicted_probability >= relabel_min_confidence
    ):
        return Verification(
            "relabel",
            predicted_label,
            round(predicted_probability, 4),
            f"{source}: keyword {keyword_label} p={given_probability:.2f}, "
            f"relabelled to {predicted_label} p={predicted_probability:.2f}",
        )
    return Verification(
        "drop",
        keyword_label,
        round(predicted_probability, 4),
        f"{source}: keyword {keyword_label} p={given_probability:.2f}, "
        f"predicted {predicted_label} p={predicted_probability:.2f}",
    )


def _check_action(label_issues: str) -> None:
    if label_issues not in LABEL_ISSUE_ACTIONS:
        raise ValueError(
            f"unknown annotate.label_issues {label_issues!r}; valid values are {LABEL_ISSUE_ACTIONS}"
        )


# --- trained classifier -----------------------------------------------------------------------


def verify_with_classifier(
    crops: Sequence[Image.Image],
    keyword_labels: Sequence[str],
    *,
    checkpoint: str | Path,
    min_confidence: float,
    label_issues: str,
    relabel_min_confidence: float,
    batch_size: int = 32,
) -> list[Verification]:
    """Check each crop's keyword label against a trained classifier checkpoint.

    A crop is kept when the classifier predicts its keyword label with probability of at least
    ``min_confidence``. A keyword label outside the checkpoint's classes is a flagged issue.
    """
    import torch

    from dermcan.models import load_classifier

    _check_action(label_issues)
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(
            f"annotator checkpoint {path} not found: train it first, or set "
            "annotate.verifier.kind to 'cleanlab' in params.yaml"
        )
    model, metadata = load_classifier(path)
    classes = list(metadata["classes"])
    size = int(metadata["input_size"])
    mean = torch.tensor(metadata["mean"], dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(metadata["std"], dtype=torch.float32).view(1, 3, 1, 1)

    results: list[Verification] = []
    for start in range(0, len(crops), batch_size):
        batch = [
            torch.from_numpy(
                np.asarray(crop.convert("RGB").resize((size, size), Image.BILINEAR)).copy()
            ).permute(2, 0, 1)
            for crop in crops[start : start + batch_size]
        ]
        tensor = (torch.stack(batch).float() / 255.0 - mean) / std
        with torch.inference_mode():
            probabilities = torch.softmax(model(tensor), dim=1).numpy()
        for offset, row in enumerate(probabilities):
            keyword_label = keyword_labels[start + offset]
            given = classes.index(keyword_label) if keyword_label in classes else None
            agrees = given is not None and int(np.argmax(row)) == given and row[given] >= min_confidence
            results.append(
                _decide(
                    keyword_label,
                    classes,
                    row,
                    is_issue=not agrees,
                    label_issues=label_issues,
                    relabel_min_confidence=relabel_min_confidence,
                    source="classifier",
                )
            )
    return results
