"""The public Python API; the CLI is a thin layer over it.

    >>> import autotransfer
    >>> result = autotransfer.search(task="text-cls", data="reviews.csv", num_samples=8)  # doctest: +SKIP
    >>> result.best.backbone, result.test_metrics["accuracy"]                            # doctest: +SKIP

Flow: settings -> data, space and backbones validated (nothing written yet) ->
preprocessing once -> Ray Tune search -> trial records -> best exported and
tested -> results and report written.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from rich.console import Console

from autotransfer.budget import Budget, derive_budget
from autotransfer.errors import UserError
from autotransfer.report_writer import ReportWriter
from autotransfer.run_info import RunInfo
from autotransfer.results import (INTERRUPTED, TrialRecord, environment, rank, record_from_result, save_results,
                                  settle_interrupted)
from autotransfer.settings import GALLERY_DIR, STUDY_FILE, TUNE_DIR, SearchSettings
from autotransfer.shipping import plan_folders
from autotransfer.storage import check_target, prune_checkpoints, upload_run
from autotransfer.space import SearchSpace, load_space
from autotransfer.tasks import get_task, task_spec

if TYPE_CHECKING:
    from autotransfer.tasks.base import BackboneInfo, Task

#: files that mark a folder as holding a run
RUN_MARKERS = ("settings.json", "results.json", TUNE_DIR)
#: task -> a shipped space whose backbones load offline (weights installed by the set-up command)
OFFLINE_SPACES = {"text-cls": "search_spaces/text-cls-example.yaml"}


class SearchFailed(RuntimeError):
    """Every trial failed; the message says why (exit code 1)."""


def no_result_reason(records: list[TrialRecord], time_budget_s: Optional[float], budget: Budget) -> str:
    """Why a search has no model to export, in one line: the trials' own errors, or a time budget that ended
    before any trial's first evaluation (then nothing failed: the budget was too short for one round)."""
    errors = sorted({r.error for r in records if r.error})
    if errors:
        return f"every trial failed ({len(records)}); first reason: {errors[0]}"
    if time_budget_s is not None and not any(r.iterations for r in records):
        b = budget.max_batch_size
        return (f"--time-budget {time_budget_s:g} s ended before any trial's first evaluation (a round is "
                f"{budget.examples_per_round} training examples, {budget.steps(b, 1)} steps at batch {b}); "
                f"allow more time, or shorten rounds with a lower --min-steps")
    return f"no trial reported a result ({len(records)} trials)"


class SearchInterrupted(RuntimeError):
    """The search was stopped (Ctrl-C) before every trial finished; the message says how to resume."""


@dataclass
class SearchResult:
    """What a finished search produced."""

    output: Path
    records: list[TrialRecord]
    best: Optional[TrialRecord]
    best_dir: Optional[Path]
    test_metrics: dict[str, float]
    report: Optional[Path]
    dashboard_url: Optional[str] = None
    stats: dict[str, Any] = field(default_factory=dict)


def resume(run_dir: Path | str, *, console: Optional[Console] = None) -> SearchResult:
    """Continue an interrupted search in ``run_dir`` (Ctrl-C, a killed process, a reboot).

    Finished trials are kept as they were, unfinished ones restart from their last checkpoint,
    and the sampler keeps its history (Ray Tune restore).
    """
    return _Search(settings_for_resume(Path(run_dir)), console or Console(stderr=True)).run()


def search(settings: Optional[SearchSettings] = None, *, console: Optional[Console] = None,
           **kwargs: Any) -> SearchResult:
    """Run a search. Pass a :class:`SearchSettings` or its fields as keyword arguments
    (the same names as the CLI options: ``task``, ``data``, ``num_samples``..., and the task's own
    data options such as ``text_col``)."""
    if settings is None:
        settings = SearchSettings.build(**kwargs)
    elif kwargs:
        raise TypeError("pass either a SearchSettings or keyword arguments, not both")
    return _Search(settings, console or Console(stderr=True)).run()


