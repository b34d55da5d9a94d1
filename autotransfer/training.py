"""The per-trial training loop.

:func:`train` runs one configuration: build the classifier, apply the transfer
strategy, train with AdamW (or SGD) and a warm-up then linear, cosine or constant schedule, evaluate on the
validation split ``evals_per_epoch`` times per epoch and report each evaluation
(ASHA's rungs).  It knows nothing about Ray: :func:`run_trial` is the thin Ray
Tune entry point that plugs in ``tune.report`` and restores from
``tune.get_checkpoint()``.

A checkpoint is written at every evaluation (:mod:`autotransfer.checkpoints`): the best trainable
tensors so far (a linear probe's are a few KB) and what resuming exactly from there needs.  A
strategy with phases (:meth:`~autotransfer.strategies.base.Strategy.phase_starts`) is re-applied
where each phase begins.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import os
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import numpy as np
import torch
from torch import nn

from autotransfer.budget import Budget, derive_budget
from autotransfer.prefix_cache import FROZEN as FROZEN_PREFIX, NotReplayable, Replay, describe, verify
from autotransfer.results import FINISHED, VAL_EXAMPLES
from autotransfer.strategies import Adapted, Strategy, count_parameters, get_strategy
from autotransfer.checkpoints import (FILES, STATE_FILE, WEIGHTS_FILE, Checkpointer, Reporter, load_best,
                                      restore_latest, restore_optimization)
from autotransfer.tasks import BackboneInfo, Task, get_task

#: seconds a reused Ray worker waits for a stopped trial's thread to end (Ray's default: 2)
THREAD_TIMEOUT_S = 30
#: a head-fitting trial's report: whether it fitted on the search's frozen features (autotransfer.features)
CACHED_FEATURES = "cached_features"
#: a ``freeze`` trial's report: how its frozen bottom's outputs were had (autotransfer.prefix_cache): "computed in
#: 1.2s", "reused", or "off: <why>"
PREFIX_CACHE = "prefix_cache"
#: how often (in steps) the loss is checked for NaN/inf between evaluations
FINITE_CHECK_EVERY = 25


class TrialFailed(RuntimeError):
    """A trial that cannot go on (diverged loss...); the message is the one-line reason."""


@dataclass
class TrialContext:
    """Read-only inputs shared by every trial; shipped once through Ray's object store."""

    task: str
    backbones: dict[str, BackboneInfo]
    prepared: dict[str, Any]
    label_names: list[str]
    metric: str = "accuracy"
    max_epochs: int = 3
    evals_per_epoch: int = 2
    precision: str = "auto"
    threads: int = 1
    seed: int = 0
    use_gpu: bool = False
    trust_remote_code: bool = False
    #: local backbone folders some node lacks, shipped through the object store (see autotransfer.shipping)
    shipped: dict[str, Any] = field(default_factory=dict)
    #: the search's step budget; None: max_epochs x evals_per_epoch rounds with no step floor
    budget: Optional[Budget] = None
    #: backbone -> what its head sees over the training (and validation) split, computed once before the trials
    #: (``autotransfer.features.FrozenFeatures``); a backbone not here computes its own
    features: dict[str, Any] = field(default_factory=dict)
    #: replay a ``freeze`` trial's frozen bottom from its outputs computed once (autotransfer.prefix_cache)
    prefix_cache: bool = True
    #: the search these trials belong to: a worker keeps prefix outputs under it for its later trials ("": a
    #: trial keeps its own only)
    search_id: str = ""

    def budget_for(self, train_examples: int, batch_size: int) -> Budget:
        return self.budget or derive_budget(train_examples, batch_size, self.max_epochs, self.evals_per_epoch, 1,
                                            min_steps=0)


def device_for(use_gpu: bool) -> torch.device:
    return torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")


def autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype for a precision setting, or None for plain fp32.

    ``auto`` means bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPU.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def to_device(labels: Any, device: torch.device) -> Any:
    """A batch's labels on ``device``: a tensor, or a task's structure of them (e.g. tags and sentence ids)."""
    if isinstance(labels, torch.Tensor):
        return labels.to(device, non_blocking=True)
    if isinstance(labels, dict):
        return {k: to_device(v, device) for k, v in labels.items()}
    if isinstance(labels, (tuple, list)):
        return type(labels)(to_device(v, device) for v in labels)
    return labels


