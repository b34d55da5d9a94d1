"""``linear_probe``: the backbone is frozen; only the new head is fitted.

The head's last linear layer is fitted as a multinomial logistic regression
(scikit-learn, L-BFGS) on the features it sees, computed once in one forward
pass: a convex problem solved to convergence, rather than a few epochs of
gradient steps through the frozen backbone.  Fresh layers before it (a pooler
the checkpoint lacked) stay at their initialisation.  ``C`` is scikit-learn's
inverse L2 strength on the raw features; the default 1.0 is its default, so the
head-only recipe is exactly scikit-learn's default logistic regression.
(Standardising first was tried: on MiniLM-L3's pooled SST-2 features, whose
scale is small, it weakened the regularisation of C = 1 and lost 3 to 7 points.)
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from autotransfer.strategies import register_strategy
from autotransfer.strategies.base import Adapted, ModelBundle, Strategy, final_linear, freeze_all, set_trainable

#: L-BFGS iterations of the fit (scikit-learn's default 100 stops short on a few thousand raw features)
MAX_ITER = 1000


@register_strategy
class LinearProbe(Strategy):
    name = "linear_probe"
    hyperparameters = {"C": "inverse L2 regularisation of the logistic-regression head (scikit-learn's C)"}
    defaults = {"C": 1.0}
    fits_head_on_features = True

    def apply(self, bundle: ModelBundle, config: Mapping[str, Any], phase: int = 0) -> Adapted:
        freeze_all(bundle.model)
        head = bundle.params(bundle.head)
        set_trainable(head, True)  # checkpointed with the trial (a fresh pooler keeps its initialisation)
        return Adapted(bundle.model, [{"params": head, "lr": 0.0}], classifier=final_linear(bundle))

    def fit_head(self, features: np.ndarray, labels: np.ndarray, num_classes: int, config: Mapping[str, Any],
                 threads: int = 1, intercept: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """``intercept=False`` for a classifier without a bias (a decoder's ``score`` layer): the fit has none
        either, so the layer computes exactly the fitted model (the returned bias is then all zeros)."""
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=max(1, threads)), warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # MAX_ITER is far past where accuracy settles
            clf = LogisticRegression(C=float(self.hp(config, "C")), max_iter=MAX_ITER,
                                     fit_intercept=intercept).fit(features, labels)
        coef, intercept = clf.coef_, clf.intercept_
        weight = np.zeros((num_classes, features.shape[1]))
        bias = np.zeros(num_classes)
        classes = clf.classes_.astype(int)
        if len(classes) == 2 and coef.shape[0] == 1:  # binary: logit(p1) = w.x + b, as two softmax logits
            weight[classes[0]], weight[classes[1]] = -coef[0] / 2, coef[0] / 2
            bias[classes[0]], bias[classes[1]] = -intercept[0] / 2, intercept[0] / 2
        else:
            weight[classes], bias[classes] = coef, intercept
            missing = np.setdiff1d(np.arange(num_classes), classes)
            # a class absent from training is never predicted (when the layer has a bias to say so)
            bias[missing] = -1e4 if clf.fit_intercept else 0.0
        return weight, bias
