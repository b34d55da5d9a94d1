"""Sequential transfer: a source task before the target search (``--source-data``).

The BERT tutorial fine-tunes on a related source task (natural-language inference) before the
target task (sentiment).  Whether that intermediate step helps depends on the data, so it is a
search decision: for each backbone of the space, the source stage fine-tunes it once on the
source data and the target search gets both ``<backbone>`` and ``<backbone>+source`` to choose
from.

The stage's recipe is fixed, not searched: the task's standard recipe (text: full fine-tuning at
lr 2e-5, weight decay 0.01, batch 32, the Hugging Face tutorial's) for the same budget rule as any
trial (``--max-epochs`` epochs, or the ``--min-steps`` floor on small source data;
:mod:`autotransfer.budget`).  The source data's validation split (carved like the target's) picks
the best checkpoint and gives the source metric; its test share is trained on, since nothing is
tested there.  The result is saved in its library's standard format under
``<run>/source/<backbone>/`` and enters the target search through the same path as an earlier
run's ``best/`` (its head dropped, a fresh one built for the target labels).

A finished stage is reused when the same backbone, source data, recipe and budget are asked again
(a resumed run, or a rerun into the same folder); a resumed run whose source data changed is refused.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from autotransfer.errors import UserError

if TYPE_CHECKING:
    from autotransfer.data import LabeledSplits
    from autotransfer.results import TrialRecord
    from autotransfer.settings import SearchSettings
    from autotransfer.space import SearchSpace
    from autotransfer.tasks.base import BackboneInfo, Task

#: a backbone after the source stage is named ``<backbone>+source`` in the search
SUFFIX = "+source"
#: the stage's models, one folder per backbone, inside the run folder
FOLDER = "source"
#: written last in a finished stage's folder: what it was trained from, and its result
MARKER = "source_stage.json"


@dataclass
class SourceResult:
    """One backbone's source stage."""

    backbone: str
    name: str  # the backbone's name in the target search: ``<backbone>+source``
    folder: str
    labels: list[str]
    metric: str
    validation_metric: float
    train_examples: int
    validation_examples: int
    steps: int
    seconds: float
    reused: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_source(settings: SearchSettings) -> LabeledSplits:
    """The source data, read and checked by the task's own reader with the ``source_`` options; a problem is
    answered in one line naming ``--source-data`` and the ``--source-...`` flags."""
    from autotransfer.tasks import task_spec

    spec = task_spec(settings.task)
    as_target = copy.copy(settings)  # a view for the reader, not re-validated: the source is checked right here
    as_target.data, as_target.options, as_target.val_frac = settings.source_data, dict(settings.source_options), None
    try:
        splits = spec.load_data(as_target)
    except UserError as exc:
        message = str(exc)
        for option in spec.options:
            message = re.sub(re.escape(option.flag) + r"\b", "--source-" + option.flag[2:], message)
        raise UserError(f"--source-data: {message}") from None
    return splits


def fingerprint(settings: SearchSettings) -> str:
    """Names, sizes and modification times of the source files, with the options that read them."""
    from autotransfer.api import data_fingerprint

    h = hashlib.sha1(data_fingerprint(settings.source_data).encode())  # type: ignore[arg-type]
    h.update(json.dumps(settings.source_options, sort_keys=True).encode())
    return h.hexdigest()


def stage_folder(out: Path, backbone: str) -> Path:
    """``<run>/source/<short name>-<hash>``: readable, and distinct for two backbones with one short name."""
    from autotransfer.backbones import display_name

    short = re.sub(r"[^A-Za-z0-9._-]+", "_", display_name(backbone))[:60] or "backbone"
    return out / FOLDER / f"{short}-{hashlib.sha1(backbone.encode()).hexdigest()[:8]}"


def run_source_stage(task: Task, backbones: dict[str, BackboneInfo], splits: LabeledSplits,
                     settings: SearchSettings, log: Callable[[str], None]) -> list[SourceResult]:
    """Fine-tune each backbone on the source data (or reuse a finished stage); one result per backbone."""
    out = settings.output
    assert out is not None
    key_common = {"data": fingerprint(settings), "seed": settings.seed, "max_length": settings.max_length,
                  "max_epochs": settings.max_epochs, "evals_per_epoch": settings.evals_per_epoch,
                  "min_steps": settings.min_steps, "recipe": dataclasses.asdict(task.recipes()[0])}
    results = []
    for i, (name, bb) in enumerate(backbones.items(), 1):
        folder = stage_folder(out, name)
        key = {**key_common, "backbone": bb.source}
        done = _finished(folder, key, settings.resume, name)
        if done is not None:
            log(f"source stage {i}/{len(backbones)}: {name}: reused the finished stage in {folder} "
                f"(source validation {done.metric} {done.validation_metric:.4f})")
            results.append(done)
            continue
        result = _train_one(task, bb, splits, settings, folder, key, log, f"{i}/{len(backbones)}")
        results.append(result)
    return results


def _finished(folder: Path, key: dict[str, Any], resume: bool, name: str) -> Optional[SourceResult]:
    marker = folder / MARKER
    if not marker.is_file():
        return None
    try:
        saved = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    if saved.get("key") != key:
        if resume:
            raise UserError(f"--source-data: the source stage of {name} in {folder} was trained on other source data "
                            "or settings; resuming would mix them (start a new run)")
        return None
    return SourceResult(**{**saved["result"], "reused": True})