def _autocast(device: torch.device, dtype: Optional[torch.dtype]) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def build_trial_model(task: Task, backbone: BackboneInfo, label_names: list[str], config: Mapping[str, Any],
                      trust_remote_code: bool = False) -> tuple[Strategy, Adapted]:
    """The classifier for one configuration, with its strategy applied."""
    strategy = get_strategy(config["strategy"])
    # the configuration too: a task may build by it (a detector's architecture and anchors)
    bundle = task.build(backbone, label_names, {**config, "trust_remote_code": trust_remote_code})
    return strategy, dataclasses.replace(strategy.apply(bundle, config), bundle=bundle)


def load_trainable(model: nn.Module, checkpoint_dir: str | Path) -> dict[str, Any]:
    """Load a checkpoint's best trainable tensors into ``model``; returns the saved trial state."""
    try:
        return load_best(model, checkpoint_dir)
    except ValueError as exc:
        raise TrialFailed(str(exc)) from None


def train_mode(model: nn.Module) -> None:
    """``model.train()``, but batch-norm layers whose parameters are frozen keep their running statistics.

    A frozen BatchNorm in training mode would still renormalise with each batch and overwrite its
    pretrained statistics, corrupting the "frozen" features (linear probe, freeze depth, LoRA on CNNs).
    A strategy's frozen prefix (:meth:`~autotransfer.strategies.Strategy.frozen_prefix`) stays in eval mode
    whole: no dropout either, a fixed feature extractor (:mod:`autotransfer.prefix_cache`).
    """
    model.train()
    for m in model.modules():
        if getattr(m, FROZEN_PREFIX, False) or (isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(
                p.requires_grad for p in m.parameters(recurse=False))):
            m.eval()


#: a space's ``scheduler`` value -> transformers' schedule name (each with a linear warm-up)
SCHEDULES = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}


def lr_schedule(optimizer: torch.optim.Optimizer, name: str, warmup_steps: int, total_steps: int) -> Any:
    """The learning-rate schedule ``name`` (linear, cosine or constant after a linear warm-up), from
    ``transformers.get_scheduler``."""
    from transformers import get_scheduler

    return get_scheduler(SCHEDULES[name], optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps)


def _optimization(groups: list[dict[str, Any]], config: Mapping[str, Any], device: torch.device, step: int,
                  total_steps: int, previous: Optional[torch.optim.Optimizer] = None) -> tuple[Any, Any]:
    """(optimizer, schedule) for a phase's parameter groups, the schedule advanced to ``step``.

    At a phase change the parameters that go on training keep their optimizer state (AdamW's moments,
    SGD's momentum) from ``previous``; the schedule runs once over the whole trial."""
    optimizer = _optimizer(groups, float(config.get("weight_decay", 0.01)), device, str(config.get("optimizer", "adamw")))
    if previous is not None:
        for group in optimizer.param_groups:
            for param in group["params"]:
                if param in previous.state:
                    optimizer.state[param] = previous.state[param]
    scheduler = lr_schedule(optimizer, str(config.get("scheduler", "linear")),
                            int(round(float(config.get("warmup_ratio", 0.0)) * total_steps)), total_steps)
    with warnings.catch_warnings():
        # fast-forwarding a fresh optimizer's schedule (a phase change, a resumed trial) is meant: torch's
        # "lr_scheduler.step() before optimizer.step()" warning would only scare a user reading the trial's log
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before",
                                category=UserWarning)
        for _ in range(step):
            scheduler.step()
    return optimizer, scheduler


def _optimizer(groups: list[dict[str, Any]], weight_decay: float, device: torch.device,
               name: str = "adamw") -> torch.optim.Optimizer:
    """AdamW (or SGD with momentum 0.9, as in the classic vision recipes) with decay on weight matrices
    only (no decay on biases and norms), taking torch's fused step where it applies (:func:`fused_step`)."""
    split = []
    for g in groups:
        decay = [p for p in g["params"] if p.ndim >= 2]
        no_decay = [p for p in g["params"] if p.ndim < 2]
        for params, wd in ((decay, weight_decay), (no_decay, 0.0)):
            if params:
                split.append({**g, "params": params, "weight_decay": wd})
    fused = fused_step(device, [p for g in split for p in g["params"]])
    if name == "sgd":
        return torch.optim.SGD(split, momentum=0.9, fused=fused)
    return torch.optim.AdamW(split, fused=fused)


