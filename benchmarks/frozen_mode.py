"""Benchmark: a ``freeze`` trial's frozen bottom in eval mode (the default since the frozen-prefix cache) vs in
training mode (dropout on in the frozen layers, as ``model.train()`` leaves them: the behaviour before).

The change is a default that every ``freeze`` trial meets, so it is checked the way a default must be: on
several data sets and sizes, not one.  For each case (a shared text data set, a training size, a seed: the
rows ``robustness.py`` samples for it) and each frozen depth (every block, half of them) the same trial --
MiniLM-L3 (``paraphrase-MiniLM-L3-v2``), lr 1e-4, head lr 1e-3, batch 32, for the length a search gives it
(the CLI's default budget: 3 epochs, 2 evaluations each, stretched to the 300-step floor) -- runs both ways
with the same seed.  It is scored on the case's 1,000 official test rows at every evaluation round (the
search's selection metric is the best round; the test rows are used as that trial's validation split here, so
the difference is measured on 1,000 rows, not on a 75-row carve).  Prints per pair the best-round accuracy
both ways and the difference, and the mean difference with its 95% interval over the pairs (paired t).

    python benchmarks/frozen_mode.py                                  # ~30 minutes on 2 CPU cores
    python benchmarks/frozen_mode.py --cases sst2:300,subj:1000
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PrepareSettings, provenance  # noqa: E402
from robustness import make_case, parse_case  # noqa: E402
from text_cls import BACKBONES  # noqa: E402

DEFAULT_CASES = "sst2:300,subj:300,sst5:300,sst2:1000,subj:1000,sst5:1000"


def pair(backbone: Path, data: Path, seed: int, case: str) -> list[dict]:
    """The trial at both depths, frozen bottom in eval mode and in training mode."""
    from unittest import mock

    from autotransfer import prefix_cache
    from autotransfer.budget import derive_budget
    from autotransfer.tables import load_text_splits
    from autotransfer.tasks import get_task
    from autotransfer.training import TrialContext, build_trial_model, train

    task = get_task("text-cls")
    splits = load_text_splits(data)
    info = task.describe_backbone(str(backbone), PrepareSettings(data))
    prepared, _ = task.prepare([info], splits, PrepareSettings(data))
    layers = build_trial_model(task, info, splits.label_names, {"backbone": info.name, "strategy": "full"})[1].bundle
    n = task.num_examples(prepared[info.name], "train")
    budget = derive_budget(n, 32, 3, 2, 1)
    out = []
    for depth in (layers.num_layers, layers.num_layers // 2):
        config = {"backbone": info.name, "strategy": "freeze", "freeze_depth": depth, "lr": 1e-4, "head_lr": 1e-3,
                  "batch_size": 32}
        row = {"freeze_depth": depth, "num_layers": layers.num_layers, "train_rows": n, "steps": budget.steps(32),
               "validation_rows": task.num_examples(prepared[info.name], "validation")}
        for mode in ("eval", "train"):
            ctx = TrialContext(task="text-cls", backbones={info.name: info}, prepared=prepared,
                               label_names=splits.label_names, threads=2, budget=budget, seed=seed,
                               prefix_cache=mode == "eval", search_id=f"frozen-mode-{case}")  # kept rows: this data's
            reports: list[dict] = []
            if mode == "train":  # the behaviour before: nothing marked, so train_mode leaves dropout on
                with mock.patch.object(prefix_cache, "mark_frozen", lambda modules: None):
                    train(config, ctx, lambda m, c: reports.append(m))
            else:
                train(config, ctx, lambda m, c: reports.append(m))
            row[f"{mode}_best"] = max(r["accuracy"] for r in reports)
            row[f"{mode}_last"] = reports[-1]["accuracy"]
            row[f"{mode}_prefix_cache"] = reports[-1].get("prefix_cache")
        row["difference"] = row["eval_best"] - row["train_best"]
        out.append(row)
        print(json.dumps(row), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=DEFAULT_CASES, help="data:rows[:seed], comma-separated")
    ap.add_argument("--test-rows", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    args = ap.parse_args()
    import transformers

    transformers.utils.logging.set_verbosity_error()
    backbone = next(b for b in BACKBONES if "L3" in b.name)
    out = {"benchmark": "frozen_mode", **provenance(), "backbone": backbone.name, "cases": []}
    for spec in args.cases.split(","):
        source, rows, seed = parse_case(spec)
        with tempfile.TemporaryDirectory(prefix="frozen-mode-") as tmp:
            _, hand = make_case(Path(tmp), source, int(rows), args.test_rows, seed)
            for row in pair(backbone, hand, seed, spec):
                out["cases"].append({"case": spec, **row})
        args.out.write_text(json.dumps(out, indent=2))
    diffs = [c["difference"] for c in out["cases"]]
    mean = statistics.mean(diffs)
    half = 1.96 * statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
    out["summary"] = {"pairs": len(diffs), "mean_difference_eval_minus_train": mean, "interval_95": half,
                      "eval_better": sum(d > 0 for d in diffs), "train_better": sum(d < 0 for d in diffs),
                      "equal": sum(d == 0 for d in diffs)}
    args.out.write_text(json.dumps(out, indent=2))
    print(json.dumps(out["summary"], indent=2))


if __name__ == "__main__":
    main()
