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

from autotransfer.detection_metrics import METRICS as DETECTION_METRICS
from autotransfer.entities import ENTITY_METRICS

if TYPE_CHECKING:
    import torch


class Objective(ABC):
    """A task's training objective and scores.  Every metric is "higher is better"."""

    #: the metrics :meth:`score` returns, in the order ``--metric`` lists them
    metrics: ClassVar[tuple[str, ...]]
    #: what ``--metric`` defaults to
    default_metric: ClassVar[str]
    #: what the labels are called in messages ("classes", "tags")
    noun: ClassVar[str] = "labels"
    #: :meth:`feature_rows` gives one row per example, so a head fitted on features can be scored on the
    #: validation split's features without the backbone (the frozen-feature cache)
    rows_are_examples: ClassVar[bool] = True
    #: bootstrap resamples of the validation intervals (``autotransfer.uncertainty``; fewer for a costly metric)
    resamples: ClassVar[int] = 1000

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

    def feature_rows(self, features: "torch.Tensor", labels: Any) -> tuple[np.ndarray, np.ndarray]:
        """What a head fitted on frozen features learns from: (rows of features, their class ids).

        ``features`` is what the classifier layer received for a batch, ``labels`` the batch's labels.
        """
        return features.float().cpu().numpy(), labels.cpu().numpy()


class SingleLabel(Objective):
    """One class per example: cross-entropy, argmax, scikit-learn's classification metrics."""

    noun = "classes"
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


#: the label of a position no loss or score reads (PyTorch's ``ignore_index``)
IGNORE = -100


class TokenTagging(Objective):
    """One tag per word (NER): token-level cross-entropy, entity-level scores (seqeval, strict IOB2).

    A batch holds sub-token *windows*; its labels are a dict of tensors: ``tags`` (the gold tag id at
    each word's first sub-token, ``-100`` elsewhere), and, in evaluation batches, ``row`` (which of
    the batch's sentences each window belongs to), ``word`` (the word each position predicts, -1 if
    none) and ``width`` (an int: the split's longest sentence in words).  Decoded predictions are one
    row of tag ids per *sentence*, ``-1``-padded to ``width``, so sentences are the examples the
    bootstrap resamples.  Tag ids follow :func:`autotransfer.entities.tag_set`.
    """

    metrics = ENTITY_METRICS
    default_metric = "entity_f1"
    noun = "tags"
    rows_are_examples = False  # rows are tagged positions; entity scores need the sentences

    def loss(self, logits: "torch.Tensor", labels: dict[str, Any], *, label_smoothing: float = 0.0,
             reduction: str = "mean") -> "torch.Tensor":
        import torch.nn.functional as F

        return F.cross_entropy(logits.float().flatten(0, -2), labels["tags"].flatten(), ignore_index=IGNORE,
                               label_smoothing=label_smoothing, reduction=reduction)

    def count(self, labels: dict[str, Any]) -> int:
        return int((labels["tags"] != IGNORE).sum())

    def decode(self, logits: "torch.Tensor", labels: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        best = logits.argmax(-1).cpu().numpy()
        tags, word, row = (labels[k].cpu().numpy() for k in ("tags", "word", "row"))
        y_pred = np.full((int(row.max()) + 1, int(labels["width"])), -1, dtype=np.int64)
        y_true = y_pred.copy()
        w, pos = np.nonzero(word >= 0)
        y_pred[row[w], word[w, pos]] = best[w, pos]
        y_true[row[w], word[w, pos]] = tags[w, pos]
        return y_pred, y_true

    def metric_function(self, name: str) -> Callable[[np.ndarray, np.ndarray], float]:
        from autotransfer.entities import row_scores

        return lambda y_true, y_pred: row_scores(y_true, y_pred)[name]

    def score(self, y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
        from autotransfer.entities import row_scores

        return row_scores(y_true, y_pred)

    def details(self, y_true: np.ndarray, y_pred: np.ndarray, label_names: list[str]) -> dict[str, Any]:
        """Precision, recall, F1 and support per entity type (seqeval's report)."""
        from autotransfer.entities import per_type, rows_to_tags

        return {"per_entity_type": per_type(rows_to_tags(y_true, label_names, y_true),
                                            rows_to_tags(y_pred, label_names, y_true))}

    def figures(self, test: dict[str, Any], label_names: list[str]) -> list[Any]:
        from autotransfer.report import entity_type_scores

        figure = entity_type_scores(test)
        return [] if figure is None else [figure]

    def feature_rows(self, features: "torch.Tensor", labels: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """Only the positions that carry a tag (each word's first sub-token)."""
        keep = labels["tags"] != IGNORE
        return features[keep.to(features.device)].float().cpu().numpy(), labels["tags"][keep].cpu().numpy()


class BoxDetection(Objective):
    """Boxes and their classes (object detection): the detector's own losses, COCO mAP (torchmetrics).

    In training the task's forward returns the detector's loss terms (torchvision's RPN and box-head losses) as
    one 1-D tensor, and the loss is their sum; in evaluation it returns each image's detections as a padded
    ``(images, D, 6)`` tensor of ``[x1, y1, x2, y2, score, class]`` (class ``-1`` pads) and the batch's labels
    are the true boxes, ``(images, M, 5)``.  Images are the examples the bootstrap resamples.  A torchvision
    detector computes no loss in evaluation, so the validation loss it reports is 0.
    """

    noun = "classes"
    default_metric = "map"
    rows_are_examples = False  # no head is fitted on pooled features
    resamples = 100  # one COCO evaluation of a validation set takes a good fraction of a second

    metrics = DETECTION_METRICS
    def loss(self, logits: "torch.Tensor", labels: Any, *, label_smoothing: float = 0.0,
             reduction: str = "mean") -> "torch.Tensor":
        if logits.dim() == 1:  # training: the detector's loss terms
            return logits.sum()
        return logits.new_zeros(())

    def count(self, labels: Any) -> int:
        return int(labels.shape[0])

    def decode(self, logits: "torch.Tensor", labels: Any) -> tuple[np.ndarray, np.ndarray]:
        return logits.float().cpu().numpy(), labels.float().cpu().numpy()

    def metric_function(self, name: str) -> Callable[[np.ndarray, np.ndarray], float]:
        from autotransfer.detection_metrics import compute

        return lambda y_true, y_pred: compute(y_true, y_pred)[name]

    def score(self, y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
        from autotransfer.detection_metrics import compute

        return compute(y_true, y_pred)

    def details(self, y_true: np.ndarray, y_pred: np.ndarray, label_names: list[str]) -> dict[str, Any]:
        """AP@[.5:.95] per class (COCO's, through torchmetrics)."""
        from autotransfer.detection_metrics import compute

        per = compute(y_true, y_pred, per_class=True)["ap_per_class"]
        return {"ap_per_class": {name: per.get(i) for i, name in enumerate(label_names)}}

    def figures(self, test: dict[str, Any], label_names: list[str]) -> list[Any]:
        from autotransfer.report import class_ap

        figure = class_ap(test)
        return [] if figure is None else [figure]
