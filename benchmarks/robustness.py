"""Benchmark: the search at the README's default budget vs the hand recipe, on small data it was not tuned on.

For each case (a data set, a training size, a seed):

- **data**: ``N`` rows sampled stratified from the data set's training pool; a fixed
  test sample (``--test-rows`` of the official test split) scores both sides.  The
  search gets the ``N`` rows as its training file and carves its own validation split
  by its default rule; the recipe trains on all ``N`` rows, as a user doing it by hand
  would.
- **recipe**: full fine-tuning, lr 2e-5, 3 epochs, batch 32 (``transformers.Trainer``,
  the Hugging Face tutorial), on each backbone; the case's recipe score is the
  *stronger backbone's* (by test accuracy, which favours the recipe).
- **search**: ``autotransfer search`` with ``search_spaces/text-cls-local.yaml`` and the
  CLI defaults (8 trials, ASHA, warm start, recipes protected, step floor); the exported
  best model is scored on the same test rows.

A case is a win / tie / loss by the test difference against the test set's 95%
interval (``1.96 sqrt(p (1 - p) / n)`` at the recipe's accuracy).  Prints a table and
writes JSON with every case.

    python benchmarks/robustness.py --cases sst2:300,subj:300,sst2:1000   # ~30 minutes a case on 2 CPU cores
    python benchmarks/robustness.py --refit --cases sst2:300:1            # also measures --refit's gain
    python benchmarks/robustness.py --cases hymenoptera:all               # images: ants vs bees, all 244 training images
    python benchmarks/robustness.py --append --cases sst5:300             # adds a case to the JSON, keeps the others

The search runs at the CLI's defaults, model soup included: when the soup is exported, each
case also records the best trial's own test score (the soup's gain on test).

With ``--score-trials`` the search keeps every trial's checkpoint (``--keep-checkpoints``) and, after it,
each finished trial is scored on the test rows (never seen by the search, which has chosen already): what
another selection rule would have exported from the same trials (``robustness_grid.py`` compares them),
e.g. preferring the protected recipe trial when the leader is statistically tied with it.

With ``--refit`` the search exports the refit model (scored as the search's result) and
each case records the selected trial's own test score beside it: what refitting gained
on the same run, the evidence for or against making it the default.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cli_search, git_state, provenance  # noqa: E402
from text_cls import BACKBONES, recipe  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"
#: data set -> (train pool, test split, reader) with columns sentence,label
SOURCES = {
    "sst2": (DATA / "sst2" / "train.tsv", DATA / "sst2" / "test.tsv", dict(sep="\t")),
    "subj": (DATA / "subj" / "train.csv", DATA / "subj" / "test.csv", dict()),
    "sst5": (DATA / "sst5" / "train.csv", DATA / "sst5" / "test.csv", dict()),
}


def _read(path: Path, opts: dict) -> pd.DataFrame:
    import csv

    df = pd.read_csv(path, dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE if opts.get("sep") else 0, **opts)
    return df.rename(columns={"text": "sentence"})[["sentence", "label"]]


def parse_case(spec: str) -> tuple[str, str, int]:
    """A ``--cases`` item, ``SOURCE:ROWS[:SEED]``, as (source, rows, seed); the seed defaults to 0."""
    source, rows, *rest = spec.split(":")
    return source, rows, int(rest[0]) if rest else 0


def make_case(folder: Path, source: str, rows: int, test_rows: int, seed: int) -> tuple[Path, Path]:
    """(search data folder: train + test; recipe folder: train + dev + test) for one case."""
    pool_path, test_path, opts = SOURCES[source]
    pool = _read(pool_path, opts)
    if source == "sst2":  # GLUE's train holds phrases too; the test set is whole sentences
        pool = pool[pool["sentence"].str.split().str.len() >= 6]
    shares = pool["label"].value_counts(normalize=True)
    train = pd.concat([g.sample(max(2, int(round(rows * shares[k]))), random_state=seed)
                       for k, g in pool.groupby("label")]).sample(frac=1, random_state=seed)
    test = _read(test_path, opts).sample(min(test_rows, sum(1 for _ in open(test_path)) - 1), random_state=seed)
    search, hand = folder / "search", folder / "recipe"
    for d in (search, hand):
        d.mkdir(parents=True)
        train.to_csv(d / "train.tsv", sep="\t", index=False)
        test.to_csv(d / "test.tsv", sep="\t", index=False)
    test.to_csv(hand / "dev.tsv", sep="\t", index=False)  # read_splits wants one; the recipe does not use it
    return search, hand


def recipe_on(backbone: Path, data: Path, out: Path, seed: int) -> dict:
    """text_cls.recipe with the string labels mapped to ids in sorted order."""
    import text_cls

    frames = text_cls.read_splits(data)
    names = sorted(set(frames["train"]["label"]) | set(frames["test"]["label"]))
    mapped = out / "data"
    mapped.mkdir(parents=True, exist_ok=True)
    for split, df in frames.items():
        df.assign(label=df["label"].map({n: str(i) for i, n in enumerate(names)})).to_csv(
            mapped / f"{split}.tsv", sep="\t", index=False)
    return recipe(backbone, mapped, out, seed)


def make_image_case(folder: Path, seed: int) -> tuple[Path, Path]:
    """Ants vs bees, every training image: the search gets them all (it carves its validation), the
    tutorial recipe its own 80/20 train/val split (val picks the best epoch, as in the tutorial);
    both are tested on hymenoptera's ``val`` folder."""
    import image_cls

    hand = image_cls.make_splits(folder / "recipe", seed)
    search = folder / "search"
    for split, src in (("train", image_cls.HYMENOPTERA / "train"), ("test", image_cls.HYMENOPTERA / "val")):
        for cls_dir in sorted(src.iterdir()):
            d = search / split / cls_dir.name
            d.mkdir(parents=True, exist_ok=True)
            for f in sorted(cls_dir.iterdir()):
                (d / f.name).symlink_to(f)
    return search, hand


