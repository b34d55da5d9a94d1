"""``lp_ft``: linear probe, then fine-tune everything (Kumar et al., ICLR 2022).

Phase 0 fits the new head as a logistic regression on the frozen backbone's features,
exactly as ``linear_probe`` does (Kumar et al. fit theirs with L-BFGS too); phase 1 starts
from that head and fine-tunes the whole model as ``full`` does, with layer-wise decay.  A
head that already separates the classes keeps the first fine-tuning steps from distorting
the pretrained features, which is where LP-FT's gain over plain fine-tuning comes from.
"""

from __future__ import annotations

from typing import Any, Mapping

from autotransfer.strategies import register_strategy
from autotransfer.strategies.base import Adapted, ModelBundle
from autotransfer.strategies.full import Full
from autotransfer.strategies.linear_probe import LinearProbe


@register_strategy
class LinearProbeThenFineTune(LinearProbe):
    name = "lp_ft"
    hyperparameters = {**LinearProbe.hyperparameters, **Full.hyperparameters}
    defaults = {**LinearProbe.defaults, **Full.defaults}
    fits_head_on_features = False
    fits_head_first = True

    def apply(self, bundle: ModelBundle, config: Mapping[str, Any], phase: int = 0) -> Adapted:
        if phase == 0:
            return super().apply(bundle, config)
        return Full().apply(bundle, config)

    def phase_starts(self, config: Mapping[str, Any], bundle: ModelBundle, steps_per_epoch: int,
                     total_steps: int) -> list[int]:
        return [0]  # fine-tuning takes the whole step budget; the probe is a convex fit before it
