"""Benchmark: autotransfer's training loop vs ``transformers.Trainer`` at one fixed configuration.

The peer comparison (``peer.py``) found autotransfer's search 1.5-1.9 test points behind
``Trainer.hyperparameter_search`` on SST-2.  That gap is either the search (which
configuration it picks) or the training loop (what one configuration reaches).  This
script measures the second alone: the peer's winning configuration (MiniLM-L6, full
fine-tuning, lr 1.14e-4, weight decay 0.01, no warm-up, linear decay, batch 32, 3 epochs)
trained by both, on the same SST-2 sample, for several seeds:

- **trainer**: ``transformers.Trainer`` exactly as ``peer.py`` runs it; the weights it ends
  with are scored on the validation and test sets (validation after every epoch too).
- **trainer-grouped** (``--sides``): the same Trainer with
  ``train_sampling_strategy="group_by_length"``, the length-grouped batch order autotransfer
  trained in by default until 2026-12-07 (``batch_order: length`` since); the one training
  difference the first runs found, tested alone.
- **autotransfer**: ``autotransfer.search`` with a one-point space (the same values; the
  head at the backbone's rate, no layer decay), one trial, no recipes, no soup, no step
  floor (``min_steps=0``), so the trial trains the same 3 epochs, in its default batch order
  (random since 2026-12-07; length-grouped in ``trainer_parity_grouped.json``, fb53ad7); its exported model is
  scored on the test set.  It evaluates ``evals_per_epoch`` times an epoch and exports the
  best evaluation (its normal behaviour); the validation at its last evaluation is written
  too, the figure comparable with the Trainer's final weights.
- **autotransfer-128** (``--sides``): the same with ``--max-length 128``, the Trainer's truncation
  (autotransfer's own rule cuts at the training rows' 99th-percentile length: 48 tokens here,
  which shortens 17 of the 872 validation and 44 of the 1,821 test sentences).

Prints and writes JSON: per seed and side the validation and test accuracy, their means
and spreads, and the mean test difference (autotransfer - trainer).

    python benchmarks/trainer_parity.py              # ~20 minutes on 2 CPU cores (3 seeds)
    python benchmarks/trainer_parity.py --sides trainer trainer-grouped autotransfer autotransfer-128 --seeds 0 1 2 3  # ~40 minutes
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
from text_cls import BACKBONES, SST2, TokenizedRows, make_data, read_splits  # noqa: E402

SIDES = ("trainer", "trainer-grouped", "autotransfer", "autotransfer-128")
CONFIG = {"lr": 1.1387317092169066e-4, "weight_decay": 0.01, "warmup_ratio": 0.0, "batch_size": 32, "epochs": 3}


def trainer_side(backbone: Path, data: Path, out: Path, seed: int, group_by_length: bool = False) -> dict:
    """One ``transformers.Trainer`` run (``peer.py``'s arguments) at ``CONFIG``; final weights scored.
    ``group_by_length``: the Trainer's own length-grouped batches (autotransfer's order, from the same
    ``get_length_grouped_indices``, with the same mega-batch size at these sizes)."""
    import torch
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments)

    start = time.perf_counter()
    frames = read_splits(data)
    tok = AutoTokenizer.from_pretrained(backbone)
    train, dev, test = (TokenizedRows(tok, frames[s]) for s in ("train", "dev", "test"))

    def accuracy(pred):
        return {"accuracy": float((pred.predictions.argmax(-1) == pred.label_ids).mean())}

    args = TrainingArguments(output_dir=str(out), num_train_epochs=CONFIG["epochs"], learning_rate=CONFIG["lr"],
                             per_device_train_batch_size=CONFIG["batch_size"], per_device_eval_batch_size=64,
                             weight_decay=CONFIG["weight_decay"], warmup_steps=0,  # CONFIG["warmup_ratio"] is 0
                             eval_strategy="epoch", save_strategy="no", report_to=[], seed=seed,
                             logging_strategy="no", disable_tqdm=True, use_cpu=not torch.cuda.is_available(),
                             train_sampling_strategy="group_by_length" if group_by_length else "random")
    trainer = Trainer(model_init=lambda: AutoModelForSequenceClassification.from_pretrained(
                          backbone, num_labels=2, dtype=torch.float32),
                      args=args, train_dataset=train, eval_dataset=dev,
                      data_collator=DataCollatorWithPadding(tok), compute_metrics=accuracy)
    trainer.train()
    per_epoch = [h["eval_accuracy"] for h in trainer.state.log_history if "eval_accuracy" in h]
    pred = trainer.predict(test)
    return {"validation_accuracy": per_epoch[-1], "validation_per_epoch": per_epoch,
            # scored against the labels in the order it predicted in (its grouped sampler reorders the test rows)
            "test_accuracy": float((pred.predictions.argmax(-1) == pred.label_ids).mean()),
            "wall_s": time.perf_counter() - start}


def space_file(folder: Path, backbone: Path) -> Path:
    """A one-point space: full fine-tuning at ``CONFIG`` (YAML is a superset of JSON)."""
    space = {"task": "text-cls", "description": "trainer_parity.py: one fixed configuration",
             "backbones": [str(backbone)],
             "params": {"batch_size": CONFIG["batch_size"], "weight_decay": CONFIG["weight_decay"],
                        "warmup_ratio": CONFIG["warmup_ratio"]},
             "strategies": {"full": {"lr": CONFIG["lr"], "head_lr": CONFIG["lr"], "layer_decay": 1.0}}}
    path = folder / "space.yaml"
    path.write_text(json.dumps(space, indent=2))
    return path


def autotransfer_side(autotransfer, backbone: Path, data: Path, out: Path, seed: int,
                      max_length: int | None = None) -> dict:
    """One ``autotransfer.search`` trial at ``CONFIG``; its exported model scored on the test set.
    ``max_length``: ``--max-length`` (default: autotransfer's own rule)."""
    from autotransfer.settings import local_cpu_count

    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    result = autotransfer.search(
        task="text-cls", data=data, space=space_file(out, backbone), num_samples=1,
        max_epochs=CONFIG["epochs"], min_steps=0, baseline=False, soup=False, warm_start=False,
        cpus_per_trial=float(local_cpu_count()), seed=seed, max_length=max_length, dashboard=False, output=out / "run",
    )
    best = result.best
    return {"validation_accuracy": best.best_metric, "best_epoch": best.best_epoch,
            "validation_last_eval": best.history[-1][1] if best.history else None,
            "history": best.history, "epochs": best.epochs,
            "test_accuracy": result.test_metrics["accuracy"], "wall_s": time.perf_counter() - start}


def summary(rows: list[dict], key: str) -> dict:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return {"mean": statistics.fmean(vals), "sd": statistics.stdev(vals) if len(vals) > 1 else 0.0,
            "min": min(vals), "max": max(vals)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-rows", type=int, default=2000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                    help="training seeds (the data sample is drawn once, with --data-seed)")
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--sides", nargs="+", choices=SIDES, default=["trainer", "autotransfer"],
                    help="which sides to run, each for every seed (default: trainer autotransfer)")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    args = ap.parse_args()
    backbone = BACKBONES[0]
    if not SST2.is_dir() or not backbone.is_dir():
        sys.exit(f"needs {SST2} and {backbone}")

    import transformers

    import autotransfer

    transformers.utils.logging.set_verbosity_error()
    tmp = Path(tempfile.mkdtemp(prefix="autotransfer-parity-"))
    data = make_data(tmp / "sst2", args.train_rows, args.data_seed)
    runs: dict[str, list[dict]] = {side: [] for side in args.sides}
    for seed in args.seeds:  # the sides alternate, so a drift of the machine touches them all
        for side in args.sides:
            if side.startswith("autotransfer"):
                r = autotransfer_side(autotransfer, backbone, data, tmp / f"{side}-{seed}", seed,
                                      max_length=128 if side == "autotransfer-128" else None)
            else:
                r = trainer_side(backbone, data, tmp / f"{side}-{seed}", seed, group_by_length=side != "trainer")
            runs[side].append({"seed": seed, **r})
            print(f"seed {seed} {side}: validation {r['validation_accuracy']:.4f}, test {r['test_accuracy']:.4f}, "
                  f"{r['wall_s']:.0f}s", flush=True)

    sides = {name: {"test_accuracy": summary(rows, "test_accuracy"),
                    "validation_accuracy": summary(rows, "validation_accuracy"),
                    "wall_s": summary(rows, "wall_s")} for name, rows in runs.items()}
    for side in runs:
        if side.startswith("autotransfer"):
            sides[side]["validation_last_eval"] = summary(runs[side], "validation_last_eval")
    differences = {}  # each other side - the plain Trainer, seed by seed
    for side in runs:
        if side != "trainer" and "trainer" in runs:
            for key in ("test_accuracy", "validation_accuracy"):
                d = [a[key] - t[key] for a, t in zip(runs[side], runs["trainer"])]
                differences[f"{side}_minus_trainer_{key}"] = {"per_seed": d, "mean": statistics.fmean(d)}
    result = {
        "benchmark": "trainer_parity", **provenance(),
        "data": {"train_rows": args.train_rows, "data_seed": args.data_seed, "source": "SST-2",
                 "validation_rows": 872, "test_rows": 1821},
        "backbone": backbone.name, "config": CONFIG, "runs": runs, "summary": sides,
        "differences": differences,
    }
    args.out.write_text(json.dumps(result, indent=2))
    for name, s in sides.items():
        print(f"{name}: test {s['test_accuracy']['mean']:.4f} +- {s['test_accuracy']['sd']:.4f}, validation "
              f"{s['validation_accuracy']['mean']:.4f} +- {s['validation_accuracy']['sd']:.4f}")
    for name, d in differences.items():
        print(f"{name}: {d['mean']:+.4f} (per seed {', '.join(f'{x:+.4f}' for x in d['per_seed'])})")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