def check_output(settings: SearchSettings) -> None:
    """Refuse an output folder that holds an earlier run (unless ``overwrite``) or cannot be written."""
    out = settings.output
    assert out is not None
    if out.exists() and not out.is_dir():
        raise UserError(f"--output: {out} exists and is not a folder")
    if out.is_dir() and any((out / m).exists() for m in RUN_MARKERS) and not settings.overwrite:
        raise UserError(f"--output: {out} already holds a run; pass --overwrite to replace it or choose another "
                        "--output/--run-name")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"--output: {parent} is a file, so {out} cannot be created")
    try:  # a real probe: permission bits say nothing for root, read-only mounts or /proc
        tempfile.TemporaryDirectory(dir=parent, prefix=".autotransfer-probe-").cleanup()
    except OSError:
        raise UserError(f"--output: {parent} is not writable") from None


def data_fingerprint(path: Path) -> str:
    """Names, sizes and modification times of the data files: a resumed run must see the same data."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    h = hashlib.sha1()
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(path) if f != path else f.name}:{st.st_size}:{int(st.st_mtime)}\n".encode())
    return h.hexdigest()


def settings_for_resume(run_dir: Path) -> SearchSettings:
    """The settings of the run in ``run_dir``, marked to resume."""
    run_dir = Path(run_dir).expanduser().resolve()
    saved = run_dir / "settings.json"
    if not saved.is_file() or not (run_dir / TUNE_DIR).is_dir():
        raise UserError(f"{run_dir}: no interrupted run here to resume (expected settings.json and tune/)")
    data = json.loads(saved.read_text())
    data.update(output=str(run_dir), resume=True, overwrite=False)
    return SearchSettings.from_dict(data)


def _release_gpu_cache() -> None:
    """Hand the GPU blocks this process cached back to the driver once a search is over.

    The calling process runs the soup, the export and the test evaluation on the GPU when trials use one,
    and torch's caching allocator keeps those blocks for the process.  Two searches run one after the other in
    one process left the GPU's used memory higher after each (nvidia-smi on an H100: +184 MiB, then +72 MiB);
    these cached blocks are the likely part of it that this process can give back (not re-measured on a GPU
    since).  Nothing is imported here that the search did not import: bad input stays fast.
    """
    import gc
    import sys

    torch = sys.modules.get("torch")
    if torch is None or not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return  # nothing cached on a GPU: no collection either (it took 0.3 s of a CPU search's end)
    gc.collect()
    torch.cuda.empty_cache()


class _Search:
    def _uncertainty(self, records: list[TrialRecord], best: TrialRecord, ctx: Any, meta: RunInfo) -> None:
        """95% intervals and ties with the best trial, from the validation predictions in each checkpoint."""
        import numpy as np

        from autotransfer.storage import local_copy
        from autotransfer.checkpoints import PREDICTIONS_FILE
        from autotransfer.uncertainty import budget_for, intervals

        predictions = {}
        for r in records:
            if not (r.ok and r.checkpoint):
                continue
            try:
                with local_copy(r.checkpoint) as folder:
                    predictions[r.trial_id] = np.load(Path(folder) / PREDICTIONS_FILE)
            except (OSError, ValueError):  # a checkpoint from before predictions were kept
                continue
        y_true = self.task.labels(ctx.prepared[best.backbone], "validation")
        score = self.task.objective.metric_function(self.s.metric)
        found, coverage = intervals(y_true, predictions, best.trial_id, score, seed=self.s.seed,
                                    resamples=self.task.objective.resamples,
                                    budget_s=budget_for(meta.wall_time_s or 0.0))
        for trial_id, one in found.items():
            r = next(r for r in records if r.trial_id == trial_id)
            r.interval, r.tied_with_best = one["interval"], one["tied"]
        meta.intervals = coverage.to_dict()
        if not coverage.complete:
            self.log(f"validation intervals for the best {coverage.trials} of {coverage.of} trials only "
                     f"({coverage.resamples} resamples; one {self.s.metric} evaluation takes {coverage.metric_s:.2f}s "
                     f"and this step is kept within {coverage.budget_s:.0f}s, a tenth of the search or a minute)")
        tied = sum(1 for r in records if r.tied_with_best and r is not best)
        if tied:
            self.log(f"{tied} other trial(s) are statistically tied with the best on the validation set "
                     f"({len(y_true)} examples; 95% paired bootstrap): see the report's 'tied' column")

    def _refit(self, best: TrialRecord, ctx: Any, out: Path, remote: bool) -> tuple[TrialRecord, dict[str, Any]]:
        """The best configuration retrained on train + validation; a record pointing at its weights."""
        from autotransfer.settings import local_cpu_count
        from autotransfer.training import refit

        epochs = float(best.best_epoch or best.epochs or 1.0)
        self.log(f"refit: training trial {best.trial_id}'s configuration on train + validation "
                 f"for {epochs:.3g} epochs (where it peaked)")
        info = refit(best.config, ctx, epochs, out / "refit.partial",
                     threads=ctx.threads if remote else local_cpu_count())
        return dataclasses.replace(best, checkpoint=str(out / "refit.partial")), {"refit": info}

    def __init__(self, settings: SearchSettings, console: Console):
        self.s, self.console = settings, console
        self.spec = task_spec(settings.task)
        self.source_splits: Any = None  # --source-data, read and checked with the rest of the input

    def _source_stage(self, space: SearchSpace, backbones: dict[str, BackboneInfo]
                      ) -> tuple[SearchSpace, dict[str, BackboneInfo], list[Any]]:
        """With ``--source-data``: each backbone fine-tuned on the source data first; the space gets
        ``<backbone>+source`` beside each backbone."""
        if self.source_splits is None:
            return space, backbones, []
        from autotransfer.source_stage import run_source_stage, source_backbones, with_source

        src = self.source_splits
        self.log(f"source data: {len(src.train)} train / {len(src.validation)} validation / {len(src.test)} test "
                 f"examples, {src.num_labels} {self.task.objective.noun} ({self.s.source_data})")
        results = run_source_stage(self.task, backbones, src, self.s, self.log)
        space = with_source(space, results)
        found = {**backbones, **source_backbones(self.task, results, self.s)}
        return space, {n: found[n] for n in space.backbones}, results

    @functools.cached_property
    def task(self) -> Task:
        """The task's implementation: imported (torch, transformers...) once the cheap checks have passed."""
        return get_task(self.s.task)

    def log(self, msg: str) -> None:
        self.console.print(msg, highlight=False, soft_wrap=True)

    # ------------------------------------------------------------ validation
    def validate(self) -> tuple[SearchSpace, Any, dict[str, BackboneInfo]]:
        s = self.s
        if s.resume:
            saved = json.loads((s.output / "settings.json").read_text())  # type: ignore[operator]
            if saved.get("data_fingerprint") not in (None, data_fingerprint(s.data)):
                raise UserError(f"--data: {s.data} changed since the run started; resuming would mix datasets")
        else:
            check_output(s)
            check_target(s)
        if s.address is None:  # the local resources are known before Ray starts: refuse impossible requests now
            from autotransfer.cluster import concurrency, local_cluster

            concurrency(s, local_cluster(count_gpus=s.gpus_per_trial > 0))
        space = load_space(s.space).restrict(s.backbones, s.strategies)  # type: ignore[arg-type]
        if space.task and space.task != s.task:
            raise UserError(f"--space: {s.space} is a {space.task} space, but --task is {s.task}")
        if s.source_data is not None:  # read first: its errors are answered before any split is carved
            from autotransfer.source_stage import load_source

            self.source_splits = load_source(s)
        splits = self.spec.load_data(s)
        backbones = self._describe(space)
        for name, bb in backbones.items():
            gguf = bb.details.get("gguf")
            if gguf:
                kinds = ", ".join(f"{k} x{v}" for k, v in gguf["tensor_types"].items())
                self.log(f"backbone {name}: GGUF file ({gguf['architecture']}, {gguf['size_mb']} MB; tensors "
                         f"{kinds}): dequantised to float32 by transformers for training; best/ is a float model")
            tuned = bb.details.get("fine_tuned")
            if tuned:
                run = tuned.get("run") or {}
                self.log(f"backbone {name}: already fine-tuned ({tuned['architecture']}, labels "
                         f"{', '.join(tuned['labels'][:6])}{', ...' if len(tuned['labels']) > 6 else ''}"
                         + (f"; trial {run.get('trial_id')} of an autotransfer {run.get('task')} run" if run else "")
                         + "): its head is dropped and a fresh one built for this run's labels")
        for name, bb in backbones.items():
            if "freeze" in space.strategies and bb.num_layers == 0:
                raise UserError(f"backbone {name!r}: no repeated layers found, so strategy 'freeze' cannot apply; "
                                "drop it with --strategies")
        return space, splits, backbones

    def _describe(self, space: SearchSpace) -> dict[str, BackboneInfo]:
        """Each backbone's description; hub models that cannot be had (offline) are named together, in one line."""
        from autotransfer.backbones import HubUnavailable

        found, missing = {}, []
        for name in space.backbones:
            try:
                found[name] = self.task.describe_backbone(name, self.s)
            except HubUnavailable as exc:
                missing.append((name, exc))
        if len(missing) == 1:
            raise missing[0][1]
        if missing:
            offline = OFFLINE_SPACES.get(self.s.task)
            raise UserError(f"{len(missing)} hub backbone(s) are not cached and the model hub cannot be reached: "
                            f"{', '.join(n for n, _ in missing)}; download them once, pass local folders with "
                            "--backbones" + (f", or search the model a pip package ships: --space {offline}"
                                             if offline else ""))
        return found

    def _fresh_output(self, out: Path) -> None:
        if self.s.overwrite and out.is_dir():
            for m in RUN_MARKERS + ("results.csv", "leaderboard.html", "best", "test_metrics.json", STUDY_FILE,
                                    GALLERY_DIR):
                p = out / m
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
        out.mkdir(parents=True, exist_ok=True)
        (out / "settings.json").write_text(json.dumps({**self.s.to_dict(), "resume": False,
                                                       "data_fingerprint": data_fingerprint(self.s.data)}, indent=2))

    # ------------------------------------------------------------------ run
    def run(self) -> SearchResult:
        try:
            return self._run()
        finally:
            _release_gpu_cache()

    def _run(self) -> SearchResult:
        s = self.s
        t_start = time.perf_counter()
        space, splits, backbones = self.validate()  # before the engine's imports: bad input is answered at once
        space, backbones, sourced = self._source_stage(space, backbones)
        from autotransfer.cluster import concurrency
        from autotransfer.export import export_best, test_metrics
        from autotransfer.gallery import write_gallery
        from autotransfer.live import LiveLeaderboard
        from autotransfer.report import write_report
        from autotransfer.runner import run_tune, start_ray
        from autotransfer.training import TrialContext
        from autotransfer.tune_state import mend_missing_checkpoints, saved_trial_statuses

        summary = splits.summary()
        self.log(f"data: {len(splits.train)} train / {len(splits.validation)} validation / {len(splits.test)} test "
                 f"examples, {splits.num_labels} {self.task.objective.noun}")
        prepared, prep = self.task.prepare(list(backbones.values()), splits, s)
        self.log(f"prepared {len(backbones)} backbone(s) with {prep.distinct} distinct preprocessing(s) "
                 f"in {prep.seconds:.1f}s")
        first = next(iter(prepared.values()))
        budget = derive_budget(self.task.num_examples(first, "train"), space.max_batch_size(), s.max_epochs,
                               s.evals_per_epoch, s.grace_iterations, s.min_steps)
        self.log(budget.describe())
        from autotransfer.prerank import prerank_backbones

        features, prerank = prerank_backbones(self.task, space, backbones, prepared, splits.label_names, s, self.log)
        if prerank:
            space = space.restrict(prerank["kept"])
            backbones = {n: backbones[n] for n in prerank["kept"]}
        recipes = space.recipe_points(self.task.recipes()) if s.baseline else []
        if recipes:
            names = sorted({r.name for r in recipes})
            self.log(f"baseline: {len(recipes)} protected recipe trial(s) first ({'; '.join(names)}), "
                     f"never stopped early" + ("" if len(recipes) <= s.num_samples else
                                               f"; only the first {s.num_samples} fit --num-samples")
                     + " (--no-baseline to skip)")

        cluster = start_ray(s)
        hint = cluster.dashboard_hint()
        self.log(cluster.describe() + (f"; dashboard {hint}" if hint else ""))
        max_concurrent = concurrency(s, cluster)  # refuses resource requests the cluster cannot hold
        shipped: dict[str, Any] = {}
        if cluster.remote:  # the cluster's nodes may not see the driver's folders: check, ship if needed
            shipped, lines = plan_folders(list(backbones.values()))
            for line in lines:
                self.log(line)
        if s.storage:
            self.log(f"storage: {s.tune_storage}" + (f" (results staged in {s.output})" if s.storage_is_uri else ""))

        # inputs are valid: only now is anything written
        out = s.output
        assert out is not None
        if s.resume:
            self.log(f"resuming the run in {out}")
            for trial_id in mend_missing_checkpoints(s.tune_experiment):
                self.log(f"trial {trial_id}: its last saved checkpoint was lost in the crash; it continues from "
                         "the newer one on storage")
        else:
            self._fresh_output(out)
        ctx = TrialContext(task=s.task, backbones=backbones, prepared=prepared, label_names=splits.label_names,
                           metric=s.metric, max_epochs=s.max_epochs, evals_per_epoch=s.evals_per_epoch,
                           precision=s.precision, threads=s.torch_threads, seed=s.seed,
                           use_gpu=s.gpus_per_trial > 0, trust_remote_code=s.trust_remote_code, shipped=shipped,
                           budget=budget, features=features if s.feature_cache else {},
                           prefix_cache=s.feature_cache, search_id=uuid.uuid4().hex)
        meta = RunInfo(
            run_name=s.run_name, task=s.task, metric=s.metric, command=s.command,
            data=summary, space=space.to_dict(), dashboard=cluster.dashboard_url,
            cluster={"address": s.address, "nodes": [dataclasses.asdict(n) for n in cluster.nodes],
                     "cpus": cluster.cpus, "gpus": cluster.gpus, "storage": s.tune_storage,
                     "max_failures": s.max_failures},
            preparation=prep.to_dict(), environment=environment(),
            engine={"sampler": s.sampler, "scheduler": s.scheduler, "max_epochs": s.max_epochs,
                    "evals_per_epoch": s.evals_per_epoch, "grace_period_epochs": s.grace_period,
                    "reduction_factor": s.reduction_factor, "num_samples": s.num_samples, "seed": s.seed,
                    "min_steps": s.min_steps, "baseline": sorted({r.name for r in recipes}),
                    "time_budget_s": s.time_budget_s, "feature_cache": s.feature_cache},
            budget=budget.to_dict(), prerank=prerank,
            source_stage={"data": str(s.source_data), "options": s.source_options,
                          "recipe": self.task.recipes()[0].name, "stages": [r.to_dict() for r in sourced]}
            if sourced else None,
            backbones={n: {"source": b.source, "num_layers": b.num_layers, **b.details} for n, b in backbones.items()},
        )
        writer = ReportWriter(out, s.metric, meta, time.time())
        live = LiveLeaderboard(s.metric, s.max_iterations, s.num_samples, console=self.console,
                               on_trial_end=writer,
                               saved_statuses=functools.partial(saved_trial_statuses, s.tune_experiment))
        live.start()
        try:
            grid = run_tune(s, space, ctx, {n: b.num_layers for n, b in backbones.items()}, max_concurrent, [live],
                            recipes)
        finally:
            live.stop()
            writer.close()
        records = [record_from_result(r, s.metric, s.max_iterations) for r in grid]
        for r in records:
            r.lost_attempts = list(live.lost_attempts.get(r.trial_id, []))
        records = rank(settle_interrupted(records, live.unfinished, live.undecided() if live.interrupted else set()))
        unfinished = live.unfinished
        if not (unfinished or live.interrupted):
            from autotransfer.searcher import settle_study

            settle_study(s.output)  # the trials the time budget stopped: Ray tells the searcher nothing
        meta.wall_time_s = time.perf_counter() - t_start
        meta.first_result_s = live.first_result_s
        meta.trial_hours = sum(r.wall_time_s for r in records) / 3600
        if unfinished or live.interrupted:
            save_results(out, records, s.metric, meta.to_dict())
            write_report(out, records, meta.to_dict())
            upload_run(s)
            done = sum(1 for r in records if r.status != INTERRUPTED)
            raise SearchInterrupted(f"search interrupted with {done} of {s.num_samples} trials finished; results so "
                                    f"far are in {out}; continue with: autotransfer resume {out}")
        best = next((r for r in records if r.ok and r.checkpoint), None)
        if best is None:
            save_results(out, records, s.metric, meta.to_dict())
            write_report(out, records, meta.to_dict())
            upload_run(s)
            raise SearchFailed(no_result_reason(records, s.time_budget_s, budget))

        self._uncertainty(records, best, ctx, meta)
        if sourced:
            from autotransfer.source_stage import compare, describe_comparison

            meta.source_stage["comparison"] = compare(sourced, records)  # type: ignore[index]
            self.log(describe_comparison(meta.source_stage["comparison"], s.metric))  # type: ignore[index]
        if prerank:
            from autotransfer.prerank import report_held

            report_held(prerank, records, s.metric, self.log)
        best_dir = out / "best"
        exported, notes, model = best, None, None
        if s.refit:
            exported, notes = self._refit(best, ctx, out, cluster.remote)
            # for the record, as AutoML tools do beside a refit model; the choice was made before this line
            notes["refit"]["selected_trial_test_metrics"] = test_metrics(best, ctx)
            meta.refit = notes["refit"]
        elif s.soup:
            from autotransfer.soup import soup_of_trials

            soup = soup_of_trials(self.task, best, records, ctx, s.metric, self.log)
            if soup is not None:
                meta.soup = soup.to_dict()
                model = soup.model  # the soup, or the best trial's own weights: no second rebuild for the export
                if soup.wins:
                    exported = dataclasses.replace(best, best_metric=soup.validation_metric)
                    # for the record, as beside a refit model: the soup was chosen on validation before this line
                    meta.soup["selected_trial_test_metrics"] = test_metrics(best, ctx)
                    notes = {"soup": meta.soup}
        what = (f"a soup of {len(meta.soup['ingredients'])} trials" if notes and "soup" in notes
                else f"trial {best.trial_id}")
        self.log(f"exporting {what} ({best.backbone}, {best.strategy}) to {best_dir}")
        tested = export_best(exported, ctx, best_dir, notes=notes, model=model)
        if s.refit:
            shutil.rmtree(exported.checkpoint, ignore_errors=True)  # type: ignore[arg-type]
        meta.test = tested
        meta.best_trial = best.trial_id
        meta.gallery = write_gallery(self.task, ctx.prepared[best.backbone], best.checkpoint, ctx.label_names,
                                     out) or None
        meta.wall_time_s = time.perf_counter() - t_start
        (out / "test_metrics.json").write_text(json.dumps(tested["test_metrics"], indent=2))
        if not s.keep_checkpoints:
            prune_checkpoints(s.tune_experiment, keep=best.checkpoint)
        save_results(out, records, s.metric, meta.to_dict())
        report = write_report(out, records, meta.to_dict())
        uploaded = upload_run(s)
        if uploaded:
            self.log(f"results, report and best/ uploaded to {uploaded}")
        return SearchResult(output=out, records=records, best=best, best_dir=best_dir,
                            test_metrics=tested["test_metrics"], report=report, dashboard_url=cluster.dashboard_url,
                            stats={"preparation": prep.to_dict(), "wall_time_s": meta.wall_time_s,
                                   "first_result_s": live.first_result_s})
