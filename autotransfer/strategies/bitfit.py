"""``bitfit``: only the backbone's bias terms train, and the new head (Ben Zaken et al., ACL 2022).

Every parameter named ``*.bias`` in the backbone (attention, feed-forward, LayerNorm and
BatchNorm shifts) trains at ``lr``; weights stay frozen.  About 0.1% of a transformer's
parameters: close to full fine-tuning on small data, at a fraction of the optimizer state,
and a favourite for small data sets in AutoGluon.  BatchNorm layers whose shift trains
keep updating their statistics, as under full fine-tuning.
"""

from __future__ import annotations

from typing import Any, Mapping

from autotransfer.strategies import register_strategy
from autotransfer.strategies.base import Adapted, ModelBundle, Strategy, set_trainable


def is_bias(name: str) -> bool:
    return name.rsplit(".", 1)[-1] == "bias"


@register_strategy
class BitFit(Strategy):
    name = "bitfit"
    hyperparameters = {
        "lr": "learning rate of the backbone's bias terms (BitFit uses larger rates than full fine-tuning)",
        "head_lr": "learning rate of the head (defaults to lr)",
    }
    defaults = {"lr": 5e-4, "head_lr": None}

    def apply(self, bundle: ModelBundle, config: Mapping[str, Any], phase: int = 0) -> Adapted:
        lr = float(self.hp(config, "lr"))
        head_lr = config.get("head_lr") or lr
        backbone = [n for names in (bundle.stem, *bundle.blocks, bundle.tail) for n in names]
        biases = [n for n in backbone if is_bias(n)]
        set_trainable(bundle.model.parameters(), False)
        set_trainable(bundle.params(biases), True)
        set_trainable(bundle.params(bundle.head), True)
        groups = [{"params": bundle.params(biases), "lr": lr},
                  {"params": bundle.params(bundle.head), "lr": head_lr}]
        return Adapted(bundle.model, self.only_trainable(groups))
