"""``freeze``: the stem (embeddings) and the bottom ``freeze_depth`` blocks are frozen.

Depth 0 freezes only the stem; depth ``num_layers`` freezes every block, leaving the
tail (pooler, final norm) and the head to train.  The frozen part runs in eval mode (no dropout, BatchNorm
statistics kept): a fixed feature extractor, whose output a trial computes once rather than every epoch
(:mod:`autotransfer.prefix_cache`).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from autotransfer.strategies import register_strategy
from autotransfer.strategies.base import Adapted, ModelBundle, Strategy, set_trainable


@register_strategy
class Freeze(Strategy):
    name = "freeze"
    hyperparameters = {
        "freeze_depth": "number of bottom blocks frozen (0 to the backbone's num_layers)",
        "lr": "learning rate of the unfrozen backbone blocks",
        "head_lr": "learning rate of the head (defaults to lr)",
    }
    defaults = {"freeze_depth": None, "lr": 5e-5, "head_lr": None}

    def apply(self, bundle: ModelBundle, config: Mapping[str, Any], phase: int = 0) -> Adapted:
        depth = int(config.get("freeze_depth") or 0)
        depth = max(0, min(depth, bundle.num_layers))
        lr = float(self.hp(config, "lr"))
        head_lr = config.get("head_lr") or lr
        frozen = list(bundle.stem) + [n for block in bundle.blocks[:depth] for n in block]
        trainable = [n for block in bundle.blocks[depth:] for n in block] + list(bundle.tail)
        set_trainable(bundle.model.parameters(), True)
        set_trainable(bundle.params(frozen), False)
        groups = [{"params": bundle.params(trainable), "lr": lr},
                  {"params": bundle.params(bundle.head), "lr": head_lr}]
        return Adapted(bundle.model, self.only_trainable(groups))

    def frozen_prefix(self, config: Mapping[str, Any], bundle: ModelBundle) -> Optional[int]:
        return max(0, min(int(config.get("freeze_depth") or 0), bundle.num_layers))
