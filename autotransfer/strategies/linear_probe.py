"""``linear_probe``: the backbone is frozen; only the new head trains."""

from __future__ import annotations

from typing import Any, Mapping

from autotransfer.strategies import register_strategy
from autotransfer.strategies.base import Adapted, ModelBundle, Strategy, freeze_all, set_trainable


@register_strategy
class LinearProbe(Strategy):
    name = "linear_probe"
    hyperparameters = {"head_lr": "learning rate of the head"}
    defaults = {"head_lr": 1e-3}

    def apply(self, bundle: ModelBundle, config: Mapping[str, Any]) -> Adapted:
        freeze_all(bundle.model)
        head = bundle.params(bundle.head)
        set_trainable(head, True)
        return Adapted(bundle.model, [{"params": head, "lr": self.hp(config, "head_lr")}])
