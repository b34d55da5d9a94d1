"""``full``: everything trains; the backbone and the head get their own learning rates.

With ``layer_decay`` < 1 the learning rate shrinks geometrically from the top block
down to the stem (layer-wise learning-rate decay, as in BEiT/ELECTRA fine-tuning).
"""

from __future__ import annotations

from typing import Any, Mapping

from autotransfer.strategies import register_strategy
from autotransfer.strategies.base import Adapted, ModelBundle, Strategy, layer_groups, set_trainable


@register_strategy
class Full(Strategy):
    name = "full"
    hyperparameters = {
        "lr": "learning rate of the backbone",
        "head_lr": "learning rate of the head (defaults to lr)",
        "layer_decay": "layer-wise learning-rate decay factor (1 = none)",
    }
    defaults = {"lr": 3e-5, "head_lr": None, "layer_decay": 1.0}

    def apply(self, bundle: ModelBundle, config: Mapping[str, Any], phase: int = 0) -> Adapted:
        set_trainable(bundle.model.parameters(), True)
        lr = float(self.hp(config, "lr"))
        head_lr = config.get("head_lr") or lr
        groups = [{"params": bundle.params(names), "lr": group_lr}
                  for names, group_lr in layer_groups(bundle, lr, float(self.hp(config, "layer_decay")))]
        groups.append({"params": bundle.params(bundle.head), "lr": head_lr})
        return Adapted(bundle.model, self.only_trainable(groups))
