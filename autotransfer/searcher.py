"""Ray Tune's Optuna searcher, told how each trial really ended, with its study kept in the run folder.

Ray's ``OptunaSearch`` tells Optuna every trial that reported as ``COMPLETE`` with its
*last* metric, so a trial ASHA stopped after one round counts as a finished trial worth
its round-1 score (ray#6056).  :class:`FidelitySearch` tells Optuna instead:

- a trial that ran its whole budget (its last report carries ``trial_finished``):
  ``COMPLETE``, with its best validation metric (what its kept checkpoint scores, and
  what the leaderboard ranks it by);
- a trial stopped before its end (ASHA, the time budget): ``PRUNED``; its intermediate
  values, reported after every evaluation round, stay with it, so TPE ranks it by how
  far it got and what it scored there (GPSampler leaves pruned trials out).  The time
  budget stops trials without telling the searcher: :func:`settle_study` tells Optuna
  about those once the search has ended;
- a trial that failed (its own error, or a worker that died for good): ``FAIL``.

The study lives in an Optuna journal file in the run folder (:func:`study_storage`):
``optuna-dashboard <run>/optuna_study.log`` opens it, and a resumed search continues
the same study.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import optuna
from optuna.trial import TrialState
from ray.tune.result import TRAINING_ITERATION
from ray.tune.search.optuna import OptunaSearch

from autotransfer.results import FINISHED, TRIAL_ERROR


def study_storage(path: Path) -> optuna.storages.BaseStorage:
    """An Optuna journal storage in ``path`` (created if missing): readable by ``optuna-dashboard``."""
    from optuna.storages.journal import JournalFileBackend

    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def load_study(run_dir: Path | str) -> optuna.Study:
    """The Optuna study of the run in ``run_dir`` (e.g. for ``study.trials_dataframe()``)."""
    from autotransfer.settings import STUDY_FILE

    path = Path(run_dir) / STUDY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no Optuna study here (runs before autotransfer kept one have none)")
    storage = study_storage(path)
    [summary] = optuna.get_all_study_summaries(storage)  # one study per run folder
    return optuna.load_study(study_name=summary.study_name, storage=storage)


def settle_study(run_dir: Path | str) -> int:
    """End the trials a search left ``RUNNING`` in the study of the run in ``run_dir``; return how many.

    Ray Tune's time budget stops the trials still running without telling the searcher (no
    ``on_trial_complete``), so Optuna would list them as running for ever.  Call this after a
    search that ended by itself (not after a Ctrl-C: a resume runs those trials on).  A trial
    with evaluations becomes ``PRUNED`` (stopped before its end; its intermediate values stay),
    one stopped before its first evaluation ``FAIL`` (the samplers leave it out), as
    :func:`outcome` decides for the trials the searcher is told about.
    """
    try:
        study = load_study(run_dir)
    except FileNotFoundError:
        return 0
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in running:
        study.tell(t.number, state=TrialState.PRUNED if t.intermediate_values else TrialState.FAIL)
    return len(running)


def outcome(result: Optional[dict[str, Any]], error: bool, best: Optional[float]) -> tuple[TrialState, Optional[float]]:
    """How Optuna should record a trial that ended with ``result`` (its last report), and with which value."""
    failed = error or not result or bool(result.get(TRIAL_ERROR))
    if failed or best is None:
        return TrialState.FAIL, None
    if result.get(FINISHED):  # type: ignore[union-attr]
        return TrialState.COMPLETE, best
    return TrialState.PRUNED, None


class FidelitySearch(OptunaSearch):
    """``OptunaSearch`` that records stopped trials as ``PRUNED`` and failed ones as ``FAIL`` (see the module)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: trial id -> best finite metric reported so far
        self._best: dict[str, float] = {}
        #: trial id -> the last round told to Optuna (a round is told once)
        self._told: dict[str, int] = {}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        value = result.get(self.metric)
        if value is None or not math.isfinite(float(value)):  # a failure report (see training.run_trial)
            return
        step = int(result.get(TRAINING_ITERATION, 0))
        if step <= self._told.get(trial_id, 0):
            return
        self._told[trial_id] = step
        self._best[trial_id] = max(float(value), self._best.get(trial_id, -math.inf))
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        if result and TRAINING_ITERATION in result:
            # Ray Tune hands the result that ends a trial (its last round, or the one ASHA stopped it at)
            # to on_trial_complete only: it is an intermediate value like the others
            self.on_trial_result(trial_id, result)
        state, value = outcome(result, error, self._best.get(trial_id))
        self._ot_study.tell(self._ot_trials[trial_id], value, state=state)
        self._completed_trials.add(trial_id)
