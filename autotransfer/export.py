"""Export the best trial: rebuild it from its checkpoint, save it in its library's format, test it.

The checkpoint holds only the trial's trainable tensors; the frozen rest comes
from the backbone.  The exported folder is what the library itself reads
(``save_pretrained`` for transformers, ``save_for_hf`` for timm), plus two
sidecars: ``label_map.json`` and ``autotransfer.json`` (config and metrics).
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any, Optional

from autotransfer.results import TrialRecord
from autotransfer.storage import local_copy
from autotransfer.tasks import get_task
from autotransfer.training import TrialContext, autocast_dtype, build_trial_model, device_for, evaluate, load_trainable

LABEL_MAP = "label_map.json"
SIDECAR = "autotransfer.json"


def export_best(record: TrialRecord, ctx: TrialContext, out: Path, batch_size: int = 64,
                notes: Optional[dict[str, Any]] = None, model: Any = None) -> dict[str, Any]:
    """Write ``out`` (the best model folder) and return its test metrics and per-class report.

    ``model`` is the finished model to export (default: ``record``'s, rebuilt from its checkpoint;
    a model soup passes its own); ``notes`` go into the sidecar (e.g. how a refit model was trained).
    """
    task = get_task(ctx.task)
    backbone = ctx.backbones[record.backbone]
    model = rebuild(record, ctx) if model is None else model
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    task.export(model, backbone, ctx.label_names, tmp)
    metrics, preds = _test(model, ctx, backbone.name, batch_size)
    y_true = task.labels(ctx.prepared[backbone.name], "test")
    report = task.objective.details(y_true, preds, ctx.label_names)
    (tmp / LABEL_MAP).write_text(json.dumps({"id2label": dict(enumerate(ctx.label_names)),
                                             "label2id": {n: i for i, n in enumerate(ctx.label_names)}}, indent=2))
    (tmp / SIDECAR).write_text(json.dumps({
        "task": ctx.task, "backbone": backbone.name, "backbone_source": backbone.source,
        "trial_id": record.trial_id, "config": record.config, "validation_metric": record.best_metric,
        "test_metrics": metrics, **(notes or {}),
    }, indent=2, default=str))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return {"test_metrics": metrics, **report}


def test_metrics(record: TrialRecord, ctx: TrialContext, batch_size: int = 64) -> dict[str, float]:
    """The test metrics of a trial's checkpoint, without exporting it (e.g. the selected trial beside its refit)."""
    return _test(rebuild(record, ctx), ctx, record.backbone, batch_size)[0]


def rebuild(record: TrialRecord, ctx: TrialContext) -> Any:
    """The trial's finished model: backbone + head/adapters from its checkpoint, adapters merged."""
    if record.checkpoint is None:
        raise RuntimeError(f"trial {record.trial_id} left no checkpoint to export")
    return model_from_checkpoint(record.config, ctx, record.checkpoint)


def model_from_checkpoint(config: dict[str, Any], ctx: TrialContext, checkpoint: str | Path) -> Any:
    """The finished model of ``config`` (its backbone in ``ctx``) with a checkpoint's weights, adapters merged."""
    task = get_task(ctx.task)
    strategy, adapted = build_trial_model(task, ctx.backbones[config["backbone"]], ctx.label_names, config,
                                          ctx.trust_remote_code)
    with local_copy(str(checkpoint)) as checkpoint_dir:  # a URI's checkpoint is downloaded first
        load_trainable(adapted.model, checkpoint_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecation notes from inside peft/transformers
        return strategy.finalize(adapted.model)


def _test(model: Any, ctx: TrialContext, backbone: str, batch_size: int) -> tuple[dict[str, float], Any]:
    device = device_for(ctx.use_gpu)
    model.to(device)
    return evaluate(model, get_task(ctx.task), ctx.prepared[backbone], "test", batch_size, device,
                    autocast_dtype(ctx.precision, device))
