"""The strategy protocol and the model description strategies work on.

A task loads a backbone with a fresh classification head and describes it as a
:class:`ModelBundle`: which parameters are the new head and how the backbone's
parameters fall into ordered layer groups (input stem, blocks, tail).  A
strategy decides from that -- and nothing architecture-specific -- what to
freeze, what to wrap (LoRA) and which learning rate each group gets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Mapping, Optional

if TYPE_CHECKING:  # torch loads with the first model, not with the strategy registry (the door stays light)
    import numpy as np
    import torch
    from torch import nn


@dataclass
class ModelBundle:
    """A classifier plus the parameter layout strategies need."""

    model: nn.Module
    #: parameter names trained from scratch: the classifier and anything the
    #: checkpoint lacked (e.g. a pooler missing from the pretrained weights)
    head: list[str]
    #: backbone parameters before the first block (embeddings, patch stem)
    stem: list[str]
    #: backbone blocks from input to output (transformer layers, CNN stages)
    blocks: list[list[str]]
    #: backbone parameters after the last block (final norm, pooler)
    tail: list[str] = field(default_factory=list)
    #: module names (or name suffixes) LoRA adapts
    lora_targets: list[str] = field(default_factory=list)
    #: modules that own head parameters (trained in full under LoRA)
    head_modules: list[str] = field(default_factory=list)

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def params(self, names: Iterable[str]) -> list[nn.Parameter]:
        named = dict(self.model.named_parameters())
        return [named[n] for n in names]


@dataclass
class Adapted:
    """What a strategy hands the training loop."""

    model: nn.Module
    #: optimizer parameter groups: dicts with ``params`` and ``lr``
    param_groups: list[dict[str, Any]]
    #: the head's final linear layer, for strategies that fit it on frozen features
    classifier: Optional[nn.Module] = None
    #: the model's layout, for strategies whose later phases re-apply themselves (set by the training loop)
    bundle: Optional[ModelBundle] = None


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def set_trainable(params: Iterable[nn.Parameter], flag: bool) -> None:
    for p in params:
        p.requires_grad_(flag)


class Strategy:
    """Base class: subclasses set ``name``, ``hyperparameters`` and implement :meth:`apply`."""

    name: ClassVar[str]
    #: hyperparameters this strategy reads (name -> meaning); a search space may search any of them
    hyperparameters: ClassVar[Mapping[str, str]] = {}
    #: values used when the space leaves a hyperparameter out
    defaults: ClassVar[Mapping[str, Any]] = {}
    #: the backbone stays frozen and :meth:`fit_head` fits the head's last linear layer on the features it
    #: sees, computed once (instead of epochs of gradient steps through the frozen backbone)
    fits_head_on_features: ClassVar[bool] = False
    #: phase 0 fits the head on frozen features (as ``fits_head_on_features``), then the later phases train
    fits_head_first: ClassVar[bool] = False

    def hp(self, config: Mapping[str, Any], name: str) -> Any:
        if name in config and config[name] is not None:
            return config[name]
        return self.defaults[name]

    def apply(self, bundle: ModelBundle, config: Mapping[str, Any], phase: int = 0) -> Adapted:
        """Freeze/wrap ``bundle.model`` for ``phase`` and return it with its optimizer parameter groups.

        Phase 0 is applied when the model is built; a strategy with :meth:`phase_starts` is applied again with
        ``phase=k`` at the step where phase ``k`` begins (the loop then rebuilds the optimizer, continues the
        schedule and re-freezes BatchNorm statistics where weights are frozen)."""
        raise NotImplementedError

    def phase_starts(self, config: Mapping[str, Any], bundle: ModelBundle, steps_per_epoch: int,
                     total_steps: int) -> list[int]:
        """The optimizer steps at which phases 1, 2... begin (increasing); none: the strategy has one phase."""
        return []

    def fit_head(self, features: np.ndarray, labels: np.ndarray, num_classes: int, config: Mapping[str, Any],
                 threads: int = 1, intercept: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(weight, bias) of the final linear layer fitted on ``features`` (``fits_head_on_features`` only)."""
        raise NotImplementedError

    def frozen_prefix(self, config: Mapping[str, Any], bundle: ModelBundle) -> Optional[int]:
        """How many bottom blocks (with the stem) stay frozen for the whole trial, or None when what is frozen is not
        a fixed bottom part (nothing, LoRA's base weights, phases that unfreeze).  That prefix runs in eval mode,
        a fixed feature extractor like a linear probe's backbone, and its output can be computed once
        (:mod:`autotransfer.prefix_cache`)."""
        return None

    def finalize(self, model: nn.Module) -> nn.Module:
        """A plain model in its library's format, for export (e.g. LoRA merged)."""
        return model

    @staticmethod
    def only_trainable(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for g in groups:
            params = [p for p in g["params"] if p.requires_grad]
            if params:
                out.append({**g, "params": params})
        return out


def final_linear(bundle: ModelBundle) -> Optional[nn.Module]:
    """The head's last ``nn.Linear`` in registration order (the classifier proper, not a fresh pooler or
    pre-classifier before it)."""
    from torch import nn

    last = None
    for name in bundle.head:
        module = bundle.model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else None
        if isinstance(module, nn.Linear):
            last = module
    return last


def layer_groups(bundle: ModelBundle, lr: float, decay: float) -> list[tuple[list[str], float]]:
    """The backbone's parameter groups from the input up (stem, blocks..., tail), each with its learning rate:
    ``lr`` for the tail just below the head, ``decay`` times less per group further down (layer-wise decay)."""
    ordered = [names for names in (bundle.stem, *bundle.blocks, bundle.tail) if names]
    top = len(ordered) - 1
    return [(names, lr * decay ** (top - i)) for i, names in enumerate(ordered)]


def freeze_all(model: nn.Module) -> None:
    set_trainable(model.parameters(), False)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a checkpoint must hold: the trainable parameters, and the buffers of the modules that own
    one (a BatchNorm whose weights train also updates its running statistics in training; frozen modules, and
    frozen BatchNorms kept in eval mode, come unchanged from the backbone)."""
    state = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    for prefix, module in model.named_modules():
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            for name, buffer in module.named_buffers(prefix=prefix, recurse=False):
                if buffer is not None and name.rsplit(".", 1)[-1] not in module._non_persistent_buffers_set:
                    state[name] = buffer.detach().cpu().contiguous()
    return state
