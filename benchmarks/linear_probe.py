"""Benchmark: a ``linear_probe`` trial vs scikit-learn's logistic regression on the same frozen features.

For every shared backbone and a small sample of every shared classification set
(SST-2, SST-5, SUBJ for the text encoders; ants vs bees for the image backbones):

- **trial**: ``autotransfer.training.train`` with ``strategy: linear_probe`` (C = 1),
  as a search runs it (features by a hook on the classifier, one forward pass);
- **reference**: ``sklearn.linear_model.LogisticRegression()`` with its default settings
  (``max_iter`` raised so it converges) on features taken another way: for text the
  encoder's pooler output (what a sequence-classification head reads), for images timm's
  pooled pre-logits (``num_classes=0``);
- for text also **mean pooling**: the same regression on the mean of the last hidden
  states, which sentence-transformer checkpoints were trained for (information: it is
  not what the classifier head reads).

Target: the trial within noise of the reference (one standard error of the validation
accuracy) on every pair.  Writes JSON with every pair.

    python benchmarks/linear_probe.py          # ~10 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PrepareSettings, provenance  # noqa: E402
from robustness import SOURCES, _read  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
TEXT = sorted((SHARED / "models" / "text").iterdir())
IMAGE = sorted((SHARED / "models" / "image").iterdir())
TEXT_SETS = {"sst2": SOURCES["sst2"], "subj": SOURCES["subj"],
             "sst5": (SHARED / "data" / "sst5" / "train.csv", SHARED / "data" / "sst5" / "dev.csv", {})}


def _trial(task_name: str, backbone: str, splits, data: Path) -> tuple[float, float]:
    from autotransfer.tasks import get_task
    from autotransfer.training import TrialContext, train

    task = get_task(task_name)
    info = task.describe_backbone(backbone, PrepareSettings(data, cpus_per_trial=1))
    prepared, _ = task.prepare([info], splits, PrepareSettings(data, cpus_per_trial=1))
    ctx = TrialContext(task=task_name, backbones={info.name: info}, prepared=prepared,
                       label_names=splits.label_names, threads=2)
    start = time.perf_counter()
    last = train({"backbone": info.name, "strategy": "linear_probe", "C": 1.0, "batch_size": 32}, ctx,
                 lambda m, c: None)
    return float(last["accuracy"]), time.perf_counter() - start


def _lr(train_x, train_y, val_x, val_y) -> float:
    from sklearn.linear_model import LogisticRegression

    return float(LogisticRegression(max_iter=5000).fit(train_x, train_y).score(val_x, val_y))


def text_pairs(rows: int, val_rows: int, seed: int) -> list[dict]:
    from transformers import AutoModel, AutoTokenizer

    from autotransfer.tables import load_text_splits

    out = []
    for name, (pool_path, val_path, opts) in TEXT_SETS.items():
        folder = Path(tempfile.mkdtemp(prefix=f"lp-{name}-"))
        _read(pool_path, opts).sample(rows, random_state=seed).to_csv(folder / "train.tsv", sep="\t", index=False)
        val = _read(val_path, opts).sample(val_rows, random_state=seed)
        val.to_csv(folder / "dev.tsv", sep="\t", index=False)
        val.to_csv(folder / "test.tsv", sep="\t", index=False)
        splits = load_text_splits(folder)
        for model_dir in TEXT:
            trial, seconds = _trial("text-cls", str(model_dir), splits, folder)
            tok = AutoTokenizer.from_pretrained(model_dir)
            model = AutoModel.from_pretrained(model_dir).eval()

            def feats(texts):
                pooled, mean = [], []
                with torch.inference_mode():
                    for i in range(0, len(texts), 64):
                        enc = tok(list(texts[i:i + 64]), padding=True, truncation=True, max_length=128,
                                  return_tensors="pt")
                        o = model(**enc)
                        pooled.append(o.pooler_output.numpy())
                        m = enc["attention_mask"].unsqueeze(-1).float()
                        mean.append(((o.last_hidden_state * m).sum(1) / m.sum(1)).numpy())
                return np.concatenate(pooled), np.concatenate(mean)

            (tp, tm), (vp, vm) = feats(splits.train.inputs), feats(splits.validation.inputs)
            ref = _lr(tp, splits.train.labels, vp, splits.validation.labels)
            mean_ref = _lr(tm, splits.train.labels, vm, splits.validation.labels)
            out.append(_pair(name, model_dir.name, len(splits.train), len(splits.validation), trial, ref, seconds,
                             mean_pooling=mean_ref))
            print(_line(out[-1]), flush=True)
    return out


def image_pairs() -> list[dict]:
    import timm

    from autotransfer.images import load_image_splits
    from autotransfer.tasks import get_task

    data = SHARED / "data" / "hymenoptera"
    splits = load_image_splits(data)
    out = []
    task = get_task("image-cls")
    for model_dir in IMAGE:
        name = f"local-dir:{model_dir}"
        trial, seconds = _trial("image-cls", name, splits, data)
        info = task.describe_backbone(name, PrepareSettings(data, cpus_per_trial=1))
        prepared, _ = task.prepare([info], splits, PrepareSettings(data, cpus_per_trial=1))
        model = timm.create_model(info.source, pretrained=True, num_classes=0).eval()

        def feats(split):
            xs, ys = [], []
            with torch.inference_mode():
                for inputs, y in task.batches(prepared[info.name], split, 32, train=False):
                    xs.append(model(inputs["x"]).numpy())
                    ys.append(y.numpy())
            return np.concatenate(xs), np.concatenate(ys)

        ref = _lr(*feats("train"), *feats("validation"))
        n_train, n_val = (task.num_examples(prepared[info.name], s) for s in ("train", "validation"))
        out.append(_pair("hymenoptera", model_dir.name, n_train, n_val, trial, ref, seconds))
        print(_line(out[-1]), flush=True)
    return out


def _pair(data: str, backbone: str, n_train: int, n_val: int, trial: float, ref: float, seconds: float,
          **extra: float) -> dict:
    se = math.sqrt(max(ref * (1 - ref), 1.0 / n_val) / n_val)
    return {"data": data, "backbone": backbone, "train": n_train, "validation": n_val,
            "trial_accuracy": trial, "reference_accuracy": ref, "difference": trial - ref, "one_se": se,
            "within_noise": trial >= ref - se, "trial_seconds": seconds, **extra}


def _line(p: dict) -> str:
    extra = f", mean pooling {p['mean_pooling']:.4f}" if "mean_pooling" in p else ""
    return (f"{p['data']:>11} {p['backbone']:<26} trial {p['trial_accuracy']:.4f} vs reference "
            f"{p['reference_accuracy']:.4f} ({p['difference']:+.4f}, 1 SE {p['one_se']:.4f}){extra}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1000, help="text training rows per data set")
    ap.add_argument("--val-rows", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    args = ap.parse_args()

    import transformers

    transformers.utils.logging.set_verbosity_error()
    pairs = text_pairs(args.rows, args.val_rows, args.seed) + image_pairs()
    out = {"benchmark": "linear_probe", **provenance(("torch", "transformers", "timm", "scikit-learn")),
           "pairs": pairs, "within_noise": sum(p["within_noise"] for p in pairs), "of": len(pairs)}
    args.out.write_text(json.dumps(out, indent=2, default=str))
    print(f"{out['within_noise']} of {out['of']} pairs within one standard error of the reference -> {args.out}")


if __name__ == "__main__":
    main()