#: use torch's fused optimizer step where it applies (:func:`fused_step`); ``benchmarks/fused_optimizer.py`` turns
#: it off to measure what it saves
FUSED_OPTIMIZER = True


def fused_step(device: torch.device, params: list[torch.Tensor]) -> bool:
    """Whether the optimizer takes one fused, in-place kernel per step (torch's ``fused=True``) instead of the
    per-tensor default.

    On a CPU the default AdamW step allocates parameter-sized temporaries (``sqrt``, ``div``) every step, and a
    text encoder's vocabulary embedding makes them tens of MB, each page-faulted in afresh: on MiniLM-L3 the step
    took 80-95 ms against 12-17 ms fused, about a third of a full fine-tuning step (whole trials, both ways:
    ``benchmarks/fused_optimizer.py``).
    The update is the same (AdamW and SGD agree to 6e-8 after 30 steps).  Fused kernels exist for floating-point
    parameters on CPUs and CUDA GPUs; anything else keeps the default.
    """
    return FUSED_OPTIMIZER and device.type in ("cpu", "cuda") and all(
        p.is_floating_point() and p.device.type == device.type for p in params)


@torch.inference_mode()
def evaluate(model: nn.Module, task: Task, prepared: Any, split: str, batch_size: int, device: torch.device,
             dtype: Optional[torch.dtype] = None, replay: Optional[Replay] = None) -> tuple[dict[str, float], np.ndarray]:
    """Metrics (and ``loss``) of ``model`` on a prepared split, plus its predictions in split order.  With a
    ``replay`` that covers the split, its frozen bottom's outputs are replayed (checked on the first batch)."""
    was_training = model.training
    model.eval()
    objective = task.objective
    loss_sum, terms = 0.0, 0
    preds, truth = [], []
    if replay is not None and not replay.covers(split):
        replay = None
    batches = task.indexed_batches if replay is not None else task.batches  # the same batches, in order
    loader = batches(prepared, split, batch_size * 2, train=False, pin_memory=device.type == "cuda")
    for inputs, labels, *where in loader:
        inputs = {k: v.to(device, non_blocking=True) for k, v in inputs.items()}
        labels = to_device(labels, device)
        if replay is not None and split not in replay.verified:
            try:
                verify(task, model, replay, inputs, where[0], device, dtype, split)
            except NotReplayable as exc:  # this split's batches compute the frozen bottom, as before
                replay.drop(split, str(exc))
                replay = None
        if replay is not None:
            replay.load(where[0], inputs, device, split)
        try:
            with _autocast(device, dtype):
                logits = task.logits(model, inputs)
        finally:
            if replay is not None:
                replay.clear()
        loss_sum += float(objective.loss(logits, labels, reduction="sum"))
        terms += objective.count(labels)
        batch_pred, batch_true = objective.decode(logits, labels)
        preds.append(batch_pred)
        truth.append(batch_true)
    if was_training:
        train_mode(model)
    y_pred, y_true = np.concatenate(preds), np.concatenate(truth)
    metrics = objective.score(y_true, y_pred)
    metrics["loss"] = loss_sum / max(1, terms)
    # evaluation batches may be length-sorted: put predictions back in split order
    order = _yield_order(loader)
    if order is not None:
        in_order = np.empty_like(y_pred)
        in_order[order] = y_pred
        y_pred = in_order
    return metrics, y_pred


def _yield_order(loader: Any) -> Optional[np.ndarray]:
    """The split positions in the order an evaluation loader yields them; None when that is split order."""
    order = getattr(loader, "batch_sampler", None)
    if isinstance(order, list):
        return np.concatenate([np.asarray(b, dtype=np.int64) for b in order])
    return None


