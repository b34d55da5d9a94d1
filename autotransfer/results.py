"""Trial records: what each trial did, ranked, saved as ``results.csv``/``results.json``.

Records are built from Ray Tune's results and are the single source for the
terminal leaderboard, the HTML report and the export of the best trial.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import pandas as pd

from autotransfer.cluster import short_node
from autotransfer.storage import checkpoint_location, folder_bytes

COMPLETED, STOPPED, FAILED, RUNNING = "completed", "stopped_early", "failed", "running"
INTERRUPTED = "interrupted"
#: result keys: the Ray node a trial reported from; a trial's own one-line failure reason
NODE_ID, TRIAL_ERROR = "node_id", "trial_error"
#: config keys that are not hyperparameters
_NOT_PARAMS = {"backbone", "strategy"}


@dataclass
class TrialRecord:
    """One trial of a search."""

    trial_id: str
    backbone: str
    strategy: str
    params: dict[str, Any]
    status: str
    iterations: int
    epochs: float
    best_metric: Optional[float]
    best_epoch: Optional[float]
    wall_time_s: float
    trainable_params: Optional[int]
    total_params: Optional[int]
    error: Optional[str] = None
    #: validation metric after each evaluation: [[epoch, value], ...]
    history: list[list[float]] = field(default_factory=list)
    checkpoint: Optional[str] = None
    last_metrics: dict[str, Any] = field(default_factory=dict)
    rank: Optional[int] = None
    checkpoint_bytes: Optional[int] = None
    #: Ray nodes the trial reported from, in order (more than one after a retry elsewhere)
    nodes: list[str] = field(default_factory=list)
    #: attempts lost to a dead worker or node and retried: [{"error", "node", "epoch"}, ...]
    lost_attempts: list[dict[str, Any]] = field(default_factory=list)
    #: 95% bootstrap interval of ``best_metric`` on the validation examples (see autotransfer.uncertainty)
    interval: Optional[list[float]] = None
    #: the validation set cannot tell this trial from the leader (paired bootstrap); None: not computed
    tied_with_best: Optional[bool] = None

    @property
    def config(self) -> dict[str, Any]:
        return {"backbone": self.backbone, "strategy": self.strategy, **self.params}

    @property
    def ok(self) -> bool:
        return self.status != FAILED and self.best_metric is not None


#: result key a trial sets on its last report when it ran its whole budget (see autotransfer.training)
FINISHED = "trial_finished"
#: result key: validation examples behind the metric (for confidence intervals and ASHA's noise band)
VAL_EXAMPLES = "val_examples"
#: config key naming the standard recipe a trial runs (see autotransfer.recipes)
RECIPE = "recipe"


def finish_status(last_result: Mapping[str, Any], max_iterations: int) -> str:
    """How a trial that ended without error ended: ran its whole budget, or was stopped early.

    A trial says so on its last report (a linear probe's budget is one evaluation); results
    written before that flag existed count evaluations.
    """
    if last_result.get(FINISHED):
        return COMPLETED
    return COMPLETED if int(last_result.get("training_iteration", 0) or 0) >= max_iterations else STOPPED


def one_line(error: Any) -> str:
    """The last meaningful line of an exception or traceback text, e.g. ``TrialFailed: loss became NaN``."""
    text = str(error).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if not ln.startswith(("File ", "^", "~", "raise ", "return ")) and ":" in ln:
            return ln[:300]
    return (lines[-1] if lines else type(error).__name__)[:300]


def record_from_result(result: Any, metric: str, max_iterations: int) -> TrialRecord:
    """A :class:`TrialRecord` from a ``ray.tune.Result``."""
    metrics = dict(result.metrics or {})
    config = dict(result.config or {})
    df = result.metrics_dataframe
    # the trial's identity is its folder (trial_<id>, see runner.trial_dirname); metrics that name another
    # trial are a reused worker's leftovers (a failed actor reuse) and must not be passed off as this one's
    path_id = Path(str(result.path)).name.removeprefix("trial_") if getattr(result, "path", None) else ""
    if path_id and metrics.get("trial_id") and str(metrics["trial_id"]) != path_id:
        metrics = {}
        df = None
    history: list[list[float]] = []
    if df is not None and {metric, "epoch"} <= set(getattr(df, "columns", [])):
        rows = df[["epoch", metric]].dropna()
        history = [[float(e), float(v)] for e, v in zip(rows["epoch"], rows[metric])]
    best_metric = best_epoch = None
    if history:
        best_epoch, best_metric = max(history, key=lambda ev: ev[1])
    iterations = int(metrics.get("training_iteration", len(history)) or 0)
    if result.error is not None:
        status, error = FAILED, one_line(result.error)
    elif metrics.get(TRIAL_ERROR):  # the trial's own failure, reported rather than raised (not retried)
        status, error = FAILED, str(metrics[TRIAL_ERROR])
        iterations = max(0, iterations - 1)  # the failure report is not an evaluation
    else:
        status, error = finish_status({**metrics, "training_iteration": iterations}, max_iterations), None
    checkpoint = None
    best_ckpts = getattr(result, "best_checkpoints", None) or []
    if best_ckpts:
        checkpoint = checkpoint_location(max(best_ckpts, key=lambda cm: _score(cm[1].get(metric)))[0])
    elif result.checkpoint is not None:
        checkpoint = checkpoint_location(result.checkpoint)
    trial_id = path_id or str(metrics.get("trial_id") or "?")
    size = folder_bytes(checkpoint) if checkpoint is not None else None
    nodes: list[str] = []
    if df is not None and NODE_ID in getattr(df, "columns", []):
        for n in df[NODE_ID].dropna():
            if not nodes or nodes[-1] != n:
                nodes.append(str(n))
    elif metrics.get(NODE_ID):
        nodes = [str(metrics[NODE_ID])]
    keep = (VAL_EXAMPLES, "val_loss", "train_loss", "samples_per_s", "torch_threads", "batch_size_used",
            "gpu_memory_peak_mb", "gpu_memory_at_start_mb", metric,
            "cached_features", "prefix_cache")  # what the frozen-output caches did (autotransfer.training)
    return TrialRecord(
        trial_id=trial_id,
        backbone=str(config.get("backbone", "?")),
        strategy=str(config.get("strategy", "?")),
        params={k: v for k, v in config.items() if k not in _NOT_PARAMS},
        status=status,
        iterations=iterations,
        epochs=float(metrics.get("epoch", 0.0) or 0.0),
        best_metric=best_metric,
        best_epoch=best_epoch,
        wall_time_s=float(metrics.get("time_total_s", 0.0) or 0.0),
        trainable_params=_int_or_none(metrics.get("trainable_params")),
        total_params=_int_or_none(metrics.get("total_params")),
        error=error,
        history=history,
        checkpoint=checkpoint,
        last_metrics={k: metrics[k] for k in keep if k in metrics},
        checkpoint_bytes=size,
        nodes=nodes,
    )


def _score(value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return -math.inf
    return v if math.isfinite(v) else -math.inf


def environment() -> dict[str, Any]:
    """Hardware and library versions, for the report."""
    import importlib.metadata as md
    import os
    import platform

    versions = {}
    for pkg in ("autotransfer", "torch", "transformers", "timm", "peft", "optuna", "ray", "scikit-learn"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    except Exception:  # pragma: no cover
        pass
    return {"cpus": os.cpu_count(), "gpu": gpu, "platform": f"{platform.system()} {platform.machine()}, "
            f"Python {platform.python_version()}", "versions": versions}


def _int_or_none(v: Any) -> Optional[int]:
    try:
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else int(v)
    except (TypeError, ValueError):
        return None


def settle_interrupted(records: list[TrialRecord], unfinished: set[str], cut: set[str]) -> list[TrialRecord]:
    """Mark the trials a stop left unfinished as ``interrupted`` (a resume runs them on).

    ``unfinished``: trials Ray Tune had not ended when the experiment stopped; ``cut``: trials
    that ended as "stopped" only because the user pressed Ctrl-C, not by ASHA's decision.
    A failed trial stays failed.
    """
    for r in records:
        if r.status != FAILED and (r.trial_id in unfinished or (r.status == STOPPED and r.trial_id in cut)):
            r.status = INTERRUPTED
    return records


def rank(records: Iterable[TrialRecord]) -> list[TrialRecord]:
    """Best first: by best validation metric; failed trials last. Sets ``rank`` (1-based)."""
    ordered = sorted(records, key=lambda r: (not r.ok, -(r.best_metric if r.best_metric is not None else -math.inf),
                                             r.wall_time_s))
    for i, r in enumerate(ordered, 1):
        r.rank = i
    return ordered


def to_frame(records: list[TrialRecord], metric: str) -> pd.DataFrame:
    """One row per trial with hyperparameters as ``param.<name>`` columns."""
    rows = []
    for r in records:
        row = {
            "rank": r.rank, "trial_id": r.trial_id, "backbone": r.backbone, "strategy": r.strategy,
            f"best_{metric}": r.best_metric, "best_epoch": r.best_epoch, "status": r.status,
            "epochs": r.epochs, "iterations": r.iterations, "wall_time_s": round(r.wall_time_s, 2),
            "trainable_params": r.trainable_params, "total_params": r.total_params, "error": r.error,
            "nodes": " ".join(short_node(n) for n in r.nodes), "lost_attempts": len(r.lost_attempts),
        }
        row.update({f"param.{k}": v for k, v in r.params.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def save_results(out: Path, records: list[TrialRecord], metric: str, extra: Optional[dict[str, Any]] = None) -> None:
    """Write ``results.csv`` and ``results.json`` (records plus run metadata)."""
    out.mkdir(parents=True, exist_ok=True)
    to_frame(records, metric).to_csv(out / "results.csv", index=False)
    payload = {"metric": metric, **(extra or {}), "trials": [asdict(r) for r in records]}
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    tmp.replace(out / "results.json")


def load_results(out: Path) -> tuple[list[TrialRecord], dict[str, Any]]:
    """Read ``results.json`` back: (records, metadata)."""
    payload = json.loads((out / "results.json").read_text())
    records = [TrialRecord(**t) for t in payload.pop("trials")]
    return records, payload
