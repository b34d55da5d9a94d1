"""Predictions with an exported model: the task is read from the folder's sidecar."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Optional

from autotransfer.errors import UserError
from autotransfer.export import SIDECAR
from autotransfer.tasks import get_task


def predict_rows(model_dir: Path, data: Path, *, text_col: Optional[str] = None, image_col: Optional[str] = None,
                 batch_size: int = 32, draw: Optional[Path] = None,
                 score_threshold: Optional[float] = None) -> Iterator[dict[str, Any]]:
    """Yield the input rows with ``prediction`` (label name) and ``score`` added; for a detector, one COCO results
    row per detection (``draw``: the images with their boxes saved there)."""
    model_dir, data = Path(model_dir), Path(data)
    if not model_dir.is_dir():
        raise UserError(f"--model: {model_dir} is not a folder")
    sidecar = model_dir / SIDECAR
    if not sidecar.is_file():
        raise UserError(f"--model: {model_dir} has no {SIDECAR}; point at a folder written by `autotransfer search`")
    if not data.exists():
        raise UserError(f"--data: {data} does not exist")
    task = get_task(json.loads(sidecar.read_text())["task"])
    return task.predict(model_dir, data, {"text_col": text_col, "image_col": image_col, "batch_size": batch_size,
                                          "draw": draw, "score_threshold": score_threshold})