def train(config: Mapping[str, Any], ctx: TrialContext, report: Reporter,
          restore_dir: Optional[str] = None, should_stop: Optional[Callable[[], bool]] = None) -> dict[str, Any]:
    """Train one configuration, reporting after every evaluation. Returns the final report.

    Out of GPU memory, the trial is retried once with half the batch size, then fails with a
    one-line reason.  ``should_stop`` is polled every step: once the scheduler has stopped the
    trial it returns at once, so the worker is free for the next trial (Ray Tune reuses it only
    if the previous trial's thread ends within seconds).  Whatever happens, the trial's GPU memory
    is handed back before this returns (Ray Tune reuses the worker process for the next trial).
    """
    batch_size = int(config.get("batch_size", 32))
    try:
        try:
            return _train(config, ctx, report, restore_dir, batch_size, should_stop)
        except torch.cuda.OutOfMemoryError as exc:
            _release_memory(exc)
            if batch_size < 2:
                raise TrialFailed("out of GPU memory at batch size 1") from None
        try:
            return _train(config, ctx, report, restore_dir, batch_size // 2, should_stop)
        except torch.cuda.OutOfMemoryError as exc:
            _release_memory(exc)
            raise TrialFailed(f"out of GPU memory at batch size {batch_size} and again at {batch_size // 2}") from None
    except BaseException as exc:
        traceback.clear_frames(exc.__traceback__)  # the failed frames' tensors go with the `finally` below
        raise
    finally:
        _release_memory()


def _release_memory(exc: Optional[BaseException] = None) -> None:
    """Free the finished attempt's tensors and hand cached GPU blocks back to the driver.

    An exception's traceback keeps the failed frames, and so the model, optimizer state and
    activations, alive: their locals are cleared first (the traceback itself stays printable).
    """
    if exc is not None and exc.__traceback__ is not None:
        traceback.clear_frames(exc.__traceback__)
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _train(config: Mapping[str, Any], ctx: TrialContext, report: Reporter, restore_dir: Optional[str],
           batch_size: int, should_stop: Optional[Callable[[], bool]] = None) -> dict[str, Any]:
    torch.set_num_threads(max(1, ctx.threads))
    torch.manual_seed(ctx.seed)
    device = device_for(ctx.use_gpu)
    dtype = autocast_dtype(ctx.precision, device)
    task = get_task(ctx.task)
    backbone = ctx.backbones[config["backbone"]]
    prepared = ctx.prepared[backbone.name]
    gpu_at_start = _gpu_memory_start(device)
    strategy, adapted = build_trial_model(task, backbone, ctx.label_names, config, ctx.trust_remote_code)
    model = adapted.model
    state: dict[str, Any] = {}
    if restore_dir is not None:
        try:
            state = restore_latest(model, restore_dir)
        except ValueError as exc:
            raise TrialFailed(str(exc)) from None
    model.to(device)
    train_mode(model)
    trainable, total = count_parameters(model)
    n_train = task.num_examples(prepared, "train")
    n_val = task.num_examples(prepared, "validation")
    common = {"trainable_params": trainable, "total_params": total, "torch_threads": torch.get_num_threads(),
              VAL_EXAMPLES: n_val}
    if strategy.fits_head_on_features:
        return _fit_head(strategy, adapted, config, ctx, task, prepared, batch_size, device, dtype, report, common)
    budget = ctx.budget_for(n_train, batch_size)
    steps_per_epoch = max(1, math.ceil(n_train / batch_size))
    eval_at: list[int] = []
    for at in budget.eval_steps(batch_size):  # strictly increasing: one evaluation per round
        eval_at.append(max(at, eval_at[-1] + 1) if eval_at else at)
    total_steps = eval_at[-1]
    evals = set(eval_at)
    step = int(state.get("step", 0))
    checkpoints = Checkpointer(ctx.metric, report, restore_dir)
    bundle = adapted.bundle
    starts = strategy.phase_starts(config, bundle, steps_per_epoch, total_steps) if bundle is not None else []
    if strategy.fits_head_first and step == 0:  # phase 0: the head fitted on frozen features
        _fit_classifier(strategy, adapted, config, ctx, task, prepared, batch_size, device, dtype)
    phase = sum(1 for at in starts if at <= step)  # a restored trial continues in its phase
    if phase:
        adapted = strategy.apply(bundle, config, phase)  # type: ignore[arg-type]
        train_mode(model)
        common["trainable_params"] = count_parameters(model)[0]
    replay, prefix_how = _frozen_prefix(strategy, bundle, starts, config, ctx, task, prepared, batch_size, device,
                                        dtype)
    if prefix_how is not None:
        common[PREFIX_CACHE] = describe(prefix_how, replay) if replay is not None else prefix_how
    try:
        optimizer, scheduler = _optimization(adapted.param_groups, config, device, step, total_steps)
        scaler = torch.amp.GradScaler(device.type, enabled=(dtype == torch.float16 and device.type == "cuda"))
        if restore_dir is not None and state.get("resumable"):
            restore_optimization(restore_dir, optimizer, scaler)  # exactly where the trial stopped
        smoothing = float(config.get("label_smoothing", 0.0))
        last: dict[str, Any] = {}
        loss_sum = torch.zeros((), device=device)
        loss_n, seen, train_time = 0, 0, 0.0
        for epoch in range(step // steps_per_epoch, math.ceil(total_steps / steps_per_epoch)):
            if should_stop is not None and should_stop():
                break
            batches = task.indexed_batches if replay is not None else task.batches  # the same batches, in order
            loader = batches(prepared, "train", batch_size, train=True, seed=ctx.seed + epoch,
                             pin_memory=device.type == "cuda", config=config)
            skip = step - epoch * steps_per_epoch  # batches already done before a restore
            t0 = time.perf_counter()
            for i, (inputs, labels, *where) in enumerate(loader):
                if i < skip:
                    continue
                if step >= total_steps or (should_stop is not None and should_stop()):
                    break
                inputs = {k: v.to(device, non_blocking=True) for k, v in inputs.items()}
                labels = to_device(labels, device)
                if replay is not None and "train" not in replay.verified:  # checked against the model: first batch
                    try:
                        verify(task, model, replay, inputs, where[0], device, dtype)
                    except NotReplayable as exc:  # the trial goes on computing its frozen bottom every step
                        replay.remove()
                        replay = None
                        common[PREFIX_CACHE] = f"off: {exc}"
                if replay is not None:
                    replay.load(where[0], inputs, device)
                with _autocast(device, dtype):
                    logits = task.logits(model, inputs)
                if replay is not None:
                    replay.clear()
                loss = task.objective.loss(logits, labels, label_smoothing=smoothing)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], 1.0)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                step += 1
                if phase < len(starts) and step == starts[phase]:  # the strategy's next phase: what trains changes
                    phase += 1
                    adapted = strategy.apply(bundle, config, phase)  # type: ignore[arg-type]
                    optimizer, scheduler = _optimization(adapted.param_groups, config, device, step, total_steps,
                                                         previous=optimizer)
                    train_mode(model)
                    common["trainable_params"] = count_parameters(model)[0]
                loss_sum += loss.detach()
                loss_n += 1
                seen += len(next(iter(inputs.values())))
                if step % FINITE_CHECK_EVERY == 0 or step in evals:
                    _check_finite(loss_sum, step)
                if step in evals:
                    train_time += time.perf_counter() - t0
                    metrics, preds = evaluate(model, task, prepared, "validation", batch_size, device, dtype, replay)
                    if replay is not None:  # the validation replay may have been dropped by its check
                        common[PREFIX_CACHE] = describe(prefix_how, replay)
                    last = {
                        **{k: v for k, v in metrics.items() if k != "loss"},
                        "val_loss": metrics["loss"],
                        "train_loss": float(loss_sum) / max(1, loss_n),
                        "epoch": round(step / steps_per_epoch, 4),
                        "step": step,
                        "samples_per_s": seen / train_time if train_time > 0 else 0.0,
                        "batch_size_used": batch_size,
                        **common,
                        **_gpu_memory(device, gpu_at_start),
                    }
                    if step == total_steps:
                        last[FINISHED] = True
                    loss_sum.zero_()
                    loss_n = 0
                    checkpoints.evaluation(model, last, preds, step, phase, optimizer, scaler)
                    t0 = time.perf_counter()
            # the steps since the epoch's last evaluation count too (rounds stretched past an epoch: samples_per_s
            # was several times too high when the time of an epoch's tail was dropped here)
            train_time += time.perf_counter() - t0
        return last
    finally:
        if replay is not None:
            replay.remove()