def _train_one(task: Task, bb: BackboneInfo, splits: LabeledSplits, settings: SearchSettings, folder: Path,
               key: dict[str, Any], log: Callable[[str], None], position: str) -> SourceResult:
    from autotransfer.budget import derive_budget
    from autotransfer.checkpoints import WEIGHTS_FILE
    from autotransfer.settings import local_cpu_count
    from autotransfer.space import TRAINING_DEFAULTS
    from autotransfer.strategies import get_strategy
    from autotransfer.export import model_from_checkpoint
    from autotransfer.training import TrialContext, TrialFailed, train

    recipe = task.recipes()[0]
    metric = task.objective.default_metric
    prepared, _ = task.prepare([bb], splits, settings)
    data = task.with_train(prepared[bb.name], ("train", "test"))  # nothing is tested on the source data
    n_train, n_val = task.num_examples(data, "train"), task.num_examples(data, "validation")
    config = {**TRAINING_DEFAULTS, **get_strategy(recipe.strategy).defaults, **recipe.params, **recipe.fixed,
              "backbone": bb.name, "strategy": recipe.strategy}
    batch = int(config["batch_size"])
    budget = derive_budget(n_train, batch, settings.max_epochs, settings.evals_per_epoch, 1, settings.min_steps)
    log(f"source stage {position}: {bb.name}: {recipe.name} on {n_train} source examples "
        f"({splits.num_labels} {task.objective.noun}), {budget.steps(batch)} steps; {n_val} validation examples "
        "pick its best checkpoint")
    ctx = TrialContext(task=settings.task, backbones={bb.name: bb}, prepared={bb.name: data},
                       label_names=list(splits.label_names), metric=metric, max_epochs=settings.max_epochs,
                       evals_per_epoch=settings.evals_per_epoch, precision=settings.precision,
                       threads=local_cpu_count(), seed=settings.seed, use_gpu=settings.gpus_per_trial > 0,
                       trust_remote_code=settings.trust_remote_code, budget=budget)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    weights = partial / "checkpoint"
    weights.mkdir(parents=True)
    best = {"metric": float("-inf")}

    def keep(metrics: dict[str, Any], checkpoint_dir: Optional[str]) -> None:
        best["metric"] = float(metrics["best_" + metric])
        if checkpoint_dir is not None:  # every report carries the best weights so far
            (weights / WEIGHTS_FILE).write_bytes((Path(checkpoint_dir) / WEIGHTS_FILE).read_bytes())

    start = time.perf_counter()
    try:
        last = train(config, ctx, keep)
    except TrialFailed as exc:
        raise UserError(f"--source-data: the source stage of {bb.name} failed: {exc}") from None
    model = model_from_checkpoint(config, ctx, weights)
    model_dir = partial / "model"
    task.export(model, bb, ctx.label_names, model_dir)
    seconds = time.perf_counter() - start
    result = SourceResult(backbone=bb.name, name=bb.name + SUFFIX, folder=str(folder), labels=list(ctx.label_names),
                          metric=metric, validation_metric=best["metric"], train_examples=n_train,
                          validation_examples=n_val, steps=int(last.get("step", 0)), seconds=round(seconds, 1))
    # the sidecar an exported best/ carries: the target search reads where this backbone came from
    (model_dir / "autotransfer.json").write_text(json.dumps(
        {"task": settings.task, "trial_id": "source-stage", "backbone": bb.name,
         "validation_metric": result.validation_metric, "source_stage": result.to_dict()}, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    model_dir.rename(folder)
    shutil.rmtree(partial, ignore_errors=True)
    (folder / MARKER).write_text(json.dumps({"key": key, "result": result.to_dict()}, indent=2, default=str))
    log(f"source stage {position}: {bb.name}: source validation {metric} {result.validation_metric:.4f} "
        f"after {result.steps} steps, {result.seconds:.0f}s -> {result.name}")
    return result


def source_backbones(task: Task, results: list[SourceResult], settings: SearchSettings) -> dict[str, BackboneInfo]:
    """Each stage's model as a backbone of the target search, named ``<backbone>+source``."""
    found = {}
    for r in results:
        info = task.describe_backbone(r.folder, settings)
        info.name = r.name
        info.details["source_stage"] = r.to_dict()
        found[r.name] = info
    return found


def with_source(space: SearchSpace, results: list[SourceResult]) -> SearchSpace:
    """The space with each ``<backbone>+source`` right after its backbone."""
    after = {r.backbone: r.name for r in results}
    names = [n for b in space.backbones for n in ((b, after[b]) if b in after else (b,))]
    return space.restrict(names)


def compare(results: list[SourceResult], records: list[TrialRecord]) -> list[dict[str, Any]]:
    """Per backbone: the best target validation metric with and without the source stage."""
    rows = []
    for r in results:
        def best(name: str) -> Optional[float]:
            scores = [t.best_metric for t in records if t.ok and t.backbone == name and t.best_metric is not None]
            return max(scores) if scores else None

        plain, sourced = best(r.backbone), best(r.name)
        rows.append({"backbone": r.backbone, "without": plain, "with": sourced,
                     "gain": None if plain is None or sourced is None else sourced - plain})
    return rows


def describe_comparison(rows: list[dict[str, Any]], metric: str) -> str:
    """One line: did the source stage help, per backbone."""
    parts = []
    for row in rows:
        if row["gain"] is None:
            parts.append(f"{row['backbone']}: not compared (no finished trial "
                         f"{'with' if row['with'] is None else 'without'} it)")
        else:
            verdict = "helped" if row["gain"] > 0 else ("no change" if row["gain"] == 0 else "did not help")
            parts.append(f"{row['backbone']}: {verdict} ({row['without']:.4f} -> {row['with']:.4f})")
    return f"source stage, best validation {metric} without -> with: " + "; ".join(parts)
