"""The searcher tells Optuna how each trial ended: finished, stopped early, or failed."""

from __future__ import annotations

import math

import optuna
from optuna.trial import TrialState

from autotransfer.results import FINISHED, TRIAL_ERROR
from autotransfer.searcher import FidelitySearch, load_study, study_storage


def _space(trial):
    trial.suggest_float("lr", 1e-5, 1e-3, log=True)


def _report(searcher, trial_id, values, last_extra=None):
    for i, v in enumerate(values[:-1], 1):
        searcher.on_trial_result(trial_id, {"accuracy": v, "training_iteration": i})
    # Ray Tune hands the result that ends a trial to on_trial_complete only
    searcher.on_trial_complete(trial_id, {"accuracy": values[-1], "training_iteration": len(values),
                                          **(last_extra or {})})


def test_finished_stopped_and_failed_trials_are_told_as_such(tmp_path):
    path = tmp_path / "run" / "optuna_study.log"
    searcher = FidelitySearch(space=_space, metric="accuracy", mode="max", storage=study_storage(path),
                              study_name="run", sampler=optuna.samplers.RandomSampler(seed=0))
    for tid in ("finished", "stopped", "failed"):
        assert searcher.suggest(tid) is not None
    _report(searcher, "finished", [0.6, 0.9, 0.8], {FINISHED: True})  # worth its best round, as ranked
    _report(searcher, "stopped", [0.55])  # ASHA stopped it after one round
    _report(searcher, "failed", [0.7, math.nan], {TRIAL_ERROR: "loss became NaN"})
    searcher.on_trial_complete("stopped", {"accuracy": 0.55, "training_iteration": 1})  # told once only

    trials = {t.number: t for t in load_study(tmp_path / "run").trials}
    finished, stopped, failed = trials[0], trials[1], trials[2]
    assert finished.state == TrialState.COMPLETE and finished.value == 0.9
    assert finished.intermediate_values == {1: 0.6, 2: 0.9, 3: 0.8}
    assert stopped.state == TrialState.PRUNED and stopped.intermediate_values == {1: 0.55}
    assert failed.state == TrialState.FAIL and failed.intermediate_values == {1: 0.7}


def test_trials_the_time_budget_stopped_are_not_left_running_in_the_study(tmp_path):
    """Ray Tune's time budget stops running trials without telling the searcher: once the search has ended,
    the study holds them as PRUNED (with the rounds they reported) or, with none, FAIL; never RUNNING."""
    from autotransfer.searcher import settle_study

    path = tmp_path / "run" / "optuna_study.log"
    searcher = FidelitySearch(space=_space, metric="accuracy", mode="max", storage=study_storage(path),
                              study_name="run", sampler=optuna.samplers.RandomSampler(seed=0))
    for tid in ("finished", "cut", "not-yet-evaluated"):
        assert searcher.suggest(tid) is not None
    _report(searcher, "finished", [0.6, 0.7], {FINISHED: True})
    for i, v in enumerate([0.5, 0.65], 1):  # two rounds, then the budget ended the search
        searcher.on_trial_result("cut", {"accuracy": v, "training_iteration": i})
    assert [t.state for t in load_study(tmp_path / "run").trials][1:] == [TrialState.RUNNING] * 2

    assert settle_study(tmp_path / "run") == 2
    finished, cut, empty = load_study(tmp_path / "run").trials
    assert finished.state == TrialState.COMPLETE and finished.value == 0.7
    assert cut.state == TrialState.PRUNED and cut.intermediate_values == {1: 0.5, 2: 0.65}
    assert empty.state == TrialState.FAIL
    assert settle_study(tmp_path / "run") == 0 and settle_study(tmp_path / "no-run") == 0