def _frozen_prefix(strategy: Strategy, bundle: Any, starts: list[int], config: Mapping[str, Any], ctx: TrialContext,
                   task: Task, prepared: Any, batch_size: int, device: torch.device,
                   dtype: Optional[torch.dtype]) -> tuple[Any, Optional[str]]:
    """A trial whose strategy keeps a bottom part frozen throughout: that part in eval mode, and its replay from
    outputs computed once where it can be (:mod:`autotransfer.prefix_cache`); with a note for the report."""
    from autotransfer import prefix_cache

    depth = strategy.frozen_prefix(config, bundle) if bundle is not None and not starts else None
    if depth is None:
        return None, None
    # frozen parameters held by no module of their own (a ViT's class token and position embedding) need no
    # refusal here: their work runs on the replay's placeholders, and the first batch's check holds it
    modules, _loose = prefix_cache.prefix_modules(bundle.model, bundle, depth)
    prefix_cache.mark_frozen(modules + prefix_cache.between(bundle.model, modules))
    train_mode(bundle.model)
    if not ctx.prefix_cache:
        return None, "off: turned off"
    if depth == 0:  # the stem alone (embeddings): cheaper to compute than to keep
        return None, "off: nothing frozen above the stem"
    key = (ctx.search_id, config["backbone"], depth, str(device), str(dtype)) if ctx.search_id else None
    try:
        return prefix_cache.attach(task, bundle.model, modules, key, prepared, batch_size, device, dtype, config)
    except prefix_cache.NotReplayable as exc:
        return None, f"off: {exc}"