def image_recipes(hand: Path, seed: int) -> list[dict]:
    """The PyTorch tutorial's head-only and full fine-tuning (10 epochs) on both image backbones."""
    import image_cls

    runs = [image_cls.recipe(b, hand, head_only, 10, seed) for b in image_cls.BACKBONES for head_only in (True, False)]
    return [{**r, "backbone": f"{r['backbone']} ({r['recipe']})"} for r in runs]


def run_search(data: Path, out: Path, seed: int, refit: bool = False, task: str = "text-cls",
               score_trials: bool = False) -> dict:
    """The CLI as a user runs it (a fresh process, default budget; ``--refit`` if asked; with ``score_trials``
    every trial's checkpoint is kept and scored on test afterwards)."""
    results, best, wall = cli_search(["--task", task, "--data", str(data), "--space",
                                      str(REPO / "search_spaces" / f"{task}-local.yaml"), "--seed", str(seed)]
                                     + (["--refit"] if refit else []) + (["--keep-checkpoints"] if score_trials else []),
                                     out)
    test = json.loads((out / "test_metrics.json").read_text())
    refitted = results.get("refit")
    soup = results.get("soup")
    return {"test_accuracy": test["accuracy"], "wall_s": wall,
            # with --refit: the exported (refit) model's score above, the selected trial's own here
            "refit": None if refitted is None else {
                "selected_trial_test_accuracy": refitted["selected_trial_test_metrics"]["accuracy"],
                "refit_gain": test["accuracy"] - refitted["selected_trial_test_metrics"]["accuracy"],
                **{k: v for k, v in refitted.items() if k != "selected_trial_test_metrics"}}, "budget": results.get("budget"),
            # the greedy model soup: when exported, the score above is the soup's and the best trial's is here
            "soup": None if soup is None else {
                "exported": soup["exported"], "ingredients": len(soup["ingredients"]),
                "validation_gain": soup["validation_metric"] - soup["best_single_validation_metric"],
                **({"selected_trial_test_accuracy": soup["selected_trial_test_metrics"]["accuracy"],
                    "soup_test_gain": test["accuracy"] - soup["selected_trial_test_metrics"]["accuracy"]}
                   if soup["exported"] else {})},
            "validation_rows": results["data"]["splits"]["validation"]["rows"],
            "best": {"backbone": Path(best["backbone"]).name, "strategy": best["strategy"], "params": best["params"],
                     "validation_accuracy": best["best_metric"], "interval": best.get("interval")},
            "trials": {s: sum(1 for t in results["trials"] if t["status"] == s)
                       for s in ("completed", "stopped_early", "failed")},
            "recipe_trials": [{"backbone": Path(t["backbone"]).name, "validation_accuracy": t["best_metric"],
                               "status": t["status"]} for t in results["trials"] if t["params"].get("recipe")],
            "prerank": prerank_held(results.get("prerank")),
            "trials_scored": trial_test_scores(out) if score_trials else None}


