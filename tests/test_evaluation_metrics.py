"""Metrics against values computed by hand on small fixed inputs."""

from __future__ import annotations

import numpy as np
import pytest

from dermcan import evaluation_metrics as em

# Seven images: four negatives and three positives. Sorted by score:
# .1(-) .2(-) .3(-) .5(+) .65(-) .7(+) .9(+).
Y = np.array([0, 0, 0, 0, 1, 1, 1])
S = np.array([0.1, 0.2, 0.3, 0.65, 0.5, 0.7, 0.9])


def test_auroc_hand_computed():
    # Pairs (positive, negative) ranked correctly: .5 beats 3 of 4, .7 and .9 beat all 4: 11/12.
    assert em.auroc(Y, S) == pytest.approx(11 / 12)


def test_auroc_counts_ties_as_half():
    assert em.auroc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert em.auroc([0, 1, 1], [0.4, 0.4, 0.9]) == pytest.approx(0.75)


def test_auroc_undefined_without_positives():
    assert em.auroc([0, 0, 0], [0.1, 0.2, 0.3]) is None
    assert em.auroc([1, 1], [0.1, 0.2]) is None


def test_auroc_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        em.auroc([0, 1], [0.1, 0.2, 0.3])


def test_sensitivity_specificity_at_threshold():
    sensitivity, specificity = em.sensitivity_specificity(Y, S, 0.6)
    assert sensitivity == pytest.approx(2 / 3)
    assert specificity == pytest.approx(3 / 4)


def test_threshold_is_inclusive():
    sensitivity, _ = em.sensitivity_specificity(Y, S, 0.5)
    assert sensitivity == pytest.approx(1.0)


def test_sensitivity_none_without_positives():
    sensitivity, specificity = em.sensitivity_specificity([0, 0], [0.2, 0.8], 0.5)
    assert sensitivity is None
    assert specificity == pytest.approx(0.5)


def test_youden_threshold_hand_computed():
    # J at each threshold: .9 -> 1/3, .7 -> 2/3, .65 -> 2/3-1/4, .5 -> 1-1/4 (max), .3 -> 1/2.
    assert em.youden_threshold(Y, S) == pytest.approx(0.5)


def test_youden_prefers_higher_threshold_on_tie():
    # J is 1/2 at both .8 and .35.
    assert em.youden_threshold([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.8)


def test_threshold_for_sensitivity():
    assert em.threshold_for_sensitivity(Y, S, 0.6) == pytest.approx(0.7)
    assert em.threshold_for_sensitivity(Y, S, 0.95) == pytest.approx(0.5)


def test_threshold_for_sensitivity_rejects_zero():
    with pytest.raises(ValueError, match="target sensitivity"):
        em.threshold_for_sensitivity(Y, S, 0.0)


def test_top_k_accuracy():
    probabilities = np.array([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7], [0.2, 0.5, 0.3]])
    targets = np.array([0, 1, 2])
    assert em.top_k_accuracy(targets, probabilities, 1) == pytest.approx(1 / 3)
    assert em.top_k_accuracy(targets, probabilities, 2) == pytest.approx(1.0)


def test_top_k_counts_unknown_class_as_miss():
    probabilities = np.array([[0.5, 0.5], [0.9, 0.1]])
    assert em.top_k_accuracy(np.array([-1, 0]), probabilities, 2) == pytest.approx(0.5)


def test_macro_auroc_skips_undefined_class():
    probabilities = np.array([[0.8, 0.2, 0.0], [0.3, 0.7, 0.0], [0.6, 0.4, 0.0], [0.1, 0.9, 0.0]])
    targets = np.array([0, 1, 0, 1])
    # Class 0 and 1 separate perfectly (AUROC 1); class 2 has no positives and is left out.
    assert em.macro_auroc(targets, probabilities) == pytest.approx(1.0)


def test_bootstrap_ci_contains_point_estimate():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, size=200)
    scores = y * 0.5 + rng.normal(size=200)
    estimate = em.bootstrap(em.auroc, [y, scores], iterations=300, seed=1)
    assert estimate.ci_low < estimate.value < estimate.ci_high
    assert estimate.n == 200


def test_bootstrap_is_reproducible_with_seed():
    y = np.array([0, 1] * 20)
    scores = np.linspace(0, 1, 40)
    first = em.bootstrap(em.auroc, [y, scores], iterations=50, seed=7)
    second = em.bootstrap(em.auroc, [y, scores], iterations=50, seed=7)
    assert first == second


def test_bootstrap_undefined_statistic_has_reason():
    estimate = em.bootstrap(em.auroc, [np.zeros(5), np.arange(5.0)], iterations=10, seed=0, reason_if_undefined="no positives")
    assert estimate.value is None
    assert estimate.as_dict()["reason"] == "no positives"


def test_estimate_rounds_to_four_decimals():
    assert em.Estimate(value=0.123456, ci_low=0.1, ci_high=0.2, n=3).as_dict()["value"] == 0.1235