def loader_order(task: Task, prepared: Any, split: str, batch_size: int) -> np.ndarray:
    """The split positions of an evaluation loader's examples, in the order it yields them (text sorts by
    length)."""
    order = _yield_order(task.batches(prepared, split, batch_size, train=False))
    return order if order is not None else np.arange(task.num_examples(prepared, split), dtype=np.int64)


def evaluate_features(classifier: nn.Module, task: Task, x: np.ndarray, y: np.ndarray,
                      order: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
    """:func:`evaluate` of a head fitted on features, on the split's cached features (rows = examples, in the
    loader's ``order``): the classifier alone, no backbone.  Predictions come back in split order."""
    objective = task.objective
    with torch.inference_mode():
        weight = classifier.weight.detach().float().cpu()
        bias = classifier.bias.detach().float().cpu() if classifier.bias is not None else None
        logits = torch.nn.functional.linear(torch.from_numpy(x).float(), weight, bias)
        labels = torch.from_numpy(y)
        loss = float(objective.loss(logits, labels, reduction="sum")) / max(1, objective.count(labels))
        y_pred, y_true = objective.decode(logits, labels)
    metrics = objective.score(y_true, y_pred)
    metrics["loss"] = loss
    in_order = np.empty_like(y_pred)
    in_order[order] = y_pred
    return metrics, in_order


@torch.inference_mode()
def head_features(model: nn.Module, classifier: nn.Module, task: Task, prepared: Any, split: str, batch_size: int,
                  device: torch.device, dtype: Optional[torch.dtype], limit_bytes: Optional[int] = None,
                  ranking: Optional[list[np.ndarray]] = None) -> tuple[np.ndarray, np.ndarray]:
    """What ``classifier`` sees for every example of a split (one forward pass, eval mode, no augmentation), as
    the objective's rows of (features, class id), in the loader's order (:func:`loader_order`).  Past
    ``limit_bytes`` of features it stops and raises :class:`autotransfer.features.NotCached`.

    With a ``ranking`` list, the same pass also appends to it the rows the backbone pre-rank scores, when the task
    scores something other than the classifier's input (:meth:`Task.ranking_module`), one row per feature row."""
    captured: list[torch.Tensor] = []
    hooks = [classifier.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))]
    states: list[Any] = []
    source = task.ranking_module(model) if ranking is not None else None
    if source is not None:
        hooks.append(source.register_forward_hook(lambda _m, _args, out: states.append(out)))
    model.eval()
    features, labels, ranked = [], [], []
    size = 0
    try:
        for inputs, y in task.batches(prepared, split, batch_size, train=False, pin_memory=device.type == "cuda"):
            inputs = {k: v.to(device, non_blocking=True) for k, v in inputs.items()}
            with _autocast(device, dtype):
                task.logits(model, inputs)
            head_input = captured.pop()
            if source is not None:
                rows = task.ranking_rows(states.pop(), head_input, inputs)
                if rows is None:  # this model's pre-rank scores its classifier's input after all
                    hooks.pop().remove()
                    source = None
                else:
                    ranked.append(rows.detach().float().cpu().numpy())
                    size += ranked[-1].nbytes
            x, labels_of = task.objective.feature_rows(task.classifier_input(head_input, inputs), y)  # e.g. a
            # tagger keeps its tagged positions, a decoder's classifier the last real token
            features.append(x)
            labels.append(labels_of)
            size += x.nbytes + labels_of.nbytes
            if limit_bytes is not None and size > limit_bytes:
                from autotransfer.features import NotCached

                raise NotCached(f"frozen features pass the {limit_bytes / 2**20:.0f} MiB left for them")
    finally:
        for hook in hooks:
            hook.remove()
    if ranking is not None and ranked and source is not None:
        ranking.append(np.concatenate(ranked))
    return np.concatenate(features), np.concatenate(labels)


