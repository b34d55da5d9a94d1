"""LogME from the paper, checked against the evidence computed directly; k-NN accuracy; Spearman."""

from __future__ import annotations

import math

import numpy as np
import pytest

from autotransfer.prerank import class_evidence, knn_accuracy, logme, spearman


def _direct_evidence(f, y, alpha, beta):
    """The log evidence of y under the Bayesian linear model, with explicit matrices (no eigenbasis)."""
    n, d = f.shape
    a = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.solve(a, f.T @ y)
    return (d / 2 * math.log(alpha) + n / 2 * math.log(beta) - n / 2 * math.log(2 * math.pi)
            - beta / 2 * np.sum((f @ m - y) ** 2) - alpha / 2 * m @ m - 0.5 * np.linalg.slogdet(a)[1])


def test_logme_is_the_maximised_evidence_computed_by_hand():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(40, 5))
    y = (f[:, 0] + 0.5 * rng.normal(size=40) > 0).astype(float)
    s, v = np.linalg.eigh(f.T @ f)
    found = class_evidence(f, y, s, v)
    assert found.value * 40 == pytest.approx(_direct_evidence(f, y, found.alpha, found.beta), rel=1e-9)
    # a maximum: moving either precision away lowers the evidence
    for da, db in ((1.5, 1), (1 / 1.5, 1), (1, 1.5), (1, 1 / 1.5)):
        assert _direct_evidence(f, y, found.alpha * da, found.beta * db) < found.value * 40
    labels = y.astype(int)
    expected = np.mean([class_evidence(f, (labels == c).astype(float), s, v).value for c in (0, 1)])
    assert logme(f, labels) == pytest.approx(expected)


def test_features_that_separate_the_classes_score_higher_than_random_ones():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, size=300)
    centers = rng.normal(size=(3, 16)) * 3
    good = centers[labels] + rng.normal(size=(300, 16))
    noise = rng.normal(size=(300, 16))
    assert logme(good, labels) > logme(noise, labels)
    assert knn_accuracy(good, labels) > 0.9 > 0.5 > knn_accuracy(noise, labels)


def test_spearman_needs_three_backbones():
    assert spearman({"a": 1.0, "b": 2.0}, {"a": 0.5, "b": 0.7}) is None
    assert spearman({"a": 1.0, "b": 2.0, "c": 3.0}, {"a": 0.5, "b": 0.7, "c": 0.9}) == pytest.approx(1.0)
    assert spearman({"a": 1.0, "b": 2.0, "c": 3.0}, {"a": 0.9, "b": 0.7, "c": 0.5}) == pytest.approx(-1.0)
