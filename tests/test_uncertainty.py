"""Intervals and ties: a small validation set must not pass a coin toss off as a ranking."""

from __future__ import annotations

import numpy as np

from autotransfer.metrics import metric_function
from autotransfer.uncertainty import intervals


def _predictions(y, accuracy, rng):
    pred = y.copy()
    wrong = rng.choice(len(y), int(round((1 - accuracy) * len(y))), replace=False)
    pred[wrong] = 1 - pred[wrong]
    return pred


def test_two_points_apart_is_a_tie_on_100_examples_but_not_twenty_points():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 100)
    preds = {"lead": _predictions(y, 0.82, rng), "close": _predictions(y, 0.80, rng), "far": _predictions(y, 0.60, rng)}
    out = intervals(y, preds, "lead", metric_function("accuracy"))
    assert out["lead"]["tied"] is True and out["close"]["tied"] is True and out["far"]["tied"] is False
    low, high = out["close"]["interval"]
    assert low < 0.80 < high and 0.10 < high - low < 0.25  # +-8 points at n=100


def test_more_validation_examples_separate_the_same_gap():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 5000)
    preds = {"lead": _predictions(y, 0.85, rng), "close": _predictions(y, 0.80, rng)}
    out = intervals(y, preds, "lead", metric_function("accuracy"))
    assert out["close"]["tied"] is False
    assert out["close"]["interval"][1] - out["close"]["interval"][0] < 0.03


def test_mismatched_prediction_lengths_are_left_out():
    y = np.array([0, 1, 0, 1])
    out = intervals(y, {"a": np.array([0, 1, 0, 1]), "b": np.array([0, 1])}, "a", metric_function("f1_macro"))
    assert set(out) == {"a"}
