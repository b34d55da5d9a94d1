"""What a task optimises and how it is scored: its loss, its decoding, its metrics, its report.

The training loop, the export, the uncertainty intervals and the report call these and
nothing else, so they never need to know what a class (or an entity, or a box) is.  A
task holds one :class:`Objective` (``Task.objective``); a new kind of task writes a new
subclass, the way an Optuna pruner subclasses ``BasePruner``.

This module stays light (no torch or scikit-learn at import): settings validation reads
``metrics`` and ``default_metric`` before any heavy library is loaded.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import numpy as np

if TYPE_CHECKING:
    import torch


class Objective(ABC):
    """A task's training objective and scores.  Every metric is "higher is better"."""

    #: the metrics :meth:`score` returns, in the order ``--metric`` lists them
    metrics: ClassVar[tuple[str, ...]]
    #: what ``--metric`` defaults to
    default_metric: ClassVar[str]

    # ``labels`` is whatever the task's batches carry, on the device: a tensor, or a dict of them
    @abstractmethod
    def loss(self, logits: "torch.Tensor", labels: Any, *, label_smoothing: float = 0.0,
             reduction: str = "mean") -> "torch.Tensor":
        """The training loss of a batch (``reduction="sum"`` for evaluation)."""

    @abstractmethod
    def count(self, labels: Any) -> int:
        """How many loss terms a batch holds (the denominator of a summed loss)."""

    @abstractmethod
    def decode(self, logits: "torch.Tensor", labels: Any) -> tuple[np.ndarray, np.ndarray]:
        """(predictions, truth) of a batch, one entry per example, on the CPU."""

    @abstractmethod
    def metric_function(self, name: str) -> Callable[[np.ndarray, np.ndarray], float]:
        """``fn(y_true, y_pred)`` for one metric (the paired bootstrap resamples examples through it)."""

    def score(self, y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
        """Every metric for one set of predictions."""
        return {name: float(self.metric_function(name)(y_true, y_pred)) for name in self.metrics}

    def details(self, y_true: np.ndarray, y_pred: np.ndarray, label_names: list[str]) -> dict[str, Any]:
        """The best model's detailed test results for ``results.json`` and the report (none by default)."""
        return {}

    def figures(self, test: dict[str, Any], label_names: list[str]) -> list[Any]:
        """The report's plotly figures of the saved test results (``details`` merged into ``test``)."""
        return []


class SingleLabel(Objective):
    """One class per example: cross-entropy, argmax, scikit-learn's classification metrics."""

    metrics = ("accuracy", "balanced_accuracy", "f1_macro", "f1_weighted", "precision_macro", "recall_macro",
               "mcc")
    default_metric = "accuracy"

    def loss(self, logits: "torch.Tensor", labels: "torch.Tensor", *, label_smoothing: float = 0.0,
             reduction: str = "mean") -> "torch.Tensor":
        import torch.nn.functional as F

        return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing, reduction=reduction)

    def count(self, labels: "torch.Tensor") -> int:
        return int(labels.shape[0])

    def decode(self, logits: "torch.Tensor", labels: "torch.Tensor") -> tuple[np.ndarray, np.ndarray]:
        return logits.argmax(-1).cpu().numpy(), labels.cpu().numpy()

    def metric_function(self, name: str) -> Callable[[np.ndarray, np.ndarray], float]:
        from autotransfer.metrics import metric_function

        return metric_function(name)

    def details(self, y_true: np.ndarray, y_pred: np.ndarray, label_names: list[str]) -> dict[str, Any]:
        """Confusion matrix and per-class precision/recall/F1."""
        from autotransfer.metrics import per_class_report

        return per_class_report(y_true, y_pred, label_names)

    def figures(self, test: dict[str, Any], label_names: list[str]) -> list[Any]:
        from autotransfer.report import confusion_matrix

        figure = confusion_matrix(test, label_names)
        return [] if figure is None else [figure]
