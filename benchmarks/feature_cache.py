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
trial <= 0.25x an uncached one.

Then the frozen prefix of ``freeze`` trials (``autotransfer.prefix_cache``): for every shared
backbone, a ``freeze`` trial at depth ``num_layers`` (every block frozen: a deep freeze) and at
half of it, at batch 32 for the length a search gives it (the CLI's default budget: 3 epochs,
2 evaluations each, stretched to the 300-step floor), ``augment: none`` for images, run with the replay
turned off and on (same config, data and seed; the "on" run computes its prefix outputs
itself, so its time includes that pass): wall time, ratio, and the validation accuracy and
last training loss of each (the same trial, so they should agree to float noise), and what the
trial's own check made of the replay (``prefix_cache``: "computed in ...", or "off: <why>").
``--backbones`` picks some of them by folder name (the DINOv2 ViT's freeze trials take most of
an hour on 2 CPU cores).

Then the search (``--part search``, separate: ~45 minutes): ``autotransfer search`` as a user
runs it, on the same SST-2 rows with ``text-cls-local.yaml`` at the CLI's defaults, twice --
with the caches and with ``--no-feature-cache`` -- one trial at a time on both cores
(``--max-concurrent 1 --cpus-per-trial 2``: the sampler and ASHA then see the same results in
the same order, so both runs try the same configurations and compare at the same trial budget;
checked, and said when not: ``same_configs`` says whether both tried the same set of
configurations, parameters included, and ``curves_apart`` lists the configurations both tried
whose validation curves differ).  First with ``--strategies linear_probe,freeze``, then with the
shipped strategies (``--search-cases`` runs one of the two).  Per run: wall time, the trials
(strategy, freeze depth, parameters, seconds, validation curve, what the cache did), the share
of linear probes and deep freezes (depth >= half the blocks), and the export's test accuracy.
Target (issue #16): search wall time <= 0.7x when a quarter or more of the trials are linear
probes or deep freezes.

``--part search-images`` does the same on ants vs bees (all its images), ``image-cls-local.yaml``
with ``augment: [none]`` (the replay needs a deterministic input) and ``--strategies
linear_probe,freeze``, at ``--min-steps 100`` (``--image-min-steps``; at the default 300 a depth-0
trial of these CNNs alone takes 10-20 minutes on 2 CPU cores): where a frozen forward is most of
a step, as in image CNNs, the deep trials' savings weigh more than in text.

    python benchmarks/feature_cache.py                  # ~15 minutes on 2 CPU cores
    python benchmarks/feature_cache.py --part freeze    # the freeze trials only
    python benchmarks/feature_cache.py --part search    # whole searches with and without the caches
    python benchmarks/feature_cache.py --part search-images --out benchmarks/feature_cache_search_images.json
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
from _common import PrepareSettings, cli_search, provenance  # noqa: E402
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


def freeze_case(task_name: str, backbone: str, splits, data: Path, depth_of) -> dict:
    """One ``freeze`` trial with the prefix replay off, then on (see the module docstring)."""
    from autotransfer.budget import derive_budget
    from autotransfer.tasks import get_task
    from autotransfer.training import TrialContext, build_trial_model, train

    task = get_task(task_name)
    info = task.describe_backbone(backbone, PrepareSettings(data))
    prepared, _ = task.prepare([info], splits, PrepareSettings(data))
    bundle = build_trial_model(task, info, splits.label_names, {"backbone": info.name, "strategy": "full"})[1].bundle
    depth = depth_of(bundle.num_layers)
    out = {"backbone": Path(backbone.split(":", 1)[-1]).name, "num_layers": bundle.num_layers, "freeze_depth": depth}
    budget = derive_budget(task.num_examples(prepared[info.name], "train"), 32, 3, 2, 1)
    out.update(steps=budget.steps(32), epochs=round(budget.epochs, 2))
    config = {"backbone": info.name, "strategy": "freeze", "freeze_depth": depth, "lr": 1e-4, "head_lr": 1e-3,
              "batch_size": 32, "augment": "none"}
    for on in (False, True):
        ctx = TrialContext(task=task_name, backbones={info.name: info}, prepared=prepared,
                           label_names=splits.label_names, threads=2, budget=budget,
                           prefix_cache=on, search_id="bench" if on else "")
        reports = []
        start = time.perf_counter()
        last = train(config, ctx, lambda m, c: reports.append(m))
        side = "cached" if on else "uncached"
        out.update({f"{side}_trial_s": time.perf_counter() - start, f"{side}_accuracy": last["accuracy"],
                    f"{side}_train_loss": reports[-1]["train_loss"], f"{side}_steps": last["step"],
                    f"{side}_prefix_cache": last.get("prefix_cache")})
    out["ratio_trial"] = out["cached_trial_s"] / out["uncached_trial_s"]
    return out


def image_space(folder: Path) -> Path:
    """``image-cls-local.yaml`` with ``augment: [none]`` (the prefix replay needs a deterministic input) and its
    backbone folders made absolute, written into ``folder``."""
    import yaml

    shipped = REPO / "search_spaces" / "image-cls-local.yaml"
    space = yaml.safe_load(shipped.read_text())
    space["backbones"] = ["local-dir:" + str((shipped.parent / b.split(":", 1)[1]).resolve())
                          for b in space["backbones"]]
    space["params"]["augment"] = ["none"]
    path = folder / "image-cls-no-augment.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def search_case(folder: Path, strategies: list[str] | None, seed: int, task: str = "text-cls",
                space: Path = REPO / "search_spaces" / "text-cls-local.yaml",
                options: tuple[str, ...] = ()) -> dict:
    """The same search with the caches and with ``--no-feature-cache`` (see the module docstring)."""
    runs = {}
    for side, extra in (("cached", []), ("uncached", ["--no-feature-cache"])):
        args = ["--task", task, "--data", str(folder), "--space", str(space), "--seed", str(seed),
                "--max-concurrent", "1", "--cpus-per-trial", "2", *options, *extra]
        if strategies:
            args += ["--strategies", ",".join(strategies)]
        with tempfile.TemporaryDirectory(prefix="feature-cache-search-") as tmp:
            results, best, wall = cli_search(args, Path(tmp) / "run")
            test = json.loads((Path(tmp) / "run" / "test_metrics.json").read_text())
        layers = {n: b.get("num_layers") for n, b in (results.get("backbones") or {}).items()}
        trials = []
        for t in results["trials"]:
            depth, n = t["params"].get("freeze_depth"), layers.get(t["backbone"])
            deep = t["strategy"] == "linear_probe" or (t["strategy"] == "freeze" and depth is not None
                                                       and n is not None and depth >= n / 2)
            last = t.get("last_metrics") or {}
            trials.append({"trial_id": t["trial_id"], "backbone": Path(t["backbone"]).name, "strategy": t["strategy"],
                           "freeze_depth": depth, "params": t["params"],
                           "deep": deep, "status": t["status"], "seconds": round(t["wall_time_s"], 1),
                           "best_metric": t["best_metric"], "history": t.get("history"),
                           "cache": last.get("prefix_cache", last.get("cached_features"))})
        runs[side] = {"wall_s": round(wall, 1), "trials": trials,
                      "trial_seconds": round(sum(t["seconds"] for t in trials), 1),
                      "features_once_s": (results.get("prerank") or {}).get("seconds"),
                      "best": {"backbone": Path(best["backbone"]).name, "strategy": best["strategy"],
                               "validation": best["best_metric"]},
                      "test_accuracy": test.get("accuracy", test.get("test_metrics", {}).get("accuracy"))}  # 50 test rows: a sanity check, not a quality figure
        print(json.dumps({"strategies": strategies or "shipped", side: runs[side]}), flush=True)
    key = [(t["backbone"], t["strategy"], t["freeze_depth"]) for t in runs["cached"]["trials"]]
    same = key == [(t["backbone"], t["strategy"], t["freeze_depth"]) for t in runs["uncached"]["trials"]]
    # trial by trial, paired by configuration (Ray's trial ids are random, the lists ranked): did both searches try
    # the same configurations, and did each reach the same validation curve on both sides?
    def config(t: dict) -> str:
        return json.dumps([t["backbone"], t["strategy"], t["params"]], sort_keys=True)

    uncached = {config(t): t for t in runs["uncached"]["trials"]}
    same_configs = sorted(map(config, runs["cached"]["trials"])) == sorted(uncached)
    curves_apart = [{"config": json.loads(config(t)), "cached": t["history"],
                     "uncached": uncached[config(t)]["history"]}
                    for t in runs["cached"]["trials"]
                    if config(t) in uncached and t["history"] != uncached[config(t)]["history"]]
    deep = sum(t["deep"] for t in runs["cached"]["trials"]) / len(runs["cached"]["trials"])
    return {"task": task, "space": space.name, "options": list(options),
            "strategies": " ".join(strategies) if strategies else f"shipped ({space.name})", **runs,
            "same_trials": same, "same_configs": same_configs, "curves_apart": curves_apart,
            "deep_share": round(deep, 3),
            "ratio_wall": runs["cached"]["wall_s"] / runs["uncached"]["wall_s"],
            "ratio_trial_seconds": runs["cached"]["trial_seconds"] / runs["uncached"]["trial_seconds"]}


