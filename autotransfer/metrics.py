"""Classification metrics, all from scikit-learn and all "higher is better"."""

from __future__ import annotations

from typing import Callable

import numpy as np
from sklearn import metrics as skm

_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": skm.accuracy_score,
    "balanced_accuracy": skm.balanced_accuracy_score,
    "f1_macro": lambda y, p: skm.f1_score(y, p, average="macro", zero_division=0),
    "f1_weighted": lambda y, p: skm.f1_score(y, p, average="weighted", zero_division=0),
    "precision_macro": lambda y, p: skm.precision_score(y, p, average="macro", zero_division=0),
    "recall_macro": lambda y, p: skm.recall_score(y, p, average="macro", zero_division=0),
    "mcc": skm.matthews_corrcoef,
}


def metric_function(name: str) -> Callable[[np.ndarray, np.ndarray], float]:
    """The scikit-learn function behind a metric name: ``fn(y_true, y_pred)``."""
    return _METRICS[name]


def per_class_report(y_true: np.ndarray, y_pred: np.ndarray, label_names: list[str]) -> dict:
    """Confusion matrix and per-class precision/recall/F1 (for the report)."""
    labels = list(range(len(label_names)))
    return {
        "confusion_matrix": skm.confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "per_class": skm.classification_report(y_true, y_pred, labels=labels, target_names=label_names,
                                               output_dict=True, zero_division=0),
    }
