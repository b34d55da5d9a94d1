"""How sure the ranking is: 95% intervals of each trial's validation metric, and ties with the leader.

Each trial's best checkpoint keeps its validation predictions; trials are compared on
the same validation examples, so the comparison with the leader is *paired*: a
bootstrap over examples (``scipy.stats.bootstrap``, percentile intervals) of the
metric difference.  A trial is *tied* with the leader when that difference's 95%
interval contains 0: the validation set cannot tell them apart, and the choice
between them is a coin toss the user should know about.
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional

import numpy as np

#: bootstrap resamples (the interval ends move by well under 0.005 between seeds at this count)
RESAMPLES = 1000
LEVEL = 0.95


def _bootstrap(data: tuple[np.ndarray, ...], statistic: Callable[..., float], seed: int,
               resamples: int = RESAMPLES) -> tuple[float, float]:
    """Percentile interval of ``statistic(*data)`` over resamples of the examples (rows), all arrays alike.

    The example indices are what is resampled, so an example may be a row of several values (a sentence's
    tags) and the resample stays paired across ``data``.
    """
    from scipy.stats import bootstrap

    res = bootstrap((np.arange(len(data[0])),), lambda idx: statistic(*(a[idx] for a in data)), vectorized=False,
                    n_resamples=resamples, confidence_level=LEVEL, method="percentile",
                    random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def intervals(y_true: np.ndarray, predictions: Mapping[str, np.ndarray], leader: Optional[str],
              metric: Callable[[np.ndarray, np.ndarray], float], seed: int = 0, resamples: int = RESAMPLES
              ) -> dict[str, dict[str, object]]:
    """Per trial id: ``interval`` [low, high] of the metric and ``tied`` (with ``leader``; the leader itself:
    True).  Trials whose predictions do not match the validation labels in length are left out.  A costly
    metric (COCO mAP) may ask for fewer ``resamples``."""
    out: dict[str, dict[str, object]] = {}
    n = len(y_true)
    if n < 2:
        return out
    lead = predictions.get(leader) if leader is not None else None
    for trial_id, pred in predictions.items():
        if len(pred) != n:
            continue
        low, high = _bootstrap((y_true, pred), metric, seed, resamples)
        tied: Optional[bool] = None
        if lead is not None and len(lead) == n:
            if trial_id == leader:
                tied = True
            else:
                d_low, d_high = _bootstrap((y_true, lead, pred), lambda y, a, b: metric(y, a) - metric(y, b), seed,
                                          resamples)
                tied = d_low <= 0.0 <= d_high
        out[trial_id] = {"interval": [round(low, 4), round(high, 4)], "tied": tied}
    return out
