"""Benchmark: autotransfer vs ``transformers.Trainer.hyperparameter_search`` (Optuna), side by side.

All in this one process, on the same SST-2 sample (``--train-rows`` stratified train rows,
the full dev set for validation, the full labeled test set for test) and the same two
MiniLM backbones:

- **peer**: what a Hugging Face user writes today: ``Trainer.hyperparameter_search(
  backend="optuna")`` over the learning rate only (log-uniform, the same range as
  autotransfer's full fine-tuning ``lr``), full fine-tuning, evaluation every epoch (so
  Optuna's default median pruner may stop trials), ``--num-samples`` trials split
  evenly over the two backbones, at most ``--max-epochs`` epochs each.  The best trial
  over both backbones (by its final validation accuracy, the objective Trainer
  optimises) is scored on the test set with the weights it ended with; no re-training
  is charged to the peer.
- **autotransfer**: ``autotransfer.search`` over both backbones x four strategies with
  ``search_spaces/text-cls-local.yaml``, the same number of trials and the same epoch cap;
  its exported best model is scored on the test set.
- **recipe**: the fixed hand-written recipe (full fine-tuning, lr 2e-5, 3 epochs) per
  backbone, from ``text_cls.py``.

Each side uses the whole machine the way it does by default (Trainer: one process with
all cores; autotransfer: trials in parallel with one core each).  Prints and writes JSON
with test accuracies and wall times, and autotransfer's ratios to the peer.

With ``--match-wall`` autotransfer also runs a second search given the peer's wall time
instead of its trial count (an AutoML comparison at equal budget): ``--time-budget`` set
to the peer's wall time less the fixed costs the first search had outside its trials
(start-up, pre-rank, export, test: its wall time less its trial-seconds over the trials
run at once; or ``--fixed-costs S`` when ``--skip-equal-trials`` leaves that search out),
and up to ``--wall-samples`` trials.  Its whole wall time is what is compared, whatever
it turns out to be.

    python benchmarks/peer.py              # ~35 minutes on 2 CPU cores
    python benchmarks/peer.py --match-wall --skip-recipe   # ~55 minutes
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import provenance  # noqa: E402
from text_cls import BACKBONES, SST2, TokenizedRows, make_data, read_splits, recipe  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
LR_RANGE = (1e-5, 3e-4)  # search_spaces/text-cls-local.yaml, strategy full, lr


def search_one(backbone: Path, frames: dict, out: Path, n_trials: int, epochs: int, seed: int) -> tuple:
    """One backbone's Trainer.hyperparameter_search; returns its summary and the best trial's final model."""
    import optuna
    import torch
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainerCallback, TrainingArguments)

    tok = AutoTokenizer.from_pretrained(backbone)

    train, dev, test = (TokenizedRows(tok, frames[s]) for s in ("train", "dev", "test"))
    ended: dict[int, dict] = {}  # optuna trial number -> weights the trial ended with
    current = {"number": -1}

    def hp_space(trial):
        current["number"] = trial.number
        return {"learning_rate": trial.suggest_float("learning_rate", *LR_RANGE, log=True)}

    class KeepFinalWeights(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kwargs):
            ended[current["number"]] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def model_init(trial=None):
        return AutoModelForSequenceClassification.from_pretrained(backbone, num_labels=2, dtype=torch.float32)

    def accuracy(pred):
        return {"accuracy": float((pred.predictions.argmax(-1) == pred.label_ids).mean())}

    args = TrainingArguments(output_dir=str(out / backbone.name), num_train_epochs=epochs,
                             per_device_train_batch_size=32, per_device_eval_batch_size=64, weight_decay=0.01,
                             eval_strategy="epoch", save_strategy="no", report_to=[], seed=seed,
                             logging_strategy="no", disable_tqdm=True, use_cpu=not torch.cuda.is_available())
    trainer = Trainer(model_init=model_init, args=args, train_dataset=train, eval_dataset=dev,
                      data_collator=DataCollatorWithPadding(tok), compute_metrics=accuracy,
                      callbacks=[KeepFinalWeights()])
    t0 = time.perf_counter()
    best_run = trainer.hyperparameter_search(
        backend="optuna", hp_space=hp_space, n_trials=n_trials, direction="maximize",
        compute_objective=lambda m: m["eval_accuracy"], sampler=optuna.samplers.TPESampler(seed=seed))
    run = {"backbone": backbone.name, "trials": n_trials, "best_lr": best_run.hyperparameters["learning_rate"],
           "best_validation_accuracy": best_run.objective, "search_s": time.perf_counter() - t0}
    model = model_init()
    model.load_state_dict(ended[int(best_run.run_id)])
    return run, model, tok, test, args


def peer(backbones: list[Path], data: Path, out: Path, trials: int, epochs: int, seed: int) -> dict:
    """Trainer.hyperparameter_search(backend='optuna') over the learning rate, full fine-tuning."""
    import optuna
    from transformers import DataCollatorWithPadding, Trainer

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    start = time.perf_counter()
    frames = read_splits(data)
    per_backbone = [trials // len(backbones) + (i < trials % len(backbones)) for i in range(len(backbones))]
    runs, best = [], None
    for backbone, n_trials in zip(backbones, per_backbone):
        run, model, tok, test, args = search_one(backbone, frames, out, n_trials, epochs, seed)
        runs.append(run)
        print(f"peer {backbone.name}: {n_trials} trials, best lr {run['best_lr']:.2e}, "
              f"validation {run['best_validation_accuracy']:.4f}, {run['search_s']:.0f}s", flush=True)
        if best is None or run["best_validation_accuracy"] > best[0]["best_validation_accuracy"]:
            best = (run, model, tok, test, args)
    run, model, tok, test, args = best
    scorer = Trainer(model=model, args=args, eval_dataset=test, data_collator=DataCollatorWithPadding(tok))
    pred = scorer.predict(test)
    acc = float((pred.predictions.argmax(-1) == np.asarray(test.labels)).mean())
    return {"runs": runs, "best": {"backbone": run["backbone"], "lr": run["best_lr"],
                                   "validation_accuracy": run["best_validation_accuracy"]},
            "test_accuracy": acc, "wall_s": time.perf_counter() - start}


def run_autotransfer(autotransfer, data: Path, out: Path, trials: int, epochs: int, seed: int,
                     time_budget_s: float | None = None) -> dict:
    """One ``autotransfer.search`` over both backbones x four strategies; its summary and wall time."""
    start = time.perf_counter()
    result = autotransfer.search(
        task="text-cls", data=data, space=REPO / "search_spaces" / "text-cls-local.yaml",
        backbones=[str(b) for b in BACKBONES], num_samples=trials, max_epochs=epochs,
        seed=seed, dashboard=False, output=out, time_budget_s=time_budget_s,
    )
    return {
        "best": {"backbone": Path(result.best.backbone).name, "strategy": result.best.strategy,
                 "config": result.best.params, "validation_accuracy": result.best.best_metric},
        "test_accuracy": result.test_metrics["accuracy"], "wall_s": time.perf_counter() - start,
        "trial_epochs": sum(r.epochs for r in result.records),
        "trial_seconds": sum(r.wall_time_s for r in result.records),
        "trials": {s: sum(1 for r in result.records if r.status == s)
                   for s in ("completed", "stopped_early", "failed")},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-rows", type=int, default=2000)
    ap.add_argument("--num-samples", type=int, default=8, help="trials, for each side")
    ap.add_argument("--max-epochs", type=int, default=3, help="epochs per trial at most, for each side")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-recipe", action="store_true", help="leave out the fixed recipe runs")
    ap.add_argument("--match-wall", action="store_true",
                    help="also run autotransfer on the peer's wall time instead of its trial count")
    ap.add_argument("--wall-samples", type=int, default=64, help="--match-wall: trials at most (the time ends it)")
    ap.add_argument("--skip-equal-trials", action="store_true",
                    help="--match-wall: leave out the search at the peer's trial count (needs --fixed-costs)")
    ap.add_argument("--fixed-costs", type=float, default=None, metavar="S",
                    help="--match-wall: seconds of the search outside its trials (default: measured by the "
                         "search at the peer's trial count)")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    args = ap.parse_args()
    if args.skip_equal_trials and (not args.match_wall or args.fixed_costs is None):
        ap.error("--skip-equal-trials needs --match-wall and --fixed-costs")
    if not SST2.is_dir() or not all(b.is_dir() for b in BACKBONES):
        sys.exit(f"needs {SST2} and {', '.join(map(str, BACKBONES))}")

    import transformers

    import autotransfer

    transformers.utils.logging.set_verbosity_error()
    tmp = Path(tempfile.mkdtemp(prefix="autotransfer-peer-"))
    data = make_data(tmp / "sst2", args.train_rows, args.seed)

    peer_result = peer(BACKBONES, data, tmp / "peer", args.num_samples, args.max_epochs, args.seed)
    print(f"peer: test accuracy {peer_result['test_accuracy']:.4f}, {peer_result['wall_s']:.0f}s", flush=True)

    ours = None
    if not args.skip_equal_trials:
        ours = run_autotransfer(autotransfer, data, tmp / "search", args.num_samples, args.max_epochs, args.seed)
        print(f"autotransfer: test accuracy {ours['test_accuracy']:.4f}, {ours['wall_s']:.0f}s", flush=True)
    matched = None
    if args.match_wall:
        if args.fixed_costs is not None:
            fixed = args.fixed_costs
        else:
            from autotransfer.settings import local_cpu_count

            concurrent = local_cpu_count()  # trials at once: one CPU each, the CPUs the local Ray is given
            fixed = max(0.0, ours["wall_s"] - ours["trial_seconds"] / min(concurrent, args.num_samples))
        budget = peer_result["wall_s"] - fixed
        matched = run_autotransfer(autotransfer, data, tmp / "search-matched", args.wall_samples, args.max_epochs,
                                   args.seed, time_budget_s=budget)
        matched["time_budget_s"] = budget
        matched["fixed_costs_estimate_s"] = fixed
        print(f"autotransfer, the peer's wall time ({budget:.0f}s of trials): test accuracy "
              f"{matched['test_accuracy']:.4f}, {matched['wall_s']:.0f}s", flush=True)

    recipes = [] if args.skip_recipe else [recipe(b, data, tmp / f"recipe-{b.name}", args.seed) for b in BACKBONES]
    for r in recipes:
        print(f"recipe {r['backbone']}: test accuracy {r['test_accuracy']:.4f}, {r['wall_s']:.0f}s", flush=True)
    best_recipe = max(recipes, key=lambda r: r["test_accuracy"]) if recipes else None

    sides = {"": ours, "matched_wall_": matched}  # ratio-name prefix -> autotransfer's search (None: not run)
    ratios: dict[str, float] = {}
    goal_met: dict[str, bool] = {}
    for prefix, side in sides.items():
        if side is None:
            continue
        ratios[f"{prefix}test_accuracy_gain_vs_peer"] = side["test_accuracy"] - peer_result["test_accuracy"]
        ratios[f"{prefix}wall_time_vs_peer"] = side["wall_s"] / peer_result["wall_s"]
        if best_recipe is not None:
            ratios[f"{prefix}test_accuracy_gain_vs_best_recipe"] = side["test_accuracy"] - best_recipe["test_accuracy"]
            ratios[f"{prefix}wall_time_vs_both_recipe_runs"] = side["wall_s"] / sum(r["wall_s"] for r in recipes)
        goal_met[f"{prefix}higher_accuracy_than_peer"] = ratios[f"{prefix}test_accuracy_gain_vs_peer"] > 0
        goal_met[f"{prefix}equal_or_lower_wall_time_than_peer"] = ratios[f"{prefix}wall_time_vs_peer"] <= 1.0
    out = {
        "benchmark": "peer",
        **provenance(("torch", "transformers", "ray", "optuna")),
        "data": {"train_rows": args.train_rows, "validation_rows": 872, "test_rows": 1821, "source": "SST-2"},
        "budget": {"trials": args.num_samples, "max_epochs_per_trial": args.max_epochs},
        "peer": {"description": "transformers.Trainer.hyperparameter_search(backend='optuna'), learning rate only "
                                f"(log-uniform {LR_RANGE[0]:g}..{LR_RANGE[1]:g}), full fine-tuning, batch 32, "
                                "trials split over the two backbones", **peer_result},
        **({"autotransfer": ours} if ours else {}),
        **({"autotransfer_matched_wall": matched} if matched else {}),
        "recipe": {"description": "full fine-tuning, lr 2e-5, 3 epochs, batch 32 (transformers.Trainer)",
                   "runs": recipes},
        "ratios": ratios,
        "goal_met": goal_met,
    }
    args.out.write_text(json.dumps(out, indent=2, default=str))
    print(json.dumps({"ratios": out["ratios"], "goal_met": out["goal_met"]}, indent=2))


if __name__ == "__main__":
    main()
