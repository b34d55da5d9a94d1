"""Entity F1 equals the CoNLL definition on hand-checked cases (exact type and boundaries)."""

from __future__ import annotations

import pytest

from autotransfer.entities import entity_scores, per_type

GOLD = [["B-PER", "I-PER", "O", "B-LOC", "O"],
        ["B-ORG", "I-ORG", "I-ORG", "O", "B-PER"],
        ["O", "B-MISC", "O"]]
PRED = [["B-PER", "I-PER", "O", "B-ORG", "O"],   # PER right; LOC predicted as ORG: one false positive, one miss
        ["B-ORG", "I-ORG", "O", "O", "B-PER"],     # ORG cut short: wrong boundary (FP + FN); PER right
        ["O", "I-MISC", "O"]]                      # not valid IOB2: strict matching does not count it


def test_micro_scores_by_hand():
    # gold entities: PER, LOC, ORG, PER, MISC = 5; predicted (valid IOB2): PER, ORG, ORG(short), PER = 4
    # correct: PER, PER = 2 -> precision 2/4, recall 2/5, F1 = 2PR/(P+R) = 4/9
    s = entity_scores(GOLD, PRED)
    assert s["entity_precision"] == pytest.approx(2 / 4)
    assert s["entity_recall"] == pytest.approx(2 / 5)
    assert s["entity_f1"] == pytest.approx(4 / 9)
    assert s["token_accuracy"] == pytest.approx(10 / 13)  # 13 tokens, 3 differ


def test_per_type_by_hand():
    t = per_type(GOLD, PRED)
    assert t["PER"] == {"precision": 1.0, "recall": 1.0, "f1-score": 1.0, "support": 2}
    assert t["LOC"]["recall"] == 0.0 and t["LOC"]["support"] == 1
    assert t["ORG"]["precision"] == 0.0 and t["ORG"]["support"] == 1  # two predicted ORG spans, neither exact
    assert t["MISC"]["recall"] == 0.0


def test_perfect_and_mismatched_inputs():
    assert entity_scores(GOLD, GOLD)["entity_f1"] == 1.0
    with pytest.raises(ValueError, match="same sentences"):
        entity_scores(GOLD, PRED[:2])


def test_scores_from_rows_of_ids_equal_seqeval_on_the_named_tags():
    import numpy as np

    from autotransfer.entities import id_tags, row_scores, tag_set

    assert tag_set(["LOC", "PER"]) == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    assert id_tags([0, 1, 2, 3, 4]) == ["O", "B-0", "I-0", "B-1", "I-1"]
    rng = np.random.default_rng(0)
    gold = np.full((200, 15), -1)
    pred = gold.copy()
    for i in range(200):
        n = int(rng.integers(1, 16))
        gold[i, :n] = rng.integers(0, 5, n)
        pred[i, :n] = np.where(rng.random(n) < 0.7, gold[i, :n], rng.integers(0, 5, n))  # invalid I- starts too
    names = tag_set(["LOC", "PER"])
    named = lambda rows: [[names[t] for t in row[g >= 0]] for row, g in zip(rows, gold)]  # noqa: E731
    expected = entity_scores(named(gold), named(pred))
    assert row_scores(gold, pred) == pytest.approx(expected, abs=1e-12)
    assert 0.3 < expected["entity_f1"] < 0.9  # a real mix of hits and misses