def _fit_classifier(strategy: Strategy, adapted: Adapted, config: Mapping[str, Any], ctx: TrialContext, task: Task,
                    prepared: Any, batch_size: int, device: torch.device,
                    dtype: Optional[torch.dtype]) -> tuple[int, float, bool]:
    """Fit the head's last linear layer on the frozen features of the training split (the search's, computed
    once, or one forward pass of its own) and a convex fit; returns (examples, seconds, whether the search's
    features were used)."""
    if adapted.classifier is None:
        raise TrialFailed("no linear classifier found in the head to fit on features")
    t0 = time.perf_counter()
    cached = ctx.features.get(config["backbone"])
    if cached is not None:
        features, labels = cached.x, cached.y
    else:
        features, labels = head_features(adapted.model, adapted.classifier, task, prepared, "train",
                                         batch_size * 2, device, dtype)
    has_bias = adapted.classifier.bias is not None  # a decoder's score layer has none
    weight, bias = strategy.fit_head(features, labels, len(ctx.label_names), config, threads=ctx.threads,
                                     intercept=has_bias)
    with torch.no_grad():
        adapted.classifier.weight.copy_(torch.as_tensor(weight, dtype=adapted.classifier.weight.dtype))
        if has_bias:
            adapted.classifier.bias.copy_(torch.as_tensor(bias, dtype=adapted.classifier.bias.dtype))
    train_mode(adapted.model)  # head_features left it in eval mode
    return len(labels), time.perf_counter() - t0, cached is not None


def _fit_head(strategy: Strategy, adapted: Adapted, config: Mapping[str, Any], ctx: TrialContext, task: Task,
              prepared: Any, batch_size: int, device: torch.device, dtype: Optional[torch.dtype], report: Reporter,
              common: dict[str, Any]) -> dict[str, Any]:
    """A strategy that fits its head on frozen features: one forward pass over train, a convex fit, one
    evaluation.  The trial's whole budget, so its one report is its last."""
    examples, elapsed, cached = _fit_classifier(strategy, adapted, config, ctx, task, prepared, batch_size, device,
                                                dtype)
    found = ctx.features.get(config["backbone"])
    if found is not None and found.val_x is not None and adapted.classifier is not None:
        metrics, preds = evaluate_features(adapted.classifier, task, found.val_x, found.val_y, found.val_order)
    else:
        metrics, preds = evaluate(adapted.model, task, prepared, "validation", batch_size, device, dtype)
    last = {**{k: v for k, v in metrics.items() if k != "loss"}, "val_loss": metrics["loss"], "train_loss": None,
            "epoch": 1.0, "step": 0, "samples_per_s": examples / elapsed if elapsed > 0 else 0.0,
            CACHED_FEATURES: cached,
            "batch_size_used": batch_size, **common, FINISHED: True}
    Checkpointer(ctx.metric, report).evaluation(adapted.model, last, preds, 0)
    return last


def _gpu_memory_start(device: torch.device) -> Optional[int]:
    """GPU bytes this process holds as the trial starts (0 unless an earlier trial leaked); resets the peak."""
    if device.type != "cuda":
        return None
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def _gpu_memory(device: torch.device, at_start: Optional[int]) -> dict[str, float]:
    """Peak GPU memory of the trial so far (what sizing ``--gpus-per-trial`` fractions needs), in MiB."""
    if device.type != "cuda" or at_start is None:
        return {}
    return {"gpu_memory_peak_mb": torch.cuda.max_memory_allocated(device) / 2**20,
            "gpu_memory_at_start_mb": at_start / 2**20}


def _check_finite(loss_sum: torch.Tensor, step: int) -> None:
    if not bool(torch.isfinite(loss_sum)):
        raise TrialFailed(f"training loss became NaN/inf by step {step} (learning rate too high?)")


