"""Benchmark: Ray's own Optuna searcher vs the fidelity-correct one, same seeds, same budget.

Ray's ``OptunaSearch`` tells Optuna an ASHA-stopped trial as ``COMPLETE`` with its last
(early) score; ``autotransfer.searcher.FidelitySearch`` tells it ``PRUNED`` with its
intermediate values (and a finished trial as ``COMPLETE`` with its best round).  For each
seed, the same search runs twice in this one process, differing only in the searcher:

- data: ``--rows`` stratified SST-2 sentences (the search carves its validation split by
  its default rule), 1,000 test sentences scored by the exported model;
- search: ``search_spaces/text-cls-local.yaml`` (both shared MiniLMs), ``--num-samples``
  trials, ASHA, the CLI's defaults except the budget options given here;
- per seed and searcher: best validation metric, test accuracy of the exported model,
  wall time, trials stopped early.

Prints mean and spread per searcher and writes JSON with every run.  A tie is a result.

    python benchmarks/searcher.py --seeds 0,1,2,3,4          # ~10 searches; hours on 2 CPU cores
    python benchmarks/searcher.py --seeds 0,1 --min-steps 0  # a quicker look (pure-epoch budget)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import provenance  # noqa: E402
from robustness import make_case  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def run(data: Path, out: Path, seed: int, fidelity: bool, args: argparse.Namespace) -> dict:
    import autotransfer
    import autotransfer.searcher as searcher
    from ray.tune.search.optuna import OptunaSearch

    original = searcher.FidelitySearch
    if not fidelity:
        searcher.FidelitySearch = OptunaSearch  # what runner.run_tune builds; Ray's own behaviour
    try:
        start = time.perf_counter()
        result = autotransfer.search(task="text-cls", data=data, space=REPO / "search_spaces" / "text-cls-local.yaml",
                                     num_samples=args.num_samples, seed=seed, dashboard=False, output=out,
                                     min_steps=args.min_steps, max_epochs=args.max_epochs, soup=False)
        wall = time.perf_counter() - start
    finally:
        searcher.FidelitySearch = original
    return {"seed": seed, "searcher": "fidelity" if fidelity else "ray-default",
            "best_validation": result.best.best_metric, "test_accuracy": result.test_metrics["accuracy"],
            "best": {"backbone": Path(result.best.backbone).name, "strategy": result.best.strategy},
            "stopped_early": sum(r.status == "stopped_early" for r in result.records), "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--num-samples", type=int, default=12)
    ap.add_argument("--max-epochs", type=int, default=3)
    ap.add_argument("--min-steps", type=int, default=300)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="autotransfer-searcher-"))
    runs = []
    for seed in (int(s) for s in args.seeds.split(",")):
        data, _ = make_case(tmp / f"seed{seed}", "sst2", args.rows, 1000, seed)
        for fidelity in (False, True):
            runs.append(run(data, tmp / f"seed{seed}-{int(fidelity)}", seed, fidelity, args))
            print(json.dumps(runs[-1]), flush=True)
    summary = {}
    for name in ("ray-default", "fidelity"):
        mine = [r for r in runs if r["searcher"] == name]
        for key in ("best_validation", "test_accuracy", "wall_s"):
            values = [r[key] for r in mine]
            summary[f"{name}_{key}_mean"] = statistics.mean(values)
            summary[f"{name}_{key}_stdev"] = statistics.stdev(values) if len(values) > 1 else 0.0
    args.out.write_text(json.dumps({"benchmark": "searcher", **provenance(), "runs": runs, "summary": summary},
                                   indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
