"""Benchmark: how search wall time grows with the training rows (text), same trial budget.

Runs the same search (one backbone, MiniLM-L3, all four strategies; the seeded random
sampler so every size runs the same configurations; FIFO so no trial is cut short
differently at different sizes) on stratified SST-2 samples of 1k, 4k and 16k training
rows, validation = the full dev set at every size.  Reports each run's wall time,
trial-seconds, preparation (tokenization) time, and the growth exponent
``log(wall ratio) / log(rows ratio)`` between consecutive sizes (target: <= 1, i.e. no
faster than linear in rows).

    python benchmarks/data_scaling.py                 # ~25 minutes on 2 CPU cores
    python benchmarks/data_scaling.py --rows 500 2000 --num-samples 2   # quick look
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import provenance  # noqa: E402
from text_cls import BACKBONES, SST2, make_data  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[1000, 4000, 16000])
    ap.add_argument("--num-samples", type=int, default=4)
    ap.add_argument("--max-epochs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    args = ap.parse_args()
    backbone = BACKBONES[1]  # paraphrase-MiniLM-L3-v2: the cheaper one, so 16k rows fit in minutes
    if not SST2.is_dir() or not backbone.is_dir():
        sys.exit(f"needs {SST2} and {backbone}")

    import autotransfer

    tmp = Path(tempfile.mkdtemp(prefix="autotransfer-scaling-"))
    runs = []
    for rows in sorted(args.rows):
        data = make_data(tmp / f"sst2-{rows}", rows, args.seed)
        start = time.perf_counter()
        result = autotransfer.search(
            task="text-cls", data=data, space=REPO / "search_spaces" / "text-cls-local.yaml",
            backbones=[str(backbone)], num_samples=args.num_samples, max_epochs=args.max_epochs,
            sampler="random", scheduler="fifo", seed=args.seed, dashboard=False, output=tmp / f"search-{rows}",
            # the same 4 trials of one epoch at every size: the small-data step floor would train the 1k rows
            # longer than one epoch (and protected recipe trials would add two), hiding how cost grows with rows
            min_steps=0, baseline=False,
        )
        wall = time.perf_counter() - start
        prep = result.stats.get("preparation") or {}
        run = {
            "train_rows": rows, "wall_s": wall,
            "trial_seconds": sum(r.wall_time_s for r in result.records),
            "trial_epochs": sum(r.epochs for r in result.records),
            "preparation": prep,
            "first_result_s": result.stats.get("first_result_s"),
            "best": {"strategy": result.best.strategy, "validation_accuracy": result.best.best_metric},
            "test_accuracy": result.test_metrics["accuracy"],
            "configs": sorted(json.dumps(r.config, sort_keys=True) for r in result.records),
        }
        runs.append(run)
        print(f"{rows} rows: {wall:.0f}s wall, {run['trial_seconds']:.0f} trial-seconds, "
              f"best validation {run['best']['validation_accuracy']:.4f} ({run['best']['strategy']})", flush=True)

    same_configs = all(r["configs"] == runs[0]["configs"] for r in runs)
    steps = []
    for a, b in zip(runs, runs[1:]):
        rows_ratio = b["train_rows"] / a["train_rows"]
        steps.append({
            "from_rows": a["train_rows"], "to_rows": b["train_rows"], "rows_ratio": rows_ratio,
            "wall_ratio": b["wall_s"] / a["wall_s"],
            "trial_seconds_ratio": b["trial_seconds"] / a["trial_seconds"],
            "wall_exponent": math.log(b["wall_s"] / a["wall_s"]) / math.log(rows_ratio),
            "trial_seconds_exponent": math.log(b["trial_seconds"] / a["trial_seconds"]) / math.log(rows_ratio),
        })
    out = {
        "benchmark": "data_scaling",
        **provenance(("torch", "transformers", "ray", "optuna")),
        "setup": {"backbone": backbone.name, "num_samples": args.num_samples, "max_epochs": args.max_epochs,
                  "sampler": "random", "scheduler": "fifo", "validation_rows": 872,
                  "same_configs_at_every_size": same_configs},
        "runs": [{k: v for k, v in r.items() if k != "configs"} for r in runs],
        "steps": steps,
        "no_faster_than_linear": all(s["wall_exponent"] <= 1.0 for s in steps),
    }
    for r in runs:
        r.pop("configs")
    args.out.write_text(json.dumps(out, indent=2, default=str))
    print(json.dumps({"steps": steps, "no_faster_than_linear": out["no_faster_than_linear"]}, indent=2))


if __name__ == "__main__":
    main()
