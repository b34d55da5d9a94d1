"""Frozen features computed once per backbone, in the driver, before any trial.

A ``linear_probe`` trial (and an ``lp_ft`` trial's phase 0) fits its head on what the
classifier layer sees from the frozen, pretrained backbone over the training split.
That input is the same for every such trial of a backbone: the model is built with the
search's seed (so a head part the checkpoint lacks, such as a missing pooler, is drawn
the same way) and run in eval mode on un-augmented batches.  It is computed here once,
shipped to the trials with the rest of the trial context (Ray's object store, so remote
nodes get it too), and scored for the backbone pre-rank (:mod:`autotransfer.prerank`) -- or,
where the task says the classifier's input is the weaker thing to score (a text encoder's
pooler), the rows it names instead, taken in the same forward pass.

Bounded: features larger than :data:`CACHE_LIMIT_MB` in all are not kept (the forward
pass stops as soon as the limit is passed); trials then compute their own, as before.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np
import torch

from autotransfer.tasks import BackboneInfo, Task

#: the most memory the cached features of all backbones may take, in MiB
CACHE_LIMIT_MB = 256


class NotCached(RuntimeError):
    """A backbone's features are not kept (past the size limit, or no linear head to fit); the one-line reason."""


@dataclass
class FrozenFeatures:
    """A backbone's head input: rows of features and their class ids over the training split, and, when rows
    are examples (classification), over the validation split with the order its evaluation loader yields them."""

    x: np.ndarray
    y: np.ndarray
    seconds: float
    val_x: Optional[np.ndarray] = None
    val_y: Optional[np.ndarray] = None
    val_order: Optional[np.ndarray] = None
    #: the training rows the backbone pre-rank scores when they are not ``x`` (a text encoder's averaged token
    #: states, see :meth:`autotransfer.tasks.Task.ranking_rows`); None: it scores ``x``
    rank_x: Optional[np.ndarray] = None

    @property
    def ranking_rows(self) -> np.ndarray:
        """What the pre-rank scores (with ``y``)."""
        return self.x if self.rank_x is None else self.rank_x

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in (self.x, self.y, self.val_x, self.val_y, self.val_order, self.rank_x)
                       if a is not None))


def frozen_features(task: Task, backbone: BackboneInfo, prepared: Any, label_names: list[str], seed: int,
                    trust_remote_code: bool = False, batch_size: int = 64, precision: str = "auto",
                    use_gpu: bool = False, limit_bytes: Optional[int] = None) -> FrozenFeatures:
    """What a ``linear_probe`` trial of ``backbone`` fits its head on (see the module docstring)."""
    from autotransfer.training import autocast_dtype, build_trial_model, device_for, head_features, loader_order

    start = time.perf_counter()
    torch.manual_seed(seed)  # as a trial does before building its model (training._train)
    _, adapted = build_trial_model(task, backbone, label_names, {"backbone": backbone.name,
                                                                 "strategy": "linear_probe"}, trust_remote_code)
    if adapted.classifier is None:
        raise NotCached("no linear classifier in the head")  # nothing to fit on features: nothing to keep
    device = device_for(use_gpu)
    adapted.model.to(device)
    dtype = autocast_dtype(precision, device)
    ranking: list[np.ndarray] = []
    x, y = head_features(adapted.model, adapted.classifier, task, prepared, "train", batch_size, device, dtype,
                         limit_bytes=limit_bytes, ranking=ranking)
    found = FrozenFeatures(x=x.astype(np.float32, copy=False), y=y, seconds=0.0,
                           rank_x=ranking[0].astype(np.float32, copy=False) if ranking else None)
    if task.objective.rows_are_examples:  # a fitted head is then scored on these, without the backbone
        room = None if limit_bytes is None else limit_bytes - found.nbytes
        vx, vy = head_features(adapted.model, adapted.classifier, task, prepared, "validation", batch_size, device,
                               dtype, limit_bytes=room)
        found.val_x, found.val_y = vx.astype(np.float32, copy=False), vy
        found.val_order = loader_order(task, prepared, "validation", batch_size)
    found.seconds = time.perf_counter() - start
    return found


def cache_features(task: Task, backbones: Mapping[str, BackboneInfo], prepared: Mapping[str, Any],
                   label_names: list[str], seed: int, trust_remote_code: bool = False, precision: str = "auto",
                   use_gpu: bool = False, limit_mb: int = CACHE_LIMIT_MB,
                   ) -> tuple[dict[str, FrozenFeatures], list[str]]:
    """Frozen features of every backbone that fits in ``limit_mb`` together; and one line per backbone left out."""
    kept: dict[str, FrozenFeatures] = {}
    left: list[str] = []
    room = limit_mb * 2**20
    for name, info in backbones.items():
        try:
            found = frozen_features(task, info, prepared[name], label_names, seed, trust_remote_code,
                                    precision=precision, use_gpu=use_gpu, limit_bytes=room)
        except NotCached as exc:
            left.append(f"{name}: {exc}")
            continue
        kept[name] = found
        room -= found.nbytes
    return kept, left
