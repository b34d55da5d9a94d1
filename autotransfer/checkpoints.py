"""A trial's checkpoint: its best model so far, and everything to continue exactly where it stopped.

A checkpoint is written at every evaluation (what ASHA, a lost worker or Ctrl-C can act on):

- ``trainable.safetensors``, ``val_predictions.npy``: the best evaluation's trainable weights and
  validation predictions (export, the confidence intervals and refit read these);
- ``trial_state.json``: the latest step, the best score and its step, the strategy's phase;
- ``latest.safetensors`` (only when the latest evaluation was not the best) and ``resume.pt``: the
  latest trainable weights, the optimizer and grad-scaler state and the random-number generators'
  states, so that a resumed trial ends with the weights an uninterrupted one would have.

Only trainable tensors are saved (frozen ones come from the backbone); ``resume.pt`` holds tensors
and plain values only and loads with ``weights_only=True``.  Ray Tune keeps the latest checkpoint of
a trial (``num_to_keep=1``), which carries the best weights too: disk stays at one checkpoint per trial
(two for a moment; see :mod:`autotransfer.tune_state` for what a crash in that moment leaves).
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from autotransfer.strategies.base import trainable_state

if TYPE_CHECKING:
    from torch import nn

WEIGHTS_FILE = "trainable.safetensors"
STATE_FILE = "trial_state.json"
#: the validation predictions of the checkpointed model: the objective's decoded rows in split order, int32
#: (a class id per example; a row of tag ids per sentence for a tagger)
PREDICTIONS_FILE = "val_predictions.npy"
LATEST_FILE = "latest.safetensors"
RESUME_FILE = "resume.pt"
#: every file a checkpoint may hold
FILES = (WEIGHTS_FILE, STATE_FILE, PREDICTIONS_FILE, LATEST_FILE, RESUME_FILE)

#: reporter(metrics, checkpoint_dir or None)
Reporter = Callable[[dict[str, Any], Optional[str]], None]


class Checkpointer:
    """Reports a trial's evaluations, each with a checkpoint; remembers the best one."""

    def __init__(self, metric: str, report: Reporter, restore_dir: Optional[str] = None):
        self.metric, self.report = metric, report
        self.best, self.best_step = -math.inf, 0
        self.best_weights: Optional[dict[str, torch.Tensor]] = None
        self.best_predictions: Optional[np.ndarray] = None
        if restore_dir is not None:
            folder = Path(restore_dir)
            state = read_state(folder)
            self.best = float(state.get("best", -math.inf))
            self.best_step = int(state.get("best_step", state.get("step", 0)))
            self.best_weights = load_file(str(folder / WEIGHTS_FILE))
            if (folder / PREDICTIONS_FILE).exists():
                self.best_predictions = np.load(folder / PREDICTIONS_FILE)

    def evaluation(self, model: "nn.Module", result: dict[str, Any], predictions: np.ndarray, step: int, phase: int = 0,
                   optimizer: Optional[torch.optim.Optimizer] = None, scaler: Any = None) -> None:
        """Report ``result`` with a checkpoint; ``optimizer`` given: also what resuming from here needs."""
        latest = trainable_state(model)
        improved = result[self.metric] > self.best
        if improved:
            self.best, self.best_step = float(result[self.metric]), step
            self.best_weights = {k: v.clone() for k, v in latest.items()}  # on CPU, `latest` aliases the model
            # class ids compactly; scored boxes (detection) keep their coordinates and scores
            self.best_predictions = predictions.astype(np.float32 if predictions.dtype.kind == "f" else np.int32)
        result["best_" + self.metric] = self.best
        assert self.best_weights is not None and self.best_predictions is not None
        with tempfile.TemporaryDirectory(prefix="autotransfer-ckpt-") as tmp:
            folder = Path(tmp)
            save_file(self.best_weights, str(folder / WEIGHTS_FILE))
            np.save(folder / PREDICTIONS_FILE, self.best_predictions)
            (folder / STATE_FILE).write_text(json.dumps(
                {"step": step, "best": self.best, "best_step": self.best_step, "phase": phase,
                 "resumable": optimizer is not None, "latest_saved": optimizer is not None and not improved}))
            if optimizer is not None:
                if not improved:
                    save_file(latest, str(folder / LATEST_FILE))
                torch.save({"optimizer": optimizer.state_dict(),
                            "scaler": scaler.state_dict() if scaler is not None else {},
                            "torch_rng": torch.get_rng_state(),
                            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []},
                           folder / RESUME_FILE)
            self.report(result, tmp)


def read_state(folder: Path) -> dict[str, Any]:
    path = Path(folder) / STATE_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def _load_into(model: "nn.Module", path: Path) -> None:
    tensors = load_file(str(path))
    named = model.state_dict()  # parameters and persistent buffers (BatchNorm statistics)
    missing = [k for k in tensors if k not in named]
    if missing:
        raise ValueError(f"checkpoint does not match the model (e.g. {missing[0]})")
    model.load_state_dict(tensors, strict=False)


def load_best(model: "nn.Module", folder: str | Path) -> dict[str, Any]:
    """Load the checkpoint's best trainable tensors into ``model`` (what export uses); returns the trial state."""
    _load_into(model, Path(folder) / WEIGHTS_FILE)
    return read_state(Path(folder))


def restore_latest(model: "nn.Module", folder: str | Path) -> dict[str, Any]:
    """Put ``model`` at the checkpoint's latest evaluation (its best one, when that was the latest); returns the
    trial state.  A checkpoint without resume data (older, or a head fitted in one go) restarts from its best."""
    state = load_best(model, folder)
    # the state says whether this evaluation wrote LATEST_FILE: Ray copies a checkpoint into an existing folder of
    # the same name without emptying it, so a stale one may sit beside it (older checkpoints lack the key)
    if state.get("latest_saved", (Path(folder) / LATEST_FILE).exists()):
        _load_into(model, Path(folder) / LATEST_FILE)
    if not state.get("resumable"):
        state["step"] = int(state.get("best_step", state.get("step", 0)))
    return state


def restore_optimization(folder: str | Path, optimizer: torch.optim.Optimizer, scaler: Any) -> bool:
    """Load the optimizer, grad-scaler and random-number states saved with the latest evaluation, if any."""
    path = Path(folder) / RESUME_FILE
    if not path.exists():
        return False
    saved = torch.load(path, weights_only=True)
    optimizer.load_state_dict(saved["optimizer"])
    if saved["scaler"] and scaler is not None:
        scaler.load_state_dict(saved["scaler"])
    torch.set_rng_state(saved["torch_rng"])
    if saved["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["cuda_rng"])
    return True
