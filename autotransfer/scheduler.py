"""ASHA that knows small validation sets are noisy and that recipe trials are protected.

Ray Tune's ASHA stops a trial at a rung when its score is below the rung's cut-off
(the ``1 - 1/reduction_factor`` quantile of the scores recorded there).  On a
validation set of 120 examples two trials 4 points apart at 80% accuracy cannot
be told apart, so that rule stops trials on noise.  :class:`NoiseAwareASHA`
keeps ASHA's rungs and cut-offs and changes only the stop decision:

- a trial whose configuration is one of the task's standard recipes
  (``config["recipe"]``) is never stopped: the search then always holds what a
  user would have got by hand;
- any other trial is stopped only if its score is more than one standard error
  below the cut-off, the standard error of a proportion at the cut-off measured
  on the trial's validation examples: ``sqrt(p (1 - p) / n)`` (for accuracy exact;
  for the other metrics an approximation of the same size).  With 872 examples
  the band is about 1.4 points, with 120 about 3.7.

Both read Ray's ASHA bookkeeping (``_trial_info``, ``_rungs``); the tests pin
the behaviour so a Ray change shows up.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from autotransfer.results import RECIPE, VAL_EXAMPLES


def proportion_se(p: float, n: Optional[int]) -> float:
    """Standard error of a proportion ``p`` measured on ``n`` examples (0 when ``n`` is unknown)."""
    if not n or n <= 0 or p is None or not math.isfinite(p):
        return 0.0
    p = min(max(float(p), 1.0 / n), 1.0 - 1.0 / n) if n > 1 else 0.5
    return math.sqrt(p * (1.0 - p) / n)


class NoiseAwareASHA(ASHAScheduler):
    """ASHA that spares recipe trials and trials within one standard error of the cut-off."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        #: trial id -> why ASHA's stop was overruled ("recipe" or "within noise of the cut-off ...")
        self.spared: dict[str, str] = {}

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        if action != TrialScheduler.STOP or result.get(self._time_attr, 0) >= self._max_t:
            return action  # continuing, or at the end of its budget anyway
        if (getattr(trial, "config", None) or {}).get(RECIPE):
            return self._spare(trial, "recipe")
        cutoff = self._cutoff_for(trial, result)
        score = self._metric_op * float(result[self._metric])
        if cutoff is not None:
            band = proportion_se(abs(cutoff), result.get(VAL_EXAMPLES))
            if score + band >= cutoff:
                return self._spare(trial, f"within noise of the cut-off ({abs(cutoff):.4f} +- {band:.4f})")
        return action

    def _spare(self, trial: Any, why: str) -> str:
        self._num_stopped -= 1  # ASHA counted the stop it proposed
        self.spared[trial.trial_id] = why
        return TrialScheduler.CONTINUE

    def _cutoff_for(self, trial: Any, result: dict) -> Optional[float]:
        """The cut-off of the rung this result was just recorded at, from the other trials' scores."""
        bracket = self._trial_info.get(trial.trial_id)
        if bracket is None:
            return None
        t = result[self._time_attr]
        for milestone, recorded in bracket._rungs:  # highest rung first
            if t >= milestone and trial.trial_id in recorded:
                others = {k: v for k, v in recorded.items() if k != trial.trial_id}
                cutoff = bracket.cutoff(others)
                return None if cutoff is None else float(cutoff)
        return None
