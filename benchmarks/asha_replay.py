"""Estimate: what would asynchronous ASHA spend on recorded learning curves?

Replays the validation curves that ``early_stopping.py`` recorded for its FIFO search
(every trial ran to the end) through Ray Tune's asynchronous successive-halving rule
(``ray.tune.schedulers.ASHAScheduler``: rungs at ``grace * rf**k`` iterations, a trial is
stopped at a rung when it is below the ``1 - 1/rf`` quantile of the results already
recorded there, the first to arrive always goes on) with ``--workers`` trials at a time in
random arrival orders.  Every evaluation is taken to cost the same time.

It is an estimate from recorded curves, not a measurement: it says how much of the
ratio ASHA / FIFO comes from the arrival order alone, and how it moves with the number
of trials (searches larger than the recorded one draw curves with replacement plus a
little noise, ``--noise``).

    python benchmarks/asha_replay.py --curves benchmarks/early_stopping_long.json
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import provenance  # noqa: E402


def replay(curves: list[list[float]], rf: float, grace: int, workers: int, rng: random.Random) -> tuple[float, float]:
    """(trial-iterations ASHA / all iterations, best-metric loss against running every trial to the end)."""
    max_t = max(len(c) for c in curves)
    milestones, k = [], 0
    while grace * rf**k < max_t:
        milestones.append(int(grace * rf**k))
        k += 1
    rungs: dict[int, dict[int, float]] = {m: {} for m in milestones}
    waiting = list(range(len(curves)))
    events: list[tuple[float, float, int, int]] = []  # (time, tie-break, trial, iteration)
    for _ in range(workers):
        if waiting:
            heapq.heappush(events, (1.0, rng.random(), waiting.pop(0), 1))
    ran: dict[int, int] = {}
    while events:
        now, _, i, it = heapq.heappop(events)
        value, stop = curves[i][it - 1], False
        for m in sorted(milestones, reverse=True):  # Ray records a trial at the highest rung it reached
            if it < m or i in rungs[m]:
                continue
            if rungs[m] and value < np.nanpercentile(list(rungs[m].values()), (1 - 1 / rf) * 100):
                stop = True
            rungs[m][i] = value
            break
        if stop or it >= len(curves[i]):
            ran[i] = it
            if waiting:
                heapq.heappush(events, (now + 1, rng.random(), waiting.pop(0), 1))
        else:
            heapq.heappush(events, (now + 1, rng.random(), i, it + 1))
    spent = sum(ran.values()) / sum(len(c) for c in curves)
    loss = max(max(c) for c in curves) - max(max(curves[i][:n]) for i, n in ran.items())
    return spent, loss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--curves", type=Path, default=Path(__file__).with_name("early_stopping_long.json"))
    ap.add_argument("--num-samples", type=int, nargs="+", default=[16, 32, 48])
    ap.add_argument("--reduction-factor", type=float, nargs="+", default=[3.0, 4.0])
    ap.add_argument("--grace-iterations", type=int, default=2, help="the grace period in evaluations (2 = 1 epoch)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--orders", type=int, default=300)
    ap.add_argument("--noise", type=float, default=0.003, help="std of the noise on resampled curves")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    args = ap.parse_args()
    recorded = json.loads(args.curves.read_text())
    curves = [[v for _, v in t["history"]] for t in recorded["curves"]["fifo"]]
    rows = []
    for n in args.num_samples:
        for rf in args.reduction_factor:
            rng = random.Random(0)
            out = []
            for _ in range(args.orders):
                if n == len(curves):  # the recorded trials themselves, in a random order
                    drawn = rng.sample(curves, n)
                else:
                    drawn = [[v + rng.gauss(0, args.noise) for v in rng.choice(curves)] for _ in range(n)]
                out.append(replay(drawn, rf, args.grace_iterations, args.workers, rng))
            spent = np.array([s for s, _ in out])
            loss = np.array([x for _, x in out])
            rows.append({"num_samples": n, "reduction_factor": rf, "mean": float(spent.mean()),
                         "p10": float(np.percentile(spent, 10)), "p90": float(np.percentile(spent, 90)),
                         "share_at_or_below_0.4": float((spent <= 0.4).mean()),
                         "share_losing_over_1_point": float((loss > 0.01).mean())})
            print(json.dumps(rows[-1]))
    result = {"benchmark": "asha_replay", **provenance(), "estimate_not_measurement": True,
              "setup": {"curves": args.curves.name, "recorded_trials": len(curves), "workers": args.workers,
                        "grace_iterations": args.grace_iterations, "orders": args.orders, "noise": args.noise},
              "rows": rows}
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
