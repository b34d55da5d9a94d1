"""Benchmark: does early stopping pay?  ASHA vs FIFO (no stopping) on the same trials, side by side.

Both searches use the seeded random sampler, so they run exactly the same configurations
(both MiniLM backbones x four strategies, ``search_spaces/text-cls-local.yaml``) on the same
SST-2 sample.  Reports total trial-epochs and trial-seconds of each (target: ASHA / FIFO <= 0.4)
and the best validation accuracy of each (target: within 1 point), plus how often data was
tokenized against how many trials ran.

    python benchmarks/early_stopping.py          # ~15 minutes on 2 CPU cores
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

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    import autotransfer
    from text_cls import make_data

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-rows", type=int, default=1000)
    ap.add_argument("--num-samples", type=int, default=16)
    ap.add_argument("--max-epochs", type=int, default=3)
    ap.add_argument("--grace-period", type=float, default=1.0, help="ASHA grace period in epochs (CLI default 1)")
    ap.add_argument("--reduction-factor", type=float, default=2.0, help="ASHA reduction factor (CLI default 2)")
    ap.add_argument("--evals-per-epoch", type=int, default=2, help="evaluations (rungs) per epoch (CLI default 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="autotransfer-asha-"))
    data = make_data(tmp / "sst2", args.train_rows, args.seed)
    runs = {}
    for scheduler in ("asha", "fifo"):
        start = time.perf_counter()
        result = autotransfer.search(
            task="text-cls", data=data, space=REPO / "search_spaces" / "text-cls-local.yaml",
            num_samples=args.num_samples, max_epochs=args.max_epochs, sampler="random", scheduler=scheduler,
            grace_period=args.grace_period, reduction_factor=args.reduction_factor,
            evals_per_epoch=args.evals_per_epoch,
            seed=args.seed, dashboard=False, output=tmp / scheduler,
        )
        runs[scheduler] = {
            "wall_s": time.perf_counter() - start,
            "trial_epochs": sum(r.epochs for r in result.records),
            "trial_seconds": sum(r.wall_time_s for r in result.records),
            "best_val_accuracy": result.best.best_metric,
            "best": {"backbone": Path(result.best.backbone).name, "strategy": result.best.strategy},
            "test_accuracy": result.test_metrics["accuracy"],
            "stopped_early": sum(1 for r in result.records if r.status == "stopped_early"),
            "trials": len(result.records),
            "preparation": result.stats.get("preparation"),
            "first_result_s": result.stats.get("first_result_s"),
            # each trial's validation curve, so other ASHA settings can be compared against FIFO's curves offline
            "curves": sorted(({"config": r.config, "status": r.status, "history": r.history}
                              for r in result.records), key=lambda c: json.dumps(c["config"], sort_keys=True)),
        }
        print(f"{scheduler}: best val {result.best.best_metric:.4f}, {runs[scheduler]['trial_epochs']:.1f} "
              f"trial-epochs, {runs[scheduler]['wall_s']:.0f}s", flush=True)
    a, f = runs["asha"], runs["fifo"]
    out = {
        "benchmark": "early_stopping",
        **provenance(("torch", "transformers", "ray", "optuna")),
        "setup": {"train_rows": args.train_rows, "num_samples": args.num_samples, "max_epochs": args.max_epochs,
                  "grace_period_epochs": args.grace_period, "reduction_factor": args.reduction_factor,
                  "evals_per_epoch": args.evals_per_epoch,
                  "sampler": "random (seeded): both searches run the same configurations"},
        "same_configurations": [c["config"] for c in a["curves"]] == [c["config"] for c in f["curves"]],
        "asha": {k: v for k, v in a.items() if k != "curves"},
        "fifo": {k: v for k, v in f.items() if k != "curves"},
        "curves": {"asha": a["curves"], "fifo": f["curves"]},
        "ratios": {
            "trial_epochs_asha_over_fifo": a["trial_epochs"] / f["trial_epochs"],
            "trial_seconds_asha_over_fifo": a["trial_seconds"] / f["trial_seconds"],
            "wall_time_asha_over_fifo": a["wall_s"] / f["wall_s"],
            "best_val_accuracy_points_asha_minus_fifo": 100 * (a["best_val_accuracy"] - f["best_val_accuracy"]),
            "tokenization_runs_per_trial": (a["preparation"] or {}).get("preprocessing_runs", 0) / a["trials"],
        },
        "targets": {"trial_epochs_asha_over_fifo": "<= 0.4", "best_val_accuracy_points_asha_minus_fifo": ">= -1"},
    }
    args.out.write_text(json.dumps(out, indent=2))
    print(json.dumps(out["ratios"], indent=2))


if __name__ == "__main__":
    main()
