"""Benchmark: a linear-probe trial with and without the search's frozen-feature cache.

For each case (SST-2 rows with each shared text encoder; ants vs bees with each shared
image backbone), in this one process, side by side:

- **uncached**: ``autotransfer.training.train`` with ``strategy: linear_probe`` (C = 1) as a
  trial ran before the cache: one forward pass over the training split, a logistic
  regression, one validation pass;
- **cached**: the features computed once (``autotransfer.features.frozen_features``, the
  search's one-time cost, reported separately) and the same trial fitted on them (a
  logistic regression and one validation pass);
- the search's view: ``k`` linear-probe trials of one backbone cost ``k x uncached`` before,
  ``once + k x cached`` now (printed for k = 2, the shipped spaces' warm start and recipe
  count make 1-3 typical).

Each timing is the median of ``--repeats`` runs.  Target (issue #16): a cached linear-probe
trial <= 0.25x an uncached one.  The search-level target (<= 0.7x wall time when a quarter
of the trials are linear probes or deep freezes) is not measured here: deep-freeze
prefixes are not cached yet.

    python benchmarks/feature_cache.py           # ~5 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PrepareSettings, provenance  # noqa: E402
from robustness import SOURCES, _read  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


def _median_time(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def case(task_name: str, backbone: str, splits, data: Path, repeats: int) -> dict:
    from autotransfer.features import frozen_features
    from autotransfer.tasks import get_task
    from autotransfer.training import TrialContext, train

    task = get_task(task_name)
    info = task.describe_backbone(backbone, PrepareSettings(data))
    prepared, _ = task.prepare([info], splits, PrepareSettings(data))
    ctx = TrialContext(task=task_name, backbones={info.name: info}, prepared=prepared,
                       label_names=splits.label_names, threads=2)
    config = {"backbone": info.name, "strategy": "linear_probe", "C": 1.0, "batch_size": 32}
    uncached_s, uncached = _median_time(lambda: train(config, ctx, lambda m, c: None), repeats)
    once_s, found = _median_time(lambda: frozen_features(task, info, prepared[info.name], splits.label_names,
                                                         ctx.seed), repeats)
    cached_ctx = dataclasses.replace(ctx, features={info.name: found})
    cached_s, cached = _median_time(lambda: train(config, cached_ctx, lambda m, c: None), repeats)
    assert cached["cached_features"] and not uncached["cached_features"]
    return {"backbone": Path(backbone.split(":", 1)[-1]).name, "train_examples": len(found.y),
            "validation_examples": uncached["val_examples"], "feature_dim": int(found.x.shape[1]),
            "uncached_trial_s": uncached_s, "cached_trial_s": cached_s, "features_once_s": once_s,
            "uncached_accuracy": uncached["accuracy"], "cached_accuracy": cached["accuracy"],
            "ratio_trial": cached_s / uncached_s,
            "ratio_two_trials_with_the_one_time_cost": (once_s + 2 * cached_s) / (2 * uncached_s)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1000, help="SST-2 training rows (a quarter more for validation)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    args = ap.parse_args()
    import transformers

    from autotransfer.images import load_image_splits
    from autotransfer.tables import load_text_splits

    transformers.utils.logging.set_verbosity_error()
    pool_path, test_path, opts = SOURCES["sst2"]
    pool = _read(pool_path, opts)
    pool = pool[pool["sentence"].str.split().str.len() >= 6].sample(args.rows + args.rows // 4, random_state=args.seed)
    folder = Path(tempfile.mkdtemp(prefix="feature-cache-"))
    pool.iloc[:args.rows].to_csv(folder / "train.tsv", sep="\t", index=False)
    pool.iloc[args.rows:].to_csv(folder / "dev.tsv", sep="\t", index=False)
    _read(test_path, opts).head(50).to_csv(folder / "test.tsv", sep="\t", index=False)
    cases = []
    text_splits = load_text_splits(folder)
    for model_dir in sorted((SHARED / "models" / "text").iterdir()):
        cases.append({"data": f"sst2:{args.rows}", **case("text-cls", str(model_dir), text_splits, folder,
                                                            args.repeats)})
        print(json.dumps(cases[-1]), flush=True)
    images = SHARED / "data" / "hymenoptera"
    image_splits = load_image_splits(images)
    for model_dir in sorted((SHARED / "models" / "image").iterdir()):
        cases.append({"data": "hymenoptera", **case("image-cls", f"local-dir:{model_dir}", image_splits, images,
                                                    args.repeats)})
        print(json.dumps(cases[-1]), flush=True)
    ratios = [c["ratio_trial"] for c in cases]
    out = {"benchmark": "feature_cache", **provenance(), "cases": cases,
           "summary": {"target_ratio_trial": 0.25, "median_ratio_trial": statistics.median(ratios),
                       "worst_ratio_trial": max(ratios), "met": max(ratios) <= 0.25,
                       "accuracy_changes": [round(c["cached_accuracy"] - c["uncached_accuracy"], 4) for c in cases]}}
    args.out.write_text(json.dumps(out, indent=2))
    print(json.dumps(out["summary"], indent=2))


if __name__ == "__main__":
    main()
