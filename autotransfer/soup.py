"""A greedy model soup across trials (Wortsman et al., ICML 2022, "Model soups").

After the search, the trials fine-tuned from the same backbone are candidate
ingredients: their weights start from the same pretrained point, so averaging
them often lands in a better spot than any one of them.  The greedy recipe:
start from the best trial; in order of validation score, add a trial's weights
to the average only if the averaged model's validation metric then *improves*;
keep the soup only when it beats the best single trial on validation.  The test
split is never looked at.

Weights are compared and averaged as each trial's finished model (LoRA merged,
the frozen parts included), so trials of different strategies on one backbone
mix; a trial whose model has other tensors (another head, another number of
labels) is skipped.  Only floating-point tensors are averaged; integer buffers
(BatchNorm's batch counters, position ids) are the best trial's.

AutoGluon averages checkpoints inside one trial; this averages across trials.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import warnings
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

import torch
from torch import nn

if TYPE_CHECKING:
    from autotransfer.results import TrialRecord
    from autotransfer.tasks import Task
    from autotransfer.training import TrialContext

State = dict[str, torch.Tensor]


@dataclass
class Soup:
    """What the greedy soup found; ``model`` holds the averaged weights when :attr:`wins`."""

    #: trial ids averaged, the best trial first
    ingredients: list[str]
    #: the soup's validation metric (the best trial's own when nothing was added)
    validation_metric: float
    #: the best trial's validation metric, measured the same way
    best_single: float
    #: every candidate tried: trial id, the soup's metric with it, whether it was kept
    tried: list[dict[str, Any]] = field(default_factory=list)
    #: candidates left out because their model has other tensors than the best trial's
    incompatible: list[str] = field(default_factory=list)
    model: Optional[nn.Module] = field(default=None, repr=False)

    @property
    def wins(self) -> bool:
        """Whether the soup beat the best single trial on validation (and so is the model to export)."""
        return len(self.ingredients) > 1 and self.validation_metric > self.best_single

    def to_dict(self) -> dict[str, Any]:
        return {"ingredients": list(self.ingredients), "validation_metric": self.validation_metric,
                "best_single_validation_metric": self.best_single, "exported": self.wins,
                "tried": list(self.tried), "incompatible": list(self.incompatible)}


def float_state(model: nn.Module) -> State:
    """A detached float32 copy of the model's floating-point tensors (parameters and buffers), on the CPU."""
    return {k: v.detach().to("cpu", torch.float32, copy=True) for k, v in model.state_dict().items()
            if v.is_floating_point()}


def compatible(a: State, b: State) -> bool:
    """Whether two models have the same floating-point tensors, by name and shape."""
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)


def load_average(model: nn.Module, total: State, count: int) -> None:
    """Put ``total / count`` into ``model``'s floating-point tensors (each in its own dtype and device)."""
    current = model.state_dict()
    with torch.no_grad():
        for k, v in total.items():
            current[k].copy_((v / count).to(current[k].dtype))


def greedy_soup(best_id: str, candidates: Iterable[str], build: Callable[[str], nn.Module],
                score: Callable[[nn.Module], float]) -> Soup:
    """The greedy soup of ``best_id`` and ``candidates`` (trial ids, best validation score first).

    ``build(trial_id)`` returns a trial's finished model; ``score(model)`` its validation metric
    (higher is better).  The best trial's model is the vessel the averages are loaded into; it is
    returned holding the soup when the soup wins, and its own weights otherwise.
    """
    model = build(best_id)
    own = float_state(model)
    best_single = float(score(model))
    total = {k: v.clone() for k, v in own.items()}
    soup = Soup(ingredients=[best_id], validation_metric=best_single, best_single=best_single)
    for trial_id in candidates:
        other = build(trial_id)
        weights = float_state(other)
        del other
        if not compatible(own, weights):
            soup.incompatible.append(trial_id)
            continue
        with_it = {k: total[k] + weights[k] for k in total}  # a new sum: a rejected one leaves `total` exact
        load_average(model, with_it, len(soup.ingredients) + 1)
        value = float(score(model))
        kept = value > soup.validation_metric
        soup.tried.append({"trial_id": trial_id, "validation_metric": value, "kept": kept})
        if kept:
            soup.ingredients.append(trial_id)
            soup.validation_metric, total = value, with_it
    load_average(model, total, len(soup.ingredients))  # the soup, or the best trial's own weights
    soup.model = model
    return soup


def soup_of_trials(task: "Task", best: "TrialRecord", records: list["TrialRecord"], ctx: "TrialContext",
                   metric: str, log: Callable[[str], None]) -> Optional[Soup]:
    """The search's step after the trials: the greedy soup of ``best`` and the other finished trials of its
    backbone (best validation score first), rebuilt from their checkpoints and scored on validation; None when
    no other trial of that backbone finished."""
    from autotransfer.backbones import display_name
    from autotransfer.export import rebuild
    from autotransfer.training import autocast_dtype, device_for, evaluate

    others = [r for r in records if r.ok and r.checkpoint and r is not best and r.backbone == best.backbone]
    if not others:
        return None
    by_id = {r.trial_id: r for r in (best, *others)}
    device = device_for(ctx.use_gpu)
    dtype = autocast_dtype(ctx.precision, device)
    prepared = ctx.prepared[best.backbone]

    def score(model: nn.Module) -> float:
        return evaluate(model, task, prepared, "validation", 64, device, dtype)[0][metric]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecation notes from inside peft/transformers
        soup = greedy_soup(best.trial_id, [r.trial_id for r in others], lambda t: rebuild(by_id[t], ctx).to(device),
                           score)
    kept = len(soup.ingredients) - 1
    log(f"model soup: {kept} of {len(others)} other {display_name(best.backbone)} trial(s) averaged in; "
        + (f"validation {metric} {soup.validation_metric:.4f} vs {soup.best_single:.4f} for the best trial alone: "
           "exporting the soup" if soup.wins else "no average beat the best trial on validation: exporting the best "
                                                  "trial")
        + " (--no-soup to skip)")
    return soup

