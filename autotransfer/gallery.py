"""The report's gallery: validation examples drawn with the selected trial's predictions beside the truth.

People judge a detector by looking at its boxes.  The task draws the examples
(:meth:`autotransfer.tasks.base.Task.gallery`; only tasks with something to show do); this module takes the
validation predictions the selected trial saved with its checkpoint (no model is run again), writes the
pictures as JPEG files into ``<run>/gallery/`` and returns their captions, which the report embeds.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np

from autotransfer.checkpoints import PREDICTIONS_FILE
from autotransfer.settings import GALLERY_DIR
from autotransfer.storage import local_copy

#: examples shown
LIMIT = 12


def write_gallery(task: Any, prepared: Any, checkpoint: Optional[str], label_names: list[str], out: Path,
                  limit: int = LIMIT) -> list[dict[str, str]]:
    """Draw the validation examples of the trial whose checkpoint is ``checkpoint`` into ``out/gallery``.

    Returns ``[{"file": "gallery/00.jpg", "caption": ...}, ...]`` (empty when the task draws nothing or the
    checkpoint holds no predictions)."""
    folder = out / GALLERY_DIR
    if folder.exists():
        shutil.rmtree(folder)
    from autotransfer.tasks.base import Task

    if checkpoint is None or type(task).gallery is Task.gallery:  # a task that draws nothing: no checkpoint read
        return []
    with local_copy(str(checkpoint)) as ckpt:
        path = Path(ckpt) / PREDICTIONS_FILE
        if not path.exists():
            return []
        predictions = np.load(path)
    drawn = task.gallery(prepared, "validation", predictions, label_names, limit)
    if not drawn:
        return []
    folder.mkdir(parents=True)
    items = []
    for i, (caption, image) in enumerate(drawn):
        name = f"{i:02d}.jpg"
        image.convert("RGB").save(folder / name, quality=85)
        items.append({"file": f"{GALLERY_DIR}/{name}", "caption": caption})
    return items
