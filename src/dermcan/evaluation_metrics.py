"""Binary and multi-class metrics with bootstrap confidence intervals, on numpy arrays.

Conventions: ``y_true`` is a boolean (or 0/1) array in which True marks a positive. Higher
``scores`` mean more likely positive, and an image is called positive when its score is at or
above the threshold. A metric that is undefined on the data (an AUROC without positives or
without negatives) is returned as None, never as NaN.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import roc_curve as _sklearn_roc_curve


def _as_binary(y_true: Sequence[Any] | np.ndarray) -> np.ndarray:
    return np.asarray(y_true).astype(bool)


def auroc(y_true: Sequence[Any] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float | None:
    """Return the area under the ROC curve, or None without both positives and negatives.

    Computed as the Mann-Whitney U statistic over ranks, so a tie between a positive and a
    negative counts one half.
    """
    positives = _as_binary(y_true)
    scores = np.asarray(scores, dtype=float)
    if positives.shape != scores.shape:
        raise ValueError(f"y_true has shape {positives.shape} but scores has shape {scores.shape}")
    n_positive = int(positives.sum())
    n_negative = positives.size - n_positive
    if n_positive == 0 or n_negative == 0:
        return None
    ranks = rankdata(scores)
    rank_sum = float(ranks[positives].sum())
    return (rank_sum - n_positive * (n_positive + 1) / 2) / (n_positive * n_negative)


def roc_points(
    y_true: Sequence[Any] | np.ndarray, scores: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(fpr, tpr, thresholds)`` of the ROC curve; the first threshold is +inf."""
    positives = _as_binary(y_true)
    if positives.all() or not positives.any():
        raise ValueError("an ROC curve needs both positives and negatives")
    fpr, tpr, thresholds = _sklearn_roc_curve(positives, np.asarray(scores, dtype=float), drop_intermediate=False)
    return fpr, tpr, thresholds


def sensitivity_specificity(
    y_true: Sequence[Any] | np.ndarray, scores: Sequence[float] | np.ndarray, threshold: float
) -> tuple[float | None, float | None]:
    """Return (sensitivity, specificity) when calling ``score >= threshold`` positive.

    Sensitivity is None without positives and specificity None without negatives.
    """
    positives = _as_binary(y_true)
    called = np.asarray(scores, dtype=float) >= threshold
    n_positive = int(positives.sum())
    n_negative = positives.size - n_positive
    sensitivity = float((called & positives).sum() / n_positive) if n_positive else None
    specificity = float((~called & ~positives).sum() / n_negative) if n_negative else None
    return sensitivity, specificity


def youden_threshold(y_true: Sequence[Any] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Return the threshold that maximises Youden's J = sensitivity + specificity - 1.

    Candidates are the observed scores; among equal J the highest threshold wins.
    """
    fpr, tpr, thresholds = roc_points(y_true, scores)
    j = tpr - fpr
    finite = np.isfinite(thresholds)
    best = int(np.argmax(np.where(finite, j, -np.inf)))
    return float(thresholds[best])


def threshold_for_sensitivity(
    y_true: Sequence[Any] | np.ndarray, scores: Sequence[float] | np.ndarray, target: float
) -> float:
    """Return the highest threshold whose sensitivity is at least ``target`` (0 to 1)."""
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target sensitivity must be in (0, 1], got {target}")
    fpr, tpr, thresholds = roc_points(y_true, scores)
    reaching = np.flatnonzero((tpr >= target - 1e-12) & np.isfinite(thresholds))
    return float(thresholds[reaching[0]])


def top_k_accuracy(targets: Sequence[int] | np.ndarray, probabilities: np.ndarray, k: int) -> float:
    """Return the fraction of rows whose target index is among the ``k`` highest probabilities.

    A target of -1 (a class the model does not have) always counts as a miss.
    """
    targets = np.asarray(targets)
    probabilities = np.asarray(probabilities, dtype=float)
    if targets.size == 0:
        raise ValueError("top-k accuracy of an empty set is undefined")
    k = min(k, probabilities.shape[1])
    top = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    hits = (top == targets[:, None]).any(axis=1) & (targets >= 0)
    return float(hits.mean())


def macro_auroc(targets: Sequence[int] | np.ndarray, probabilities: np.ndarray) -> float | None:
    """Return the mean one-vs-rest AUROC over the classes (columns) where it is defined."""
    targets = np.asarray(targets)
    values = [auroc(targets == index, probabilities[:, index]) for index in range(probabilities.shape[1])]
    defined = [value for value in values if value is not None]
    return float(np.mean(defined)) if defined else None


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A point estimate with a percentile bootstrap confidence interval.

    ``ci_low``/``ci_high`` are None when fewer than half the resamples gave a defined value.
    """

    value: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    n: int = 0
    reason: str | None = None

    def as_dict(self, decimals: int = 4) -> dict[str, Any]:
        def rounded(x: float | None) -> float | None:
            return None if x is None else round(float(x), decimals)

        out: dict[str, Any] = {
            "value": rounded(self.value),
            "ci_low": rounded(self.ci_low),
            "ci_high": rounded(self.ci_high),
            "n": self.n,
        }
        if self.reason:
            out["reason"] = self.reason
        return out


def bootstrap(
    statistic: Callable[..., float | None],
    arrays: Sequence[np.ndarray],
    *,
    iterations: int,
    seed: int,
    confidence: float = 0.95,
    reason_if_undefined: str | None = None,
) -> Estimate:
    """Return ``statistic(*arrays)`` with a percentile bootstrap CI over resampled rows.

    Every array is indexed by the same resampled row indices. Resamples where the statistic is
    undefined (None) are skipped; with fewer than half defined the CI is None.
    """
    arrays = [np.asarray(a) for a in arrays]
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError("bootstrap arrays must have the same length")
    point = statistic(*arrays) if n else None
    if point is None:
        return Estimate(value=None, n=n, reason=reason_if_undefined or "undefined on this data")
    if iterations <= 0:
        return Estimate(value=float(point), n=n)

    rng = np.random.default_rng(seed)
    values = []
    for _ in range(iterations):
        rows = rng.integers(0, n, size=n)
        value = statistic(*(a[rows] for a in arrays))
        if value is not None:
            values.append(value)
    if len(values) < iterations / 2:
        return Estimate(value=float(point), n=n, reason="too few resamples with a defined value for a CI")
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return Estimate(value=float(point), ci_low=float(low), ci_high=float(high), n=n)
