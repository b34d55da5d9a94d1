"""How sure the ranking is: 95% intervals of each trial's validation metric, and ties with the leader.

Each trial's best checkpoint keeps its validation predictions; trials are compared on
the same validation examples, so the comparison with the leader is *paired*: a
bootstrap over examples (``scipy.stats.bootstrap``, percentile intervals) of the
metric difference.  A trial is *tied* with the leader when that difference's 95%
interval contains 0: the validation set cannot tell them apart, and the choice
between them is a coin toss the user should know about.

The bootstraps are kept within a time budget, because a costly metric makes them dearer than the search
(COCO mAP of 120 validation images with 100 detections each takes ~0.4 s; 8 trials x 300 evaluations took
longer than a 150 s search on a GPU).  Two things bound the cost:

- each trial's metric is evaluated once per resample: the resample indices are the same for every trial (one
  seed), and a memo keyed by the indices hands the paired comparison the values the intervals already computed
  (the leader's included), so a trial costs ``resamples`` evaluations instead of three times that;
- a budget: one evaluation is timed, and the resamples are lowered so that every trial fits (not below
  :data:`MIN_RESAMPLES`); when even that does not fit, the best trials (``predictions`` in rank order) get
  intervals and the rest none, and :class:`Coverage` says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import numpy as np

#: bootstrap resamples (the interval ends move by well under 0.005 between seeds at this count)
RESAMPLES = 1000
#: fewer resamples than this and a 95% percentile interval's ends are mostly noise: rather skip trials
MIN_RESAMPLES = 30
LEVEL = 0.95
#: the intervals may cost this share of the search's own wall time ...
BUDGET_SHARE = 0.1
#: ... but never less than this many seconds (a quick search on a small validation set costs nothing to score)
BUDGET_FLOOR_S = 60.0


def budget_for(search_wall_s: float) -> float:
    """Seconds the intervals of a search that took ``search_wall_s`` may cost."""
    return max(BUDGET_FLOOR_S, BUDGET_SHARE * search_wall_s)


@dataclass
class Coverage:
    """How far the intervals went: trials with intervals of those that could have them, at how many resamples."""

    trials: int
    of: int
    resamples: int
    metric_s: float
    budget_s: Optional[float]

    @property
    def complete(self) -> bool:
        return self.trials == self.of

    def to_dict(self) -> dict[str, Any]:
        return {"trials": self.trials, "of": self.of, "resamples": self.resamples,
                "metric_s": round(self.metric_s, 4), "budget_s": self.budget_s}


class _Memo:
    """``metric(y_true[idx], pred[idx])`` per (trial, resample indices), computed once.

    Keyed by a 16-byte digest of the indices (a resample of 1,000 rows is 8 kB; 50 trials x 1,000 resamples of
    them would be 400 MB); :meth:`forget` drops a finished trial's values.
    """

    def __init__(self, y_true: np.ndarray, metric: Callable[[np.ndarray, np.ndarray], float]) -> None:
        self.y_true, self.metric, self.values = y_true, metric, {}

    def __call__(self, key: str, pred: np.ndarray, idx: np.ndarray) -> float:
        import hashlib

        k = (key, hashlib.blake2b(np.ascontiguousarray(idx).tobytes(), digest_size=16).digest())
        if k not in self.values:
            self.values[k] = self.metric(self.y_true[idx], pred[idx])
        return self.values[k]

    def forget(self, key: str) -> None:
        self.values = {k: v for k, v in self.values.items() if k[0] != key}


def _bootstrap(n: int, statistic: Callable[[np.ndarray], float], seed: int, resamples: int) -> tuple[float, float]:
    """Percentile interval of ``statistic(indices)`` over resamples of the ``n`` examples (rows).

    The example indices are what is resampled, so an example may be a row of several values (a sentence's
    tags) and the resample stays paired across trials; the same seed draws the same resamples every call.
    """
    from scipy.stats import bootstrap

    res = bootstrap((np.arange(n),), statistic, vectorized=False, n_resamples=resamples,
                    confidence_level=LEVEL, method="percentile", random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def intervals(y_true: np.ndarray, predictions: Mapping[str, np.ndarray], leader: Optional[str],
              metric: Callable[[np.ndarray, np.ndarray], float], seed: int = 0, resamples: int = RESAMPLES,
              budget_s: Optional[float] = None) -> tuple[dict[str, dict[str, object]], Coverage]:
    """Per trial id: ``interval`` [low, high] of the metric and ``tied`` (with ``leader``; the leader itself:
    True); and the :class:`Coverage`.  Trials whose predictions do not match the validation labels in length
    are left out.  ``predictions`` come best first: with ``budget_s`` the trials at the end are the ones left
    without intervals when even :data:`MIN_RESAMPLES` resamples of all of them would overrun it."""
    import time

    n = len(y_true)
    usable = {k: v for k, v in predictions.items() if len(v) == n}
    if n < 2 or not usable:
        return {}, Coverage(0, len(usable), 0, 0.0, budget_s)
    lead = usable.get(leader) if leader is not None else None
    start = time.perf_counter()
    metric(y_true, next(iter(usable.values())))
    cost = max(time.perf_counter() - start, 1e-6)  # seconds per evaluation; each trial costs one per resample
    take, rounds = len(usable), resamples
    if budget_s is not None and cost * resamples * take > budget_s:
        rounds = max(min(resamples, MIN_RESAMPLES), int(budget_s / (cost * take)))
        take = max(1, min(take, int(budget_s / (cost * rounds))))
    memo = _Memo(y_true, metric)
    out: dict[str, dict[str, object]] = {}
    for trial_id, pred in list(usable.items())[:take]:
        low, high = _bootstrap(n, lambda idx: memo(trial_id, pred, idx), seed, rounds)
        tied: Optional[bool] = None
        if lead is not None:
            if trial_id == leader:
                tied = True
            else:
                d_low, d_high = _bootstrap(
                    n, lambda idx: memo(leader, lead, idx) - memo(trial_id, pred, idx), seed, rounds)
                tied = d_low <= 0.0 <= d_high
        out[trial_id] = {"interval": [round(low, 4), round(high, 4)], "tied": tied}
        if trial_id != leader:
            memo.forget(trial_id)
    return out, Coverage(take, len(usable), rounds, cost, budget_s)
