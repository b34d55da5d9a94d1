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
    out, _ = intervals(y, preds, "lead", metric_function("accuracy"))
    assert out["lead"]["tied"] is True and out["close"]["tied"] is True and out["far"]["tied"] is False
    low, high = out["close"]["interval"]
    assert low < 0.80 < high and 0.10 < high - low < 0.25  # +-8 points at n=100


def test_more_validation_examples_separate_the_same_gap():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 5000)
    preds = {"lead": _predictions(y, 0.85, rng), "close": _predictions(y, 0.80, rng)}
    out, _ = intervals(y, preds, "lead", metric_function("accuracy"))
    assert out["close"]["tied"] is False
    assert out["close"]["interval"][1] - out["close"]["interval"][0] < 0.03


def test_mismatched_prediction_lengths_are_left_out():
    y = np.array([0, 1, 0, 1])
    out, coverage = intervals(y, {"a": np.array([0, 1, 0, 1]), "b": np.array([0, 1])}, "a",
                              metric_function("f1_macro"))
    assert set(out) == {"a"} and (coverage.trials, coverage.of) == (1, 1)


def _counting(metric):
    calls = []

    def counted(y, p):
        calls.append(1)
        return metric(y, p)
    return counted, calls


def test_each_trial_costs_one_evaluation_per_resample_and_matches_unmemoised_intervals():
    """The paired comparison reuses the intervals' values: 3 trials x 200 resamples = 600 evaluations (+1 timed),
    not 3 x 200 x 3, and the intervals and ties are exactly those of computing every resample afresh."""
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 150)
    preds = {"lead": _predictions(y, 0.85, rng), "close": _predictions(y, 0.83, rng), "far": _predictions(y, 0.6, rng)}
    counted, calls = _counting(metric_function("accuracy"))
    out, coverage = intervals(y, preds, "lead", counted, resamples=200)
    assert len(calls) == 3 * 200 + 1 and coverage.complete and coverage.resamples == 200
    from scipy.stats import bootstrap

    acc = metric_function("accuracy")

    def fresh(stat):
        r = bootstrap((np.arange(len(y)),), stat, vectorized=False, n_resamples=200, confidence_level=0.95,
                      method="percentile", random_state=np.random.default_rng(0))
        return r.confidence_interval.low, r.confidence_interval.high

    for name in ("close", "far"):
        low, high = fresh(lambda i: acc(y[i], preds[name][i]))
        assert out[name]["interval"] == [round(low, 4), round(high, 4)]
        d_low, d_high = fresh(lambda i: acc(y[i], preds["lead"][i]) - acc(y[i], preds[name][i]))
        assert out[name]["tied"] == (d_low <= 0 <= d_high)
    assert out["close"]["tied"] is True and out["far"]["tied"] is False


def test_a_costly_metric_is_kept_within_the_budget_best_trials_first():
    """A metric that takes 10 ms with a 1.5 s budget: 5 trials x 30 resamples would take 1.5 s + overhead, so the
    resamples drop to the floor and only the best trials (the first ones) get intervals; the leader always does."""
    import time

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 60)
    acc = metric_function("accuracy")

    def slow(a, b):
        time.sleep(0.01)
        return acc(a, b)

    preds = {f"t{i}": _predictions(y, 0.9 - 0.05 * i, rng) for i in range(5)}
    counted, calls = _counting(slow)
    out, coverage = intervals(y, preds, "t0", counted, resamples=100, budget_s=1.0)
    assert coverage.resamples == 30 and 1 <= coverage.trials < 5 and coverage.of == 5 and not coverage.complete
    assert list(out) == [f"t{i}" for i in range(coverage.trials)] and out["t0"]["tied"] is True
    assert (len(calls) - 1) * 0.01 <= 1.0  # the evaluations it chose to make fit the budget (each sleeps 10 ms)
    # an unbounded run of the same: every trial, every resample
    full, cov = intervals(y, preds, "t0", acc, resamples=100)
    assert cov.complete and set(full) == set(preds)