def search_summary(c: dict) -> dict:
    """One search case's line in the summary: its ratios against the target (which applies when a quarter or more
    of the trials are linear probes or deep freezes)."""
    return {"task": c["task"], "strategies": c["strategies"], "options": c["options"], "deep_share": c["deep_share"],
            "same_trials": c["same_trials"], "same_configs": c["same_configs"],
            "curves_apart": len(c["curves_apart"]), "ratio_wall": round(c["ratio_wall"], 3),
            "ratio_trial_seconds": round(c["ratio_trial_seconds"], 3), "target_ratio_wall": 0.7,
            "met": (c["ratio_wall"] <= 0.7) if c["deep_share"] >= 0.25 else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1000, help="SST-2 training rows (a quarter more for validation)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--part", choices=("all", "probe", "freeze", "search", "search-images"), default="all",
                    help="all: probe and freeze (search is separate: whole text searches, ~45 minutes; "
                         "search-images: ants vs bees with augment none, linear probes and freezes)")
    ap.add_argument("--backbones", default=None,
                    help="comma-separated folder names of the shared backbones to run (default: all of them)")
    ap.add_argument("--image-min-steps", type=int, default=100,
                    help="--min-steps of the image searches (the CLI default, 300, makes a depth-0 freeze trial of "
                         "these CNNs 10-20 minutes on 2 CPU cores; both sides get the same)")
    ap.add_argument("--search-cases", choices=("both", "probes-and-freezes", "shipped"), default="both",
                    help="which of --part search's two cases to run: --strategies linear_probe,freeze (the one the "
                         "target names), the shipped strategies, or both in that order")
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
    text_splits = load_text_splits(folder)
    images = SHARED / "data" / "hymenoptera"
    image_splits = load_image_splits(images)
    backbones = ([("text-cls", str(d), text_splits, folder, f"sst2:{args.rows}")
                  for d in sorted((SHARED / "models" / "text").iterdir())]
                 + [("image-cls", f"local-dir:{d}", image_splits, images, "hymenoptera")
                    for d in sorted((SHARED / "models" / "image").iterdir())])
    if args.backbones:
        chosen = set(args.backbones.split(","))
        backbones = [b for b in backbones if Path(b[1].split(":", 1)[-1]).name in chosen]
    out = {"benchmark": "feature_cache", **provenance(), "summary": {}}
    if args.part in ("all", "probe"):
        cases = []
        for task_name, backbone, splits, data, name in backbones:
            cases.append({"data": name, **case(task_name, backbone, splits, data, args.repeats)})
            print(json.dumps(cases[-1]), flush=True)
        ratios = [c["ratio_trial"] for c in cases]
        out["cases"] = cases
        out["summary"].update({
            "target_ratio_trial": 0.25, "median_ratio_trial": statistics.median(ratios),
            "worst_ratio_trial": max(ratios), "met": max(ratios) <= 0.25,
            "accuracy_changes": [round(c["cached_accuracy"] - c["uncached_accuracy"], 4) for c in cases]})
    if args.part in ("all", "freeze"):
        freeze = []
        for task_name, backbone, splits, data, name in backbones:
            for label, depth_of in (("all blocks", lambda n: n), ("half the blocks", lambda n: n // 2)):
                freeze.append({"data": name, "frozen": label,
                               **freeze_case(task_name, backbone, splits, data, depth_of)})
                print(json.dumps(freeze[-1]), flush=True)
        out["freeze_cases"] = freeze
        out["summary"]["freeze"] = {
            "ratio_all_blocks": {c["backbone"]: round(c["ratio_trial"], 3) for c in freeze if c["frozen"] == "all blocks"},
            "ratio_half": {c["backbone"]: round(c["ratio_trial"], 3) for c in freeze if c["frozen"] != "all blocks"},
            "not_replayed": {f"{c['backbone']} {c['frozen']}": c["cached_prefix_cache"] for c in freeze
                             if str(c["cached_prefix_cache"]).startswith("off")},
            "accuracy_changes": [round(c["cached_accuracy"] - c["uncached_accuracy"], 4) for c in freeze],
            "train_loss_changes": [round(c["cached_train_loss"] - c["uncached_train_loss"], 5) for c in freeze]}
    if args.part == "search":
        out["search_cases"], out["summary"]["search"] = [], []
        cases = {"probes-and-freezes": ["linear_probe", "freeze"], "shipped": None}
        for name, strategies in cases.items():  # the case the target names first
            if args.search_cases not in ("both", name):
                continue
            c = search_case(folder, strategies, args.seed)
            out["search_cases"].append(c)
            out["summary"]["search"].append(search_summary(c))
            args.out.write_text(json.dumps(out, indent=2))  # a case at a time: a later failure keeps this one
    if args.part == "search-images":
        options = ("--min-steps", str(args.image_min_steps))
        c = search_case(images, ["linear_probe", "freeze"], args.seed, "image-cls", image_space(folder), options)
        out["search_cases"] = [c]
        out["summary"]["search"] = [search_summary(c)]
    args.out.write_text(json.dumps(out, indent=2))
    print(json.dumps(out["summary"], indent=2))


if __name__ == "__main__":
    main()
