"""Entity-level scores for token classification, from seqeval (strict IOB2, the CoNLL-2003 definition).

An entity is a maximal ``B-X I-X ...`` span; a predicted entity counts only if its type and
both boundaries equal a gold entity's.  Strict mode also ignores predicted spans that are
not valid IOB2 (an ``I-X`` with no ``B-X`` before it), which the lenient conlleval script
would count as entities; a model trained on IOB2 data rarely emits them.
"""

from __future__ import annotations

import warnings
from functools import lru_cache
from typing import Any, Iterable, Sequence

import numpy as np

#: metrics a token-classification search can select on (all higher is better)
ENTITY_METRICS = ("entity_f1", "entity_precision", "entity_recall", "token_accuracy")


def tag_set(types: Iterable[str]) -> list[str]:
    """The tag vocabulary of entity ``types``: ``O``, then ``B-X``, ``I-X`` per type in the given order.

    Tag ids follow this order, so id 0 is ``O``, odd ids open an entity and even ids continue one:
    :func:`id_tags` reads entities from ids alone, without the names.
    """
    return ["O"] + [f"{p}-{t}" for t in types for p in ("B", "I")]


def id_tags(ids: Iterable[int]) -> list[str]:
    """Tag ids (in :func:`tag_set` order) as IOB2 strings whose types are the type's index: ``[0, 1, 2]`` ->
    ``["O", "B-0", "I-0"]``.  Entity boundaries and types match the named tags', so the scores do too."""
    return ["O" if i == 0 else f"{'B' if i % 2 else 'I'}-{(i - 1) // 2}" for i in ids]


def spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """The entities of one sentence's IOB2 tags as (type, first word, end word exclusive), strict IOB2."""
    from seqeval.scheme import IOB2, Entities

    return [(e.tag, e.start, e.end) for e in Entities([list(tags)], IOB2).entities[0]]


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


@lru_cache(maxsize=1 << 18)
def _row_counts(true_row: bytes, pred_row: bytes) -> tuple[int, int, int, int, int]:
    """(correct entities, predicted, gold, correct tokens, tokens) of one sentence given as int64 id bytes."""
    from seqeval.scheme import IOB2, Entities

    t = np.frombuffer(true_row, dtype=np.int64)
    p = np.frombuffer(pred_row, dtype=np.int64)
    keep = t >= 0  # -1 pads a sentence to its split's widest
    t, p = t[keep], p[keep]
    gold, pred = (set(e.to_tuple()[1:] for e in Entities([id_tags(row)], IOB2).entities[0]) for row in (t, p))
    return len(gold & pred), len(pred), len(gold), int((t == p).sum()), int(keep.sum())


def row_scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """:data:`ENTITY_METRICS` of sentences given as rows of tag ids (``-1`` pads), from per-sentence counts.

    The same micro scores as :func:`entity_scores` (entities never cross sentences, so the totals add up),
    but each distinct sentence is scored once and remembered: a bootstrap that resamples sentences
    a thousand times costs a dictionary lookup per sentence, not a seqeval run.
    """
    y_true = np.ascontiguousarray(y_true, dtype=np.int64)
    y_pred = np.ascontiguousarray(y_pred, dtype=np.int64)
    tp = n_pred = n_gold = same = tokens = 0
    for t, p in zip(y_true, y_pred):
        a, b, c, d, e = _row_counts(t.tobytes(), p.tobytes())
        tp, n_pred, n_gold, same, tokens = tp + a, n_pred + b, n_gold + c, same + d, tokens + e
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * tp / (n_pred + n_gold) if n_pred + n_gold else 0.0
    return {"entity_f1": f1, "entity_precision": precision, "entity_recall": recall,
            "token_accuracy": same / tokens if tokens else 0.0}


def rows_to_tags(rows: np.ndarray, names: Sequence[str], like: np.ndarray) -> list[list[str]]:
    """Rows of tag ids as named tag lists, each cut where ``like`` (the gold rows) is padded."""
    return [[names[int(i)] for i in row[mask]] for row, mask in zip(rows, like >= 0)]
