"""Benchmark: autotransfer's NER search vs the token-classification tutorials' hand recipe, on CoNLL-2003.

Both sides run in this one run, on the same data and backbones (the shared MiniLM encoders):

- **recipe**: full fine-tuning with lr 5e-5, 3 epochs, batch 16, AdamW, linear decay
  (``transformers.Trainer`` with ``DataCollatorForTokenClassification``; the first sub-token of
  each word carries its tag, sentences truncated at 512 sub-tokens), once per backbone; its final
  model is scored on the test set;
- **search**: ``autotransfer search --task token-cls`` as a user runs it (a fresh process, the
  default budget, ``search_spaces/token-cls-local.yaml``); the exported best model is scored on the
  test set by the search itself.

Data: ``--train-sentences`` sentences sampled (seeded) from CoNLL-2003 train, the full validation
split (3,250 sentences) for validation, the full test split (3,453) for test.  Scores are
entity-level micro F1, strict IOB2 (seqeval), the same function on both sides.

    python benchmarks/token_cls.py                              # ~30 min on 2 CPU cores
    python benchmarks/token_cls.py --train-sentences 500 --num-samples 4   # quick look
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cli_search, provenance  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CONLL = REPO.parent / "shared" / "data" / "conll2003"
BACKBONES = [REPO.parent / "shared" / "models" / "text" / n for n in ("all-MiniLM-L6-v2", "paraphrase-MiniLM-L3-v2")]


def make_data(folder: Path, sentences: int, seed: int) -> Path:
    """train (a seeded sample), validation and test files in CoNLL format."""
    folder.mkdir(parents=True, exist_ok=True)
    blocks = (CONLL / "train.tsv").read_text(encoding="utf-8").strip().split("\n\n")
    picked = sorted(random.Random(seed).sample(range(len(blocks)), sentences))
    (folder / "train.tsv").write_text("\n\n".join(blocks[i] for i in picked) + "\n", encoding="utf-8")
    for split in ("validation", "test"):
        (folder / f"{split}.tsv").write_text((CONLL / f"{split}.tsv").read_text(encoding="utf-8"), encoding="utf-8")
    return folder


def read(path: Path) -> tuple[list[list[str]], list[list[str]]]:
    from autotransfer.conll import read_conll

    s = read_conll(path)
    return s.tokens, s.tags


def recipe(backbone: Path, data: Path, out: Path, seed: int) -> dict:
    """The tutorial recipe with transformers.Trainer: full fine-tuning, lr 5e-5, 3 epochs, batch 16."""
    import torch
    from transformers import (AutoModelForTokenClassification, AutoTokenizer, DataCollatorForTokenClassification,
                              Trainer, TrainingArguments)

    from autotransfer.entities import entity_scores

    start = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(backbone)
    train_tokens, train_tags = read(data / "train.tsv")
    test_tokens, test_tags = read(data / "test.tsv")
    names = sorted({t for tags in train_tags for t in tags})
    index = {t: i for i, t in enumerate(names)}

    def encode(tokens: list[list[str]], tags: list[list[str]]) -> list[dict]:
        enc = tok(tokens, is_split_into_words=True, truncation=True, max_length=512)
        rows = []
        for i in range(len(tokens)):
            seen, labels = set(), []
            for w in enc.word_ids(i):
                labels.append(-100 if w is None or w in seen else index.get(tags[i][w], 0))
                if w is not None:
                    seen.add(w)
            rows.append({"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
                         "labels": labels})
        return rows

    train, test = encode(train_tokens, train_tags), encode(test_tokens, test_tags)
    model = AutoModelForTokenClassification.from_pretrained(
        backbone, num_labels=len(names), id2label=dict(enumerate(names)), label2id=index, dtype=torch.float32)
    args = TrainingArguments(output_dir=str(out), learning_rate=5e-5, num_train_epochs=3,
                             per_device_train_batch_size=16, per_device_eval_batch_size=64, save_strategy="no",
                             report_to=[], seed=seed, logging_strategy="no", disable_tqdm=True,
                             use_cpu=not torch.cuda.is_available())
    trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=DataCollatorForTokenClassification(tok))
    trainer.train()
    pred = trainer.predict(test)
    predicted = []
    for row, scores in zip(test, pred.predictions):
        predicted.append([names[int(scores[p].argmax())] for p, lab in enumerate(row["labels"]) if lab != -100])
    gold = [tags[:len(p)] for tags, p in zip(test_tags, predicted)]  # a sentence cut at 512 sub-tokens loses its end
    truncated = sum(len(p) < len(t) for p, t in zip(predicted, test_tags))
    return {"backbone": backbone.name, "test": entity_scores(gold, predicted), "truncated_test_sentences": truncated,
            "wall_s": time.perf_counter() - start}


def run_search(data: Path, out: Path, seed: int, num_samples: int) -> dict:
    results, best, wall = cli_search(["--task", "token-cls", "--data", str(data), "--space",
                                      str(REPO / "search_spaces" / "token-cls-local.yaml"), "--seed", str(seed),
                                      "--num-samples", str(num_samples)], out)
    return {"test": results["test"]["test_metrics"], "per_entity_type": results["test"].get("per_entity_type"),
            "wall_s": wall, "budget": results.get("budget"),
            "best": {"backbone": Path(best["backbone"]).name, "strategy": best["strategy"], "params": best["params"],
                     "validation_entity_f1": best["best_metric"], "interval": best.get("interval")},
            "trials": [{"backbone": Path(t["backbone"]).name, "strategy": t["strategy"], "status": t["status"],
                        "validation_entity_f1": t["best_metric"], "recipe": bool(t["params"].get("recipe")),
                        "wall_s": t.get("wall_time_s")} for t in results["trials"]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-sentences", type=int, default=2000)
    ap.add_argument("--num-samples", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    args = ap.parse_args()
    if not CONLL.is_dir() or not all(b.is_dir() for b in BACKBONES):
        sys.exit(f"needs {CONLL} and {', '.join(map(str, BACKBONES))}")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    tmp = Path(tempfile.mkdtemp(prefix="autotransfer-bench-ner-"))
    data = make_data(tmp / "conll", args.train_sentences, args.seed)
    recipes = []
    for b in BACKBONES:
        recipes.append(recipe(b, data, tmp / f"recipe-{b.name}", args.seed))
        r = recipes[-1]
        print(f"recipe {r['backbone']}: test entity F1 {r['test']['entity_f1']:.4f}, {r['wall_s']:.0f}s", flush=True)
    searched = run_search(data, tmp / "search", args.seed, args.num_samples)
    best_recipe = max(recipes, key=lambda r: r["test"]["entity_f1"])
    same = next(r for r in recipes if r["backbone"] == searched["best"]["backbone"])
    recipe_wall = sum(r["wall_s"] for r in recipes)
    out = {
        "benchmark": "token_cls",
        **provenance(("torch", "transformers", "ray", "optuna", "seqeval")),
        "data": {"source": "CoNLL-2003", "train_sentences": args.train_sentences, "validation_sentences": 3250,
                 "test_sentences": 3453, "seed": args.seed},
        "recipe": {"description": "full fine-tuning, lr 5e-5, 3 epochs, batch 16 (transformers.Trainer)",
                   "runs": recipes},
        "search": searched,
        "ratios": {
            "search_f1_minus_best_recipe_f1": searched["test"]["entity_f1"] - best_recipe["test"]["entity_f1"],
            "search_f1_minus_same_backbone_recipe_f1": searched["test"]["entity_f1"] - same["test"]["entity_f1"],
            "search_wall_over_recipes_wall": searched["wall_s"] / recipe_wall,
        },
    }
    args.out.write_text(json.dumps(out, indent=2, default=str))
    print(f"search: test entity F1 {searched['test']['entity_f1']:.4f} ({searched['best']['backbone']}, "
          f"{searched['best']['strategy']}, {searched['wall_s']:.0f}s) vs best recipe "
          f"{best_recipe['test']['entity_f1']:.4f} ({best_recipe['backbone']}, {recipe_wall:.0f}s for both): "
          f"{out['ratios']['search_f1_minus_best_recipe_f1']:+.4f} -> {args.out}", flush=True)


if __name__ == "__main__":
    main()