def trial_test_scores(run_dir: Path) -> list[dict]:
    """Every finished trial of a finished run, scored on the run's test split after the search (analysis only:
    the search chose without it). The run's own settings, data split and preparation are rebuilt the way
    ``autotransfer resume`` rebuilds them, and each trial's model from its kept checkpoint as the export does."""
    from rich.console import Console

    from autotransfer.api import _Search, settings_for_resume
    from autotransfer.export import test_metrics
    from autotransfer.results import load_results
    from autotransfer.training import TrialContext

    settings = settings_for_resume(run_dir)
    search = _Search(settings, Console(stderr=True, quiet=True))
    _, splits, backbones = search.validate()
    prepared, _ = search.task.prepare(list(backbones.values()), splits, settings)
    ctx = TrialContext(task=settings.task, backbones=backbones, prepared=prepared, label_names=splits.label_names,
                       metric=settings.metric, precision=settings.precision, threads=settings.torch_threads,
                       seed=settings.seed, trust_remote_code=settings.trust_remote_code)
    records, _ = load_results(run_dir)
    scored = []
    for r in records:
        if not r.ok or r.checkpoint is None or not Path(r.checkpoint).exists():
            continue
        scored.append({"trial_id": r.trial_id, "backbone": Path(r.backbone).name, "strategy": r.strategy,
                       "recipe": r.params.get("recipe"), "status": r.status, "rank": r.rank,
                       "validation_accuracy": r.best_metric, "tied_with_best": r.tied_with_best,
                       "test_accuracy": test_metrics(r, ctx)["accuracy"]})
    return scored


