"""``gradual_unfreeze``: unfreeze the backbone one layer group at a time, from the top (ULMFiT).

Phase 0 trains the head alone; every ``unfreeze_every`` epochs (a fraction allowed) the
next group down joins (the tail, then the blocks from the top, then the stem), each at its
own rate: ``lr`` times ``layer_decay`` per group below the top (discriminative learning
rates).  Howard and Ruder (2018) unfreeze one group per epoch.  The learning-rate schedule
runs once over the whole trial; each phase continues it.
"""

from __future__ import annotations

from typing import Any, Mapping

from autotransfer.strategies import register_strategy
from autotransfer.strategies.base import Adapted, ModelBundle, Strategy, layer_groups, set_trainable


@register_strategy
class GradualUnfreeze(Strategy):
    name = "gradual_unfreeze"
    hyperparameters = {
        "lr": "learning rate of the top backbone group",
        "head_lr": "learning rate of the head (defaults to lr)",
        "layer_decay": "learning-rate factor per group further down (1 = none)",
        "unfreeze_every": "epochs between unfreezing one more group (0.5 = twice an epoch)",
    }
    defaults = {"lr": 5e-5, "head_lr": None, "layer_decay": 0.8, "unfreeze_every": 1.0}

    def apply(self, bundle: ModelBundle, config: Mapping[str, Any], phase: int = 0) -> Adapted:
        lr = float(self.hp(config, "lr"))
        head_lr = config.get("head_lr") or lr
        groups = layer_groups(bundle, lr, float(self.hp(config, "layer_decay")))
        thawed = groups[max(0, len(groups) - phase):] if phase > 0 else []
        set_trainable(bundle.model.parameters(), False)
        set_trainable(bundle.params(bundle.head), True)
        for names, _ in thawed:
            set_trainable(bundle.params(names), True)
        param_groups = [{"params": bundle.params(names), "lr": group_lr} for names, group_lr in thawed]
        param_groups.append({"params": bundle.params(bundle.head), "lr": head_lr})
        return Adapted(bundle.model, self.only_trainable(param_groups))

    def phase_starts(self, config: Mapping[str, Any], bundle: ModelBundle, steps_per_epoch: int,
                     total_steps: int) -> list[int]:
        """One more group every ``unfreeze_every`` epochs until every group trains."""
        every = max(1, round(float(self.hp(config, "unfreeze_every")) * steps_per_epoch))
        groups = len(layer_groups(bundle, 1.0, 1.0))
        return [k * every for k in range(1, groups + 1) if k * every < total_steps]
