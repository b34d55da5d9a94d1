"""Entity-level scores for token classification, from seqeval (strict IOB2, the CoNLL-2003 definition).

An entity is a maximal ``B-X I-X ...`` span; a predicted entity counts only if its type and
both boundaries equal a gold entity's.  Strict mode also ignores predicted spans that are
not valid IOB2 (an ``I-X`` with no ``B-X`` before it), which the lenient conlleval script
would count as entities; a model trained on IOB2 data rarely emits them.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

#: metrics a token-classification search can select on (all higher is better)
ENTITY_METRICS = ("entity_f1", "entity_precision", "entity_recall", "token_accuracy")


def entity_scores(y_true: Sequence[Sequence[str]], y_pred: Sequence[Sequence[str]]) -> dict[str, float]:
    """Micro entity F1 / precision / recall (strict IOB2) and token accuracy over sentences of tags."""
    from seqeval.metrics import f1_score, precision_score, recall_score
    from seqeval.scheme import IOB2

    _check(y_true, y_pred)
    kw: dict[str, Any] = dict(mode="strict", scheme=IOB2, average="micro", zero_division=0)
    tokens = sum(len(t) for t in y_true)
    same = sum(a == b for t, p in zip(y_true, y_pred) for a, b in zip(t, p))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seqeval warns on types never predicted; those score 0 by zero_division
        return {"entity_f1": float(f1_score(y_true, y_pred, **kw)),
                "entity_precision": float(precision_score(y_true, y_pred, **kw)),
                "entity_recall": float(recall_score(y_true, y_pred, **kw)),
                "token_accuracy": same / tokens if tokens else 0.0}


def per_type(y_true: Sequence[Sequence[str]], y_pred: Sequence[Sequence[str]]) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support (gold entities) per entity type, strict IOB2."""
    from seqeval.metrics import classification_report
    from seqeval.scheme import IOB2

    _check(y_true, y_pred)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = classification_report(y_true, y_pred, mode="strict", scheme=IOB2, output_dict=True,
                                       zero_division=0)
    return {name: {k: float(v) if k != "support" else int(v) for k, v in scores.items()}
            for name, scores in report.items() if not name.endswith(" avg")}


def _check(y_true: Sequence[Sequence[str]], y_pred: Sequence[Sequence[str]]) -> None:
    if len(y_true) != len(y_pred) or any(len(t) != len(p) for t, p in zip(y_true, y_pred)):
        raise ValueError("gold and predicted tags must have the same sentences and lengths")
