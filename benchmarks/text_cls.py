"""Benchmark: autotransfer's search vs the fine-tuning tutorials' fixed recipe, on SST-2.

Both sides run in this one process, on the same data and backbones:

- **recipe**: full fine-tuning with lr 2e-5, 3 epochs, batch 32, linear decay, AdamW
  (the Hugging Face course recipe), written with ``transformers.Trainer`` and run once
  per backbone; its final model is scored on the test set;
- **search**: ``autotransfer.search`` over both backbones and all four strategies with
  ``search_spaces/text-cls-local.yaml``; the exported best model is scored on the test set.

Data: a stratified sample of SST-2 train (``--train-rows``), the full dev set for
validation, the full labeled test set for test.  Prints and writes JSON with test
accuracies and the wall-time ratio search / recipe.

    python benchmarks/text_cls.py                     # ~15 minutes on 2 CPU cores
    python benchmarks/text_cls.py --train-rows 500 --num-samples 4   # quick look
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import provenance  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
SST2 = SHARED / "data" / "sst2"
BACKBONES = [SHARED / "models" / "text" / "all-MiniLM-L6-v2", SHARED / "models" / "text" / "paraphrase-MiniLM-L3-v2"]


def make_data(folder: Path, train_rows: int, seed: int) -> Path:
    read = dict(sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE)
    train = pd.read_csv(SST2 / "train.tsv", **read)
    per_class = train_rows // 2
    train = pd.concat([g.sample(per_class, random_state=seed) for _, g in train.groupby("label")])
    train = train.sample(frac=1, random_state=seed)
    folder.mkdir(parents=True, exist_ok=True)
    train.to_csv(folder / "train.tsv", sep="\t", index=False)
    pd.read_csv(SST2 / "dev.tsv", **read).to_csv(folder / "dev.tsv", sep="\t", index=False)
    pd.read_csv(SST2 / "test.tsv", **read).to_csv(folder / "test.tsv", sep="\t", index=False)
    return folder


def read_splits(data: Path) -> dict[str, pd.DataFrame]:
    """train / dev / test of a folder written by :func:`make_data`."""
    return {s: pd.read_csv(data / f"{s}.tsv", sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE)
            for s in ("train", "dev", "test")}


class TokenizedRows(torch.utils.data.Dataset):
    """SST-2 rows tokenized once (max 128 tokens), as the Trainer-based baselines feed them."""

    def __init__(self, tok, df: pd.DataFrame):
        self.enc = tok(df["sentence"].tolist(), truncation=True, max_length=128)
        self.labels = df["label"].astype(int).tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {**{k: v[i] for k, v in self.enc.items()}, "labels": self.labels[i]}


def recipe(backbone: Path, data: Path, out: Path, seed: int) -> dict:
    """The tutorial recipe with transformers.Trainer: full fine-tuning, lr 2e-5, 3 epochs."""
    import torch
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments)

    start = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(backbone)
    frames = read_splits(data)
    train, test = TokenizedRows(tok, frames["train"]), TokenizedRows(tok, frames["test"])
    num_labels = max(max(train.labels), max(test.labels)) + 1  # labels are ids 0..k-1
    model = AutoModelForSequenceClassification.from_pretrained(backbone, num_labels=num_labels, dtype=torch.float32)
    args = TrainingArguments(output_dir=str(out), learning_rate=2e-5, num_train_epochs=3,
                             per_device_train_batch_size=32, per_device_eval_batch_size=64, weight_decay=0.01,
                             save_strategy="no", report_to=[], seed=seed, logging_strategy="no",
                             disable_tqdm=True, use_cpu=not torch.cuda.is_available())
    trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=DataCollatorWithPadding(tok))
    trainer.train()
    pred = trainer.predict(test)
    acc = float((pred.predictions.argmax(-1) == np.asarray(test.labels)).mean())
    return {"backbone": backbone.name, "test_accuracy": acc, "wall_s": time.perf_counter() - start}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-rows", type=int, default=2000)
    ap.add_argument("--num-samples", type=int, default=12)
    ap.add_argument("--max-epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    args = ap.parse_args()
    if not SST2.is_dir() or not all(b.is_dir() for b in BACKBONES):
        sys.exit(f"needs {SST2} and {', '.join(map(str, BACKBONES))}")

    import transformers

    import autotransfer

    transformers.utils.logging.set_verbosity_error()
    tmp = Path(tempfile.mkdtemp(prefix="autotransfer-bench-"))
    data = make_data(tmp / "sst2", args.train_rows, args.seed)

    recipes = [recipe(b, data, tmp / f"recipe-{b.name}", args.seed) for b in BACKBONES]
    for r in recipes:
        print(f"recipe {r['backbone']}: test accuracy {r['test_accuracy']:.4f}, {r['wall_s']:.0f}s", flush=True)

    start = time.perf_counter()
    result = autotransfer.search(
        task="text-cls", data=data, space=REPO / "search_spaces" / "text-cls-local.yaml",
        backbones=[str(b) for b in BACKBONES], num_samples=args.num_samples, max_epochs=args.max_epochs,
        seed=args.seed, dashboard=False, output=tmp / "search",
    )
    search_wall = time.perf_counter() - start
    best = result.best
    recipe_wall = sum(r["wall_s"] for r in recipes)
    best_recipe = max(recipes, key=lambda r: r["test_accuracy"])
    same = next(r for r in recipes if r["backbone"] == Path(best.backbone).name)
    out = {
        "benchmark": "text_cls",
        **provenance(),
        "data": {"train_rows": args.train_rows, "validation_rows": 872, "test_rows": 1821, "source": "SST-2"},
        "recipe": {"description": "full fine-tuning, lr 2e-5, 3 epochs, batch 32 (transformers.Trainer)",
                   "runs": recipes},
        "search": {
            "num_samples": args.num_samples, "max_epochs": args.max_epochs,
            "best": {"backbone": Path(best.backbone).name, "strategy": best.strategy, "config": best.params,
                     "validation_accuracy": best.best_metric},
            "test_accuracy": result.test_metrics["accuracy"], "wall_s": search_wall,
            "trials": {s: sum(1 for r in result.records if r.status == s) for s in ("completed", "stopped_early", "failed")},
            "strategies_tried": sorted({r.strategy for r in result.records}),
            "first_result_s": result.stats.get("first_result_s"),
            "preparation": result.stats.get("preparation"),
        },
        "ratios": {
            "test_accuracy_gain_vs_best_recipe": result.test_metrics["accuracy"] - best_recipe["test_accuracy"],
            "test_accuracy_gain_vs_recipe_same_backbone": result.test_metrics["accuracy"] - same["test_accuracy"],
            "wall_time_search_over_recipe_both_backbones": search_wall / recipe_wall,
            "wall_time_search_over_one_recipe_run": search_wall / same["wall_s"],
        },
        "search_beats_recipe": result.test_metrics["accuracy"] > best_recipe["test_accuracy"],
    }
    args.out.write_text(json.dumps(out, indent=2, default=str))
    print(json.dumps(out["ratios"], indent=2))
    print(f"search: {best.strategy} on {Path(best.backbone).name}, test accuracy "
          f"{result.test_metrics['accuracy']:.4f} vs best recipe {best_recipe['test_accuracy']:.4f}; "
          f"wall {search_wall:.0f}s vs {recipe_wall:.0f}s for both recipe runs -> {args.out}")


if __name__ == "__main__":
    main()
