"""Benchmark: sequential transfer (``--source-data``) vs the same search without it.

- **target**: ``--rows`` rows of the shared SST-2 training pool (stratified, as in
  ``robustness.py``), scored on ``--test-rows`` rows of its test split;
- **source**: ``--source-rows`` SNLI pairs sampled from ``../shared/data/snli/dev.csv``
  (SNLI ships no training split here: the dev pairs are the source task's data);
- both searches: ``autotransfer search`` with ``search_spaces/text-cls-local.yaml`` (the two
  shared MiniLM encoders), the CLI defaults and the same ``--num-samples`` and seed, one after
  the other in this run; the second adds ``--source-data``, so its space holds four backbones
  (each MiniLM, plain and ``+source``) for the same number of trials.

Prints and writes: each search's test accuracy and wall time, the source stage's cost and source
validation accuracy per backbone, and per backbone the best target validation accuracy without
and with the source stage (from the ``--source-data`` run, where both were searched).

    python benchmarks/sequential.py                       # ~1.5 h on 2 CPU cores
    python benchmarks/sequential.py --backbones paraphrase-MiniLM-L3-v2 --rows 1000   # one backbone, ~40 min
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cli_search, provenance  # noqa: E402
from robustness import make_case  # noqa: E402
from text_cls import BACKBONES  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SNLI = REPO.parent / "shared" / "data" / "snli" / "dev.csv"


def search(data: Path, out: Path, backbones: list[Path], seed: int, num_samples: int,
           source: Path | None) -> dict:
    results, best, wall = cli_search(
        ["--task", "text-cls", "--data", str(data), "--space", str(REPO / "search_spaces" / "text-cls-local.yaml"),
         "--backbones", ",".join(map(str, backbones)), "--seed", str(seed), "--num-samples", str(num_samples)]
        + (["--source-data", str(source)] if source else []), out)
    test = json.loads((out / "test_metrics.json").read_text())
    return {"test_accuracy": test["accuracy"], "wall_s": round(wall, 1),
            "best": {"backbone": Path(best["backbone"]).name, "strategy": best["strategy"],
                     "validation_accuracy": best["best_metric"]},
            "soup_exported": bool((results.get("soup") or {}).get("exported")),
            "trials": [{"backbone": Path(t["backbone"]).name, "strategy": t["strategy"], "status": t["status"],
                        "validation_accuracy": t["best_metric"], "recipe": bool(t["params"].get("recipe"))}
                       for t in results["trials"]],
            "source_stage": results.get("source_stage")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1000, help="target training rows (SST-2)")
    ap.add_argument("--source-rows", type=int, default=3000, help="SNLI pairs for the source stage")
    ap.add_argument("--test-rows", type=int, default=1000)
    ap.add_argument("--num-samples", type=int, default=8, help="trials of each search")
    ap.add_argument("--backbones", default=",".join(b.name for b in BACKBONES),
                    help="shared text backbones by folder name")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    args = ap.parse_args()
    by_name = {b.name: b for b in BACKBONES}
    backbones = [by_name[n] for n in args.backbones.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="autotransfer-sequential-"))
    target, _ = make_case(tmp / "case", "sst2", args.rows, args.test_rows, args.seed)
    source = tmp / "snli.csv"
    pd.read_csv(SNLI).sample(args.source_rows, random_state=args.seed).to_csv(source, index=False)

    runs = {}
    for arm, src in (("without", None), ("with_source", source)):
        runs[arm] = search(target, tmp / arm, backbones, args.seed, args.num_samples, src)
        r = runs[arm]
        print(f"{arm:>12}: test accuracy {r['test_accuracy']:.4f}, {r['wall_s']:.0f}s, best "
              f"{r['best']['strategy']} on {r['best']['backbone']} (validation {r['best']['validation_accuracy']:.4f})",
              flush=True)
    stage = runs["with_source"]["source_stage"] or {}
    for st in stage.get("stages", []):
        print(f"source stage {Path(st['backbone']).name}: SNLI validation accuracy {st['validation_metric']:.4f}, "
              f"{st['steps']} steps, {st['seconds']:.0f}s")
    for row in stage.get("comparison", []):
        print(f"{Path(row['backbone']).name}: best target validation without {row['without']} / with {row['with']}")
    summary = {"test_without": runs["without"]["test_accuracy"], "test_with_source": runs["with_source"]["test_accuracy"],
               "test_difference": runs["with_source"]["test_accuracy"] - runs["without"]["test_accuracy"],
               "wall_ratio_with_over_without": runs["with_source"]["wall_s"] / runs["without"]["wall_s"],
               "source_stage_seconds": sum(st["seconds"] for st in stage.get("stages", [])),
               "per_backbone_validation_gain": {Path(r["backbone"]).name: r["gain"]
                                                for r in stage.get("comparison", [])}}
    print(json.dumps(summary))
    args.out.write_text(json.dumps({"benchmark": "sequential", **provenance(("torch", "transformers", "ray", "optuna")),
                                    "settings": {k: str(v) for k, v in vars(args).items()},
                                    "runs": runs, "summary": summary}, indent=2, default=str))
    print("->", args.out)


if __name__ == "__main__":
    main()
