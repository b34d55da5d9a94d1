"""COCO-style detection scores of padded box arrays, through torchmetrics' ``MeanAveragePrecision`` (pycocotools).

The engine keeps a split's predictions as one array with a row per example (so the paired bootstrap can resample
images); for detection a row is an image:

- predictions: ``(images, D, 6)`` float32, one ``[x1, y1, x2, y2, score, class]`` per detection, padded with
  rows whose class is ``-1``;
- truth: ``(images, M, 5)`` float32, one ``[x1, y1, x2, y2, class]`` per box, padded the same way.

Nothing here computes an AP by hand: the arrays are handed to torchmetrics as the lists of per-image dicts it
takes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: the scores a detection objective reports (torchmetrics' names): COCO mAP@[.5:.95] first, the default target
METRICS = ("map", "map_50", "map_75", "mar_100")


def pad_rows(rows: list[np.ndarray], width: int, columns: int) -> np.ndarray:
    """Stack per-image ``(n_i, columns)`` arrays into ``(images, width, columns)``, padded with class ``-1``."""
    out = np.zeros((len(rows), max(1, width), columns), dtype=np.float32)
    out[..., -1] = -1
    for i, r in enumerate(rows):
        n = min(len(r), width)
        out[i, :n] = r[:n]
    return out


def _as_dicts(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    import torch

    preds, target = [], []
    for truth, pred in zip(np.asarray(y_true, dtype=np.float32), np.asarray(y_pred, dtype=np.float32)):
        t = truth[truth[:, -1] >= 0]
        p = pred[pred[:, -1] >= 0]
        target.append({"boxes": torch.as_tensor(t[:, :4]), "labels": torch.as_tensor(t[:, 4]).long()})
        preds.append({"boxes": torch.as_tensor(p[:, :4]), "scores": torch.as_tensor(p[:, 4]),
                      "labels": torch.as_tensor(p[:, 5]).long()})
    return preds, target


def compute(y_true: np.ndarray, y_pred: np.ndarray, per_class: bool = False) -> dict[str, Any]:
    """torchmetrics' COCO evaluation of the images in ``y_true`` / ``y_pred``.

    Scores COCO marks as undefined (-1: no box of that size or class) are returned as 0 for the headline metrics
    (a model that found nothing where nothing was to be found is not rewarded either way).
    """
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(iou_type="bbox", class_metrics=per_class)
    preds, target = _as_dicts(y_true, y_pred)
    metric.update(preds, target)
    raw = metric.compute()
    out: dict[str, Any] = {k: max(0.0, float(raw[k])) for k in METRICS}
    if per_class:
        classes = np.atleast_1d(raw["classes"].numpy()).astype(int)
        ap = np.atleast_1d(raw["map_per_class"].numpy()).astype(float)
        out["ap_per_class"] = {int(c): float(a) for c, a in zip(classes, ap)}
    return out
