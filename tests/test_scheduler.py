"""NoiseAwareASHA: ASHA's rungs, but recipes are never stopped and neither is a trial within noise of the cut-off."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from ray.tune.schedulers import TrialScheduler

from autotransfer.scheduler import NoiseAwareASHA, proportion_se


def _trial(trial_id, **config):
    return SimpleNamespace(trial_id=trial_id, config=config)


def _asha():
    return NoiseAwareASHA(time_attr="training_iteration", metric="accuracy", mode="max", max_t=4, grace_period=1,
                          reduction_factor=2)


def _feed(sched, trial, accuracy, n_val, iteration=1):
    return sched.on_trial_result(None, trial, {"training_iteration": iteration, "accuracy": accuracy,
                                               "val_examples": n_val})


@pytest.mark.parametrize("n_val", [100, 1000])
def test_only_trials_below_the_cutoff_by_more_than_the_noise_are_stopped(n_val):
    sched = _asha()
    trials = [_trial(f"t{i}") for i in range(5)]
    for t in trials:
        sched.on_trial_add(None, t)
    for t, acc in zip(trials[:3], (0.80, 0.82, 0.84)):
        assert _feed(sched, t, acc, n_val) == TrialScheduler.CONTINUE  # each at or above the cut-off so far
    # cut-off of {0.80, 0.82, 0.84} at reduction factor 2: the median, 0.82; one SE at n=100 is ~0.038
    near, far = trials[3], trials[4]
    expected_near = TrialScheduler.CONTINUE if n_val == 100 else TrialScheduler.STOP  # 0.80 vs 0.82 +- 0.012
    assert _feed(sched, near, 0.80, n_val) == expected_near
    assert _feed(sched, far, 0.60, n_val) == TrialScheduler.STOP
    assert (near.trial_id in sched.spared) == (n_val == 100)


def test_a_recipe_trial_is_never_stopped_even_when_worst():
    sched = _asha()
    trials = [_trial("a"), _trial("b"), _trial("recipe", recipe="full fine-tuning, lr 2e-5")]
    for t in trials:
        sched.on_trial_add(None, t)
    _feed(sched, trials[0], 0.9, 1000)
    _feed(sched, trials[1], 0.9, 1000)
    assert _feed(sched, trials[2], 0.5, 1000) == TrialScheduler.CONTINUE
    assert sched.spared["recipe"] == "recipe"
    # the same score without the recipe tag is stopped
    plain = _trial("plain")
    sched.on_trial_add(None, plain)
    assert _feed(sched, plain, 0.5, 1000) == TrialScheduler.STOP


def test_proportion_standard_error():
    assert proportion_se(0.8, 100) == pytest.approx(0.04)
    assert proportion_se(1.0, 100) == pytest.approx((0.01 * 0.99 / 100) ** 0.5)  # clipped away from 0 and 1
    assert proportion_se(0.8, None) == 0.0