def refit(config: Mapping[str, Any], ctx: TrialContext, epochs: float, folder: Path,
          threads: Optional[int] = None) -> dict[str, Any]:
    """Train ``config`` again on train + validation for ``epochs`` passes (where the chosen trial peaked), and
    write its trainable tensors to ``folder`` as a checkpoint.  Returns what was done.

    No split is held out, so nothing is chosen here: the configuration and the length were chosen on
    validation before; the test split stays unseen.
    """
    import dataclasses

    task = get_task(ctx.task)
    backbone = config["backbone"]
    prepared = task.with_train(ctx.prepared[backbone], ("train", "validation"))
    n = task.num_examples(prepared, "train")
    batch = int(config.get("batch_size", 32))
    steps = max(1, round(epochs * n / batch))
    budget = Budget(train_examples=n, max_batch_size=batch, rounds=1, grace_rounds=1, examples_per_round=steps * batch,
                    min_steps=0)
    # features=: the search's frozen features cover the training split only, not train + validation
    # and search_id=: a worker's kept frozen-prefix outputs are the training split's too
    refit_ctx = dataclasses.replace(ctx, prepared={**ctx.prepared, backbone: prepared}, budget=budget,
                                    threads=threads or ctx.threads, features={}, search_id="")
    folder.mkdir(parents=True, exist_ok=True)

    def keep(metrics: dict[str, Any], checkpoint_dir: Optional[str]) -> None:
        if checkpoint_dir is not None:
            for name in (WEIGHTS_FILE, STATE_FILE):
                (folder / name).write_bytes((Path(checkpoint_dir) / name).read_bytes())

    start = time.perf_counter()
    train(config, refit_ctx, keep)
    if not (folder / WEIGHTS_FILE).exists():
        raise TrialFailed("the refit saved no weights")
    fitted = get_strategy(config["strategy"]).fits_head_on_features
    return {"train_examples": n, "epochs": round(epochs, 4), "steps": 0 if fitted else steps,
            "seconds": round(time.perf_counter() - start, 1)}


def _stop_signal() -> Optional[Callable[[], bool]]:
    """Whether Ray Tune has stopped this trial (ASHA, the time budget, Ctrl-C).

    A function trainable only learns it is stopped at its next ``tune.report``; until then its
    thread holds the worker, and Ray Tune gives up reusing a worker whose previous thread runs
    on for 2 s (the next trial then fails with "Trainable runner reuse requires reset_config()").
    Ray's session sets an event when it finishes the trial; reading it is Ray-internal, so a
    layout change degrades to the old behaviour (None), it does not break trials.
    """
    try:
        from ray.train._internal.session import get_session

        event = getattr(get_session(), "stop_event", None)
    except Exception:  # noqa: BLE001 - no session or another Ray layout
        return None
    return event.is_set if event is not None else None


def run_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """Ray Tune function trainable: :func:`train` wired to ``tune.report`` and ``tune.get_checkpoint``.

    The trial's own failures (a diverged loss, a model that cannot be built...) are final: they
    are reported as a last result carrying ``trial_error`` and the trial ends, so Ray Tune's
    ``max_failures`` retries only what is worth retrying: a worker or node that died.
    """
    import ray
    from ray import tune

    from autotransfer.results import NODE_ID, TRIAL_ERROR, one_line
    from autotransfer.shipping import use_local_folders

    # Ray reuses this worker for the next trial only once this trial's thread has ended, and waits 2 s for it
    # (read here, in the worker, at reuse time): less than one training step or checkpoint write takes on a
    # loaded CPU, and the next trial then failed with "Trainable runner reuse requires reset_config()". The
    # thread checks for a stop every step, so it ends within one step: allow 30 s
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", str(THREAD_TIMEOUT_S))
    node = ray.get_runtime_context().get_node_id()
    should_stop = _stop_signal()

    def report(metrics: dict[str, Any], checkpoint_dir: Optional[str]) -> None:
        checkpoint = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        tune.report({**metrics, NODE_ID: node}, checkpoint=checkpoint)

    try:
        ctx = use_local_folders(ctx, config["backbone"])
        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            train(config, ctx, report, should_stop=should_stop)
            return
        with checkpoint.as_directory() as restore_dir:
            with tempfile.TemporaryDirectory(prefix="autotransfer-restore-") as tmp:
                for name in FILES:
                    src = Path(restore_dir) / name
                    if src.exists():
                        (Path(tmp) / name).write_bytes(src.read_bytes())
                train(config, ctx, report, restore_dir=tmp, should_stop=should_stop)
    except Exception as exc:  # noqa: BLE001 - any error of the trial's own is its one-line reason
        reason = str(exc) if isinstance(exc, TrialFailed) else one_line(f"{type(exc).__name__}: {exc}")
        tune.report({ctx.metric: float("nan"), TRIAL_ERROR: reason or type(exc).__name__, NODE_ID: node})
