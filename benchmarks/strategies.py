"""Benchmark: the search with the phased strategies and schedule/optimizer dimensions vs without them, and the
best single trial vs the greedy model soup (issue #15).

Both searches run in this one process on the same data, seed and trial budget:

- **without**: the shipped local space (``search_spaces/<task>-local.yaml``: linear probe, freeze depth, full
  fine-tuning, LoRA);
- **with**: the same space plus ``lp_ft`` (linear probe, then full fine-tuning with layer-wise decay),
  ``gradual_unfreeze`` (one layer group more every ``unfreeze_every`` epochs, discriminative rates) and the
  shared dimensions ``scheduler: linear|cosine|constant`` and ``optimizer: adamw|sgd``.

Data: images = ants vs bees (hymenoptera ``train`` split 80/20 into train/validation, ``val`` as the test set,
as ``image_cls.py``); text = ``--rows`` stratified SST-2 sentences and 1,000 test sentences (as
``robustness.py``).  Each search exports a soup when it beats its best trial on validation; its JSON then
records the best trial's own test score beside the soup's.

    python benchmarks/strategies.py --task image-cls --min-steps 0      # ~35 minutes on 2 CPU cores
    python benchmarks/strategies.py --task text-cls --rows 1000         # ~75 minutes
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import provenance  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
#: what "with" adds to the shipped space: the phased strategies (rates as the space's full fine-tuning) and the
#: schedule and optimizer dimensions
PHASED = {"lp_ft": ("C", "lr", "head_lr", "layer_decay"),
          "gradual_unfreeze": ("lr", "head_lr", "layer_decay")}


def spaces(task: str, folder: Path) -> dict[str, Path]:
    shipped = REPO / "search_spaces" / f"{task}-local.yaml"
    raw = yaml.safe_load(shipped.read_text())
    base = shipped.parent.resolve()
    raw["backbones"] = [_absolute(b, base) for b in raw["backbones"]]
    without = folder / "without.yaml"
    without.write_text(yaml.safe_dump(raw, sort_keys=False))
    full = raw["strategies"]["full"]
    probe = raw["strategies"].get("linear_probe") or {}
    extra = {"lp_ft": {**{k: v for k, v in probe.items() if k in PHASED["lp_ft"]},
                       **{k: v for k, v in full.items() if k in PHASED["lp_ft"]}},
             "gradual_unfreeze": {**{k: v for k, v in full.items() if k in PHASED["gradual_unfreeze"]},
                                  "unfreeze_every": {"distribution": "uniform", "low": 0.25, "high": 1.0}}}
    raw["strategies"] = {**raw["strategies"], **extra}
    raw["params"] = {**raw.get("params", {}), "scheduler": ["linear", "cosine", "constant"],
                     "optimizer": ["adamw", "sgd"]}
    with_ = folder / "with.yaml"
    with_.write_text(yaml.safe_dump(raw, sort_keys=False))
    return {"without": without, "with": with_}


def _absolute(name: str, base: Path) -> str:
    prefix = "local-dir:" if name.startswith("local-dir:") else ""
    path = name[len(prefix):]
    if path.startswith(("./", "../")):
        return prefix + str((base / path).resolve())
    return name


def data_for(task: str, folder: Path, args: argparse.Namespace) -> Path:
    if task == "image-cls":
        import image_cls

        return image_cls.make_splits(folder / "hymenoptera", args.seed)
    from robustness import make_case

    return make_case(folder / "case", "sst2", args.rows, 1000, args.seed)[0]


def run(task: str, data: Path, space: Path, out: Path, args: argparse.Namespace) -> dict:
    import autotransfer

    start = time.perf_counter()
    result = autotransfer.search(task=task, data=data, space=space, num_samples=args.num_samples, seed=args.seed,
                                 dashboard=False, output=out,
                                 **({} if args.min_steps is None else {"min_steps": args.min_steps}))
    wall = time.perf_counter() - start
    meta = json.loads((out / "results.json").read_text())
    soup = meta.get("soup") or {}
    best = result.best
    return {"test_accuracy": result.test_metrics["accuracy"], "wall_s": round(wall, 1),
            "best": {"backbone": Path(best.backbone).name, "strategy": best.strategy, "params": best.params,
                     "validation_accuracy": best.best_metric},
            "soup": {"exported": bool(soup.get("exported")), "ingredients": len(soup.get("ingredients", [])),
                     "validation": soup.get("validation_metric"),
                     "best_single_validation": soup.get("best_single_validation_metric"),
                     "best_single_test": (soup.get("selected_trial_test_metrics") or {}).get("accuracy",
                                                                                            result.test_metrics["accuracy"])},
            "trials": [{"strategy": r.strategy, "status": r.status, "validation": r.best_metric,
                        "scheduler": r.params.get("scheduler"), "optimizer": r.params.get("optimizer"),
                        "wall_s": round(r.wall_time_s, 1)} for r in result.records]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=("image-cls", "text-cls"), default="image-cls")
    ap.add_argument("--rows", type=int, default=1000, help="text-cls: SST-2 training rows")
    ap.add_argument("--num-samples", type=int, default=8)
    ap.add_argument("--min-steps", type=int, default=None, help="the step floor (default: the CLI's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="default: benchmarks/strategies_<task>.json")
    args = ap.parse_args()
    out_path = args.out or Path(__file__).with_name(f"strategies_{args.task.split('-')[0]}.json")
    tmp = Path(tempfile.mkdtemp(prefix="autotransfer-strategies-"))
    data = data_for(args.task, tmp, args)
    runs = {}
    for arm, space in spaces(args.task, tmp).items():
        runs[arm] = run(args.task, data, space, tmp / arm, args)
        r = runs[arm]
        soup = r["soup"]
        print(f"{arm:>8}: test accuracy {r['test_accuracy']:.4f} ({r['best']['strategy']} on {r['best']['backbone']}, "
              f"validation {r['best']['validation_accuracy']:.4f}), {r['wall_s']:.0f}s; soup "
              + (f"of {soup['ingredients']} exported (best single trial's test {soup['best_single_test']:.4f})"
                 if soup["exported"] else "not better on validation"), flush=True)
    summary = {"test_with_minus_without": runs["with"]["test_accuracy"] - runs["without"]["test_accuracy"],
               "wall_ratio_with_over_without": runs["with"]["wall_s"] / runs["without"]["wall_s"],
               "soup_test_gain": {arm: r["test_accuracy"] - r["soup"]["best_single_test"] for arm, r in runs.items()}}
    print(json.dumps(summary))
    out_path.write_text(json.dumps({"benchmark": "strategies", **provenance(),
                                    "settings": {k: str(v) for k, v in vars(args).items()}, "runs": runs,
                                    "summary": summary}, indent=2, default=str))
    print("->", out_path)


if __name__ == "__main__":
    main()