def prerank_held(prerank: dict | None) -> dict | None:
    """The search's backbone pre-rank (#16) against what its trials found: each backbone's LogME and k-NN
    scores, its best validation accuracy, and whether LogME's and k-NN's first choice was the best backbone."""
    if not prerank or not prerank.get("best_validation"):
        return None
    scores, best = prerank["scores"], prerank["best_validation"]
    top = max(best, key=best.__getitem__)
    knn = {n: v["knn_accuracy"] for n, v in scores.items() if v.get("knn_accuracy") is not None}
    return {"backbones": {Path(n).name: {"logme": v["logme"], "knn_accuracy": v.get("knn_accuracy"),
                                         "best_validation": best.get(n)} for n, v in scores.items()},
            "logme_top_was_best": prerank["order"][0] == top,
            "knn_top_was_best": (max(knn, key=knn.__getitem__) == top) if knn else None,
            "seconds": prerank.get("seconds")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="sst2:300,subj:300,sst2:1000",
                    help="comma-separated data:rows[:seed] (data: sst2, subj, sst5; hymenoptera:all for the images)")
    ap.add_argument("--test-rows", type=int, default=1000)
    ap.add_argument("--refit", action="store_true",
                    help="search with --refit; each case also records the selected trial's own test score")
    ap.add_argument("--score-trials", action="store_true",
                    help="keep every trial's checkpoint and score each finished trial on the test rows afterwards "
                         "(to compare selection rules; text cases)")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    ap.add_argument("--append", action="store_true",
                    help="keep the cases already in --out (each records its own commit); a case measured "
                         "again replaces its old entry")
    args = ap.parse_args()
    import transformers

    transformers.utils.logging.set_verbosity_error()
    tmp = Path(tempfile.mkdtemp(prefix="autotransfer-robust-"))
    specs = args.cases.split(",")
    cases: list[dict] = []
    if args.append and args.out.exists():
        cases = [c for c in json.loads(args.out.read_text())["cases"] if c["case"] not in specs]
    done_before = len(cases)
    for spec in specs:
        source, rows, seed = parse_case(spec)
        folder = tmp / spec.replace(":", "-")
        if source == "hymenoptera":
            search_data, hand_data = make_image_case(folder, seed)
            recipes = image_recipes(hand_data, seed)
            searched = run_search(search_data, folder / "run", seed, args.refit, task="image-cls")
            n_test = sum(1 for _ in (search_data / "test").rglob("*") if _.is_file())
            description = "PyTorch tutorial: head-only and full FT, SGD lr 1e-3 momentum 0.9, 10 epochs, batch 4"
        else:
            search_data, hand_data = make_case(folder, source, int(rows), args.test_rows, seed)
            recipes = [recipe_on(b, hand_data, folder / f"recipe-{b.name}", seed) for b in BACKBONES]
            searched = run_search(search_data, folder / "run", seed, args.refit, score_trials=args.score_trials)
            n_test = len(pd.read_csv(search_data / "test.tsv", sep="\t"))
            description = "full fine-tuning, lr 2e-5, 3 epochs, batch 32 (transformers.Trainer)"
        best_recipe = max(recipes, key=lambda r: r["test_accuracy"])
        p = best_recipe["test_accuracy"]
        half = 1.96 * math.sqrt(p * (1 - p) / n_test)
        diff = searched["test_accuracy"] - p
        verdict = "win" if diff > half else ("loss" if diff < -half else "tie")
        case = {"case": spec, "data": source, "rows": int(rows) if rows.isdigit() else rows, "seed": seed,
                "test_rows": n_test, "git": git_state(),
                "recipe": {"description": description,
                           "runs": recipes, "best_backbone": best_recipe["backbone"]},
                "search": searched, "difference": diff, "test_interval_half_width": half, "verdict": verdict}
        cases.append(case)
        refit_note = ("" if searched["refit"] is None else
                      f" [refit {searched['refit']['refit_gain']:+.4f} over the selected trial]")
        print(f"{spec:>12}: search {searched['test_accuracy']:.4f} ({searched['best']['strategy']} on "
              f"{searched['best']['backbone']}, {searched['wall_s']:.0f}s) vs recipe {p:.4f} "
              f"({best_recipe['backbone']}): {diff:+.4f} +- {half:.4f} -> {verdict}{refit_note}{_soup_note(searched)}",
              flush=True)
        write(args.out, cases, done=len(cases) - done_before == len(specs))  # after every case: a stopped run keeps its cases


def _soup_note(searched: dict) -> str:
    soup = searched.get("soup")
    if not soup:
        return ""
    if not soup["exported"]:
        return " [soup: not better on validation, best trial exported]"
    return (f" [soup of {soup['ingredients']} exported: {soup['validation_gain']:+.4f} on validation, "
            f"{soup['soup_test_gain']:+.4f} on test over the best trial]")


def _refit_summary(cases: list[dict]) -> dict:
    gains = [c["search"]["refit"]["refit_gain"] for c in cases if c["search"].get("refit")]
    if not gains:
        return {}
    return {"refit_cases": len(gains), "refit_mean_gain": sum(gains) / len(gains),
            "refit_better": sum(g > 0 for g in gains), "refit_worse": sum(g < 0 for g in gains)}


def _prerank_summary(cases: list[dict]) -> dict:
    held = [c["search"]["prerank"] for c in cases if c["search"].get("prerank")]
    if not held:
        return {}
    return {"prerank_cases": len(held), "prerank_logme_top_was_best": sum(h["logme_top_was_best"] for h in held),
            "prerank_knn_top_was_best": sum(bool(h["knn_top_was_best"]) for h in held)}


def write(path: Path, cases: list[dict], done: bool) -> None:
    counts = {v: sum(1 for c in cases if c["verdict"] == v) for v in ("win", "tie", "loss")}
    out = {
        "benchmark": "robustness",
        **provenance(("torch", "transformers", "ray", "optuna", "scikit-learn")),
        "complete": done,
        "cases": cases,
        "summary": {**counts, "mean_difference": sum(c["difference"] for c in cases) / max(1, len(cases)),
                    **_refit_summary(cases), **_prerank_summary(cases)},
    }
    path.write_text(json.dumps(out, indent=2, default=str))
    print(json.dumps(out["summary"]), "->", path, flush=True)


if __name__ == "__main__":
    main()
