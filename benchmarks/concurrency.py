"""Benchmark: on 2 cores, 2 trials x 1 CPU at a time vs 1 trial x 2 CPUs, for the same trials.

Both runs use the seeded random sampler and FIFO (no early stopping), so they train exactly
the same 8 configurations for the same epochs.  Reports trials per hour of each and the torch
thread count every trial actually used (it must follow the trial's CPU share).

    python benchmarks/concurrency.py         # ~6 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import provenance  # noqa: E402
from text_cls import make_data  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    import autotransfer

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-rows", type=int, default=400)
    ap.add_argument("--num-samples", type=int, default=8)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="autotransfer-conc-"))
    data = make_data(tmp / "sst2", args.train_rows, 0)
    runs = {}
    for name, cpus in (("2_trials_x_1_cpu", 1.0), ("1_trial_x_2_cpus", 2.0)):
        start = time.perf_counter()
        result = autotransfer.search(
            task="text-cls", data=data, space=REPO / "search_spaces" / "text-cls-local.yaml",
            num_samples=args.num_samples, max_epochs=1, sampler="random", scheduler="fifo", seed=0,
            cpus_per_trial=cpus, dashboard=False, output=tmp / name,
            # the same fixed work on both sides, as the row describes: one epoch per trial, no protected recipe
            # trials (the small-data step floor would stretch 400 rows to 24 epochs and add two trials)
            min_steps=0, baseline=False,
        )
        wall = time.perf_counter() - start
        runs[name] = {"wall_s": wall, "trials_per_hour": len(result.records) / wall * 3600,
                      "torch_threads": sorted({r.last_metrics.get("torch_threads") for r in result.records}),
                      "configs": sorted(json.dumps(r.config, sort_keys=True) for r in result.records)}
        print(f"{name}: {wall:.0f}s, {runs[name]['trials_per_hour']:.0f} trials/hour, "
              f"threads {runs[name]['torch_threads']}", flush=True)
    a, b = runs["2_trials_x_1_cpu"], runs["1_trial_x_2_cpus"]
    out = {"benchmark": "concurrency", **provenance(),
           "setup": {"train_rows": args.train_rows, "num_samples": args.num_samples, "max_epochs": 1,
                     "sampler": "random (seeded)", "scheduler": "fifo"},
           "same_configurations": a["configs"] == b["configs"],
           **{k: {kk: vv for kk, vv in v.items() if kk != "configs"} for k, v in runs.items()},
           "ratios": {"trials_per_hour_2x1_over_1x2": a["trials_per_hour"] / b["trials_per_hour"]}}
    args.out.write_text(json.dumps(out, indent=2))
    print(json.dumps(out["ratios"], indent=2))


if __name__ == "__main__":
    main()
