"""Benchmark: text training batches grouped by length vs shuffled at random, same trials side by side.

With ``batch_order: length`` the text task's training epochs come in ``transformers``' length-grouped
order (shuffled, then sorted by length within mega-batches of a few batches:
``autotransfer.tasks.text_cls.length_grouped_order``) so that a batch pads to about its rows' own length;
by default (and before 8f3a14f; grouping was the default from 8f3a14f to 2026-12-07) batches are drawn at
random and padded to their longest row.  This script runs the same trials both ways in one process, one
after the other:

- data: for each of SST-2, SUBJ and SST-5, ``--rows`` stratified training rows and ``--test-rows``
  test rows (``robustness.py``'s sampling); no choice is made here, so the test rows are the
  evaluation split and each trial's score is a test score;
- trials: ``autotransfer.training.train`` at the search's default budget (the 300-step floor: 6
  evaluation rounds), 2 threads: the text recipe (full fine-tuning, lr 2e-5) on both shared MiniLMs,
  and full fine-tuning at lr 1e-4 on MiniLM-L6.

Prints and writes per trial: padded tokens per real token in the training batches, training
throughput (samples/s over the training steps), wall time, and the final and best test accuracy of
each arm.  Targets: training throughput up by >= 1.3x; test accuracy not worse beyond noise (the
mean difference over the trials within the 1,000-row test set's 95% interval, about +-2.8 points).

    python benchmarks/length_grouping.py              # ~70 minutes on 2 CPU cores
    python benchmarks/length_grouping.py --trials 2   # the recipe on both MiniLMs only, ~45 minutes
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
from _common import PrepareSettings, write_json  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TEXT = REPO.parent / "shared" / "models" / "text"
RECIPE = {"strategy": "full", "lr": 2e-5, "head_lr": 2e-5, "layer_decay": 1.0, "weight_decay": 0.01,
          "warmup_ratio": 0.0, "batch_size": 32}
#: (backbone folder, config)
TRIALS = [("all-MiniLM-L6-v2", RECIPE), ("paraphrase-MiniLM-L3-v2", RECIPE),
          ("all-MiniLM-L6-v2", {**RECIPE, "lr": 1e-4, "head_lr": 1e-4, "warmup_ratio": 0.1})]


#: an arm -> the space's ``batch_order``
ARMS = {"random": "random", "grouped": "length"}


def padding_ratio(task, prepared, batch_size: int, epochs: int, batch_order: str) -> float:
    """Tokens in the padded training batches per real token, over ``epochs`` epochs."""
    padded = real = 0
    for epoch in range(epochs):
        for inputs, _ in task.batches(prepared, "train", batch_size, train=True, seed=epoch,
                                      config={"batch_order": batch_order}):
            mask = inputs["attention_mask"]
            padded += mask.numel()
            real += int(mask.sum())
    return padded / real


def run_trial(task, info, prepared, splits, budget, config: dict) -> dict:
    from autotransfer.training import TrialContext, train

    ctx = TrialContext(task="text-cls", backbones={info.name: info}, prepared={info.name: prepared},
                       label_names=splits.label_names, threads=2, budget=budget)
    curve: list[float] = []
    start = time.perf_counter()
    last = train({"backbone": info.name, **config}, ctx, lambda m, c: curve.append(m["accuracy"]))
    return {"wall_s": round(time.perf_counter() - start, 1), "samples_per_s": round(last["samples_per_s"], 2),
            "steps": last["step"], "final_accuracy": last["accuracy"], "best_accuracy": max(curve), "curve": curve}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="sst2,subj,sst5")
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--test-rows", type=int, default=1000)
    ap.add_argument("--min-steps", type=int, default=None, help="the step floor (default: the search's)")
    ap.add_argument("--trials", type=int, default=len(TRIALS),
                    help=f"run the first N of the {len(TRIALS)} trials per data set (the lr 1e-4 one is last)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    args = ap.parse_args()

    import transformers

    from autotransfer.budget import DEFAULT_MIN_STEPS, derive_budget
    from autotransfer.tables import load_text_splits
    from autotransfer.tasks import get_task
    from robustness import make_case

    transformers.utils.logging.set_verbosity_error()
    task = get_task("text-cls")
    cases = []
    for source in args.data.split(","):
        folder = Path(tempfile.mkdtemp(prefix="length-grouping-"))
        search_dir, _ = make_case(folder, source, args.rows, args.test_rows, args.seed)
        (search_dir / "test.tsv").rename(search_dir / "dev.tsv")  # the test rows are the evaluation split
        # a token test split (the loader wants one; no trial reads it)
        (search_dir / "test.tsv").write_text("\n".join((search_dir / "dev.tsv").read_text().split("\n")[:11]) + "\n")
        splits = load_text_splits(search_dir)
        floor = DEFAULT_MIN_STEPS if args.min_steps is None else args.min_steps
        budget = derive_budget(len(splits.split("train").labels), 32, 3, 2, 2, min_steps=floor)
        for model, config in TRIALS[:args.trials]:
            info = task.describe_backbone(str(TEXT / model), PrepareSettings(search_dir))
            prepared, _ = task.prepare([info], splits, PrepareSettings(search_dir))
            row: dict = {"data": f"{source}:{args.rows}", "backbone": model, "lr": config["lr"],
                         "train_examples": len(splits.split("train").labels),
                         "test_examples": len(splits.split("validation").labels)}
            for arm, batch_order in ARMS.items():
                epochs = budget.steps(32) * 32 // row["train_examples"] + 1
                row[arm] = {"padded_per_real_token": round(padding_ratio(task, prepared[info.name], 32, epochs,
                                                                         batch_order), 3),
                            **run_trial(task, info, prepared[info.name], splits, budget,
                                        {**config, "batch_order": batch_order})}
            row["throughput_ratio"] = round(row["grouped"]["samples_per_s"] / row["random"]["samples_per_s"], 3)
            row["wall_ratio"] = round(row["grouped"]["wall_s"] / row["random"]["wall_s"], 3)
            row["accuracy_difference"] = round(row["grouped"]["final_accuracy"] - row["random"]["final_accuracy"], 4)
            cases.append(row)
            _write(args, cases)
            print(f"{row['data']:10s} {model:24s} lr {config['lr']:.0e}: padding {row['random']['padded_per_real_token']:.2f}"
                  f" -> {row['grouped']['padded_per_real_token']:.2f} tokens per real token; throughput "
                  f"{row['throughput_ratio']:.2f}x, wall {row['wall_ratio']:.2f}x; test accuracy "
                  f"{row['random']['final_accuracy']:.3f} -> {row['grouped']['final_accuracy']:.3f}", flush=True)
    out = _write(args, cases)
    print(json.dumps(out["summary"], indent=2))


def _write(args: argparse.Namespace, cases: list[dict]) -> dict:
    """The JSON so far (written after every trial pair, so a stopped run keeps what it measured)."""
    diffs = [c["accuracy_difference"] for c in cases]
    summary = {"median_throughput_ratio": statistics.median(c["throughput_ratio"] for c in cases),
               "min_throughput_ratio": min(c["throughput_ratio"] for c in cases),
               "median_wall_ratio": statistics.median(c["wall_ratio"] for c in cases),
               "mean_accuracy_difference": round(statistics.mean(diffs), 4),
               "accuracy_differences": diffs, "target_throughput_ratio": 1.3,
               "test_interval_half_width": round(1.96 * (0.25 / args.test_rows) ** 0.5, 4)}
    summary["met"] = (summary["min_throughput_ratio"] >= 1.3
                      and summary["mean_accuracy_difference"] >= -summary["test_interval_half_width"])
    return write_json(args.out, "length_grouping", args, cases=cases, summary=summary)


if __name__ == "__main__":
    main()
