"""LogME from the paper, checked against the evidence computed directly; k-NN accuracy; Spearman."""

from __future__ import annotations

import math

import numpy as np
import pytest

from autotransfer.prerank import class_evidence, knn_accuracy, logme, spearman


def _direct_evidence(f, y, alpha, beta):
    """The log evidence of y under the Bayesian linear model, with explicit matrices (no eigenbasis)."""
    n, d = f.shape
    a = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.solve(a, f.T @ y)
    return (d / 2 * math.log(alpha) + n / 2 * math.log(beta) - n / 2 * math.log(2 * math.pi)
            - beta / 2 * np.sum((f @ m - y) ** 2) - alpha / 2 * m @ m - 0.5 * np.linalg.slogdet(a)[1])


def test_logme_is_the_maximised_evidence_computed_by_hand():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(40, 5))
    y = (f[:, 0] + 0.5 * rng.normal(size=40) > 0).astype(float)
    s, v = np.linalg.eigh(f.T @ f)
    found = class_evidence(f, y, s, v)
    assert found.value * 40 == pytest.approx(_direct_evidence(f, y, found.alpha, found.beta), rel=1e-9)
    # a maximum: moving either precision away lowers the evidence
    for da, db in ((1.5, 1), (1 / 1.5, 1), (1, 1.5), (1, 1 / 1.5)):
        assert _direct_evidence(f, y, found.alpha * da, found.beta * db) < found.value * 40
    labels = y.astype(int)
    expected = np.mean([class_evidence(f, (labels == c).astype(float), s, v).value for c in (0, 1)])
    assert logme(f, labels) == pytest.approx(expected)


def test_features_that_separate_the_classes_score_higher_than_random_ones():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, size=300)
    centers = rng.normal(size=(3, 16)) * 3
    good = centers[labels] + rng.normal(size=(300, 16))
    noise = rng.normal(size=(300, 16))
    assert logme(good, labels) > logme(noise, labels)
    assert knn_accuracy(good, labels) > 0.9 > 0.5 > knn_accuracy(noise, labels)


def test_spearman_needs_three_backbones():
    assert spearman({"a": 1.0, "b": 2.0}, {"a": 0.5, "b": 0.7}) is None
    assert spearman({"a": 1.0, "b": 2.0, "c": 3.0}, {"a": 0.5, "b": 0.7, "c": 0.9}) == pytest.approx(1.0)
    assert spearman({"a": 1.0, "b": 2.0, "c": 3.0}, {"a": 0.9, "b": 0.7, "c": 0.5}) == pytest.approx(-1.0)


def test_a_text_encoder_is_ranked_on_its_token_states_averaged_over_real_tokens(text_ctx, tiny_gpt2, sentiment_dir,
                                                                               ner_dir, tiny_tagger):
    """The pre-rank's rows for a BERT-style encoder are its last-layer token states averaged over the real
    (unpadded) tokens, from the same forward pass as the linear probe's pooler features; a decoder's and a
    tagger's pre-rank keeps what their classifier reads (the last real token; every token)."""
    import numpy as np
    import torch

    from autotransfer.features import frozen_features
    from autotransfer.tables import load_text_splits
    from autotransfer.tasks import get_task
    from autotransfer.training import build_trial_model

    task = get_task("text-cls")
    name = next(iter(text_ctx.backbones))
    info, prepared = text_ctx.backbones[name], text_ctx.prepared[name]
    found = frozen_features(task, info, prepared, text_ctx.label_names, seed=0)
    assert found.rank_x is not None and found.rank_x.shape == (len(found.y), found.x.shape[1])
    assert np.array_equal(found.ranking_rows, found.rank_x)

    torch.manual_seed(0)
    _, adapted = build_trial_model(task, info, text_ctx.label_names, {"backbone": name, "strategy": "linear_probe"})
    inputs, _ = next(iter(task.batches(prepared, "train", 64, train=False)))
    adapted.model.eval()
    with torch.no_grad():
        states = adapted.model.base_model(**inputs).last_hidden_state
    mask = inputs["attention_mask"].unsqueeze(-1).float()
    assert (mask == 0).any()  # padded rows in the batch: the mean must skip them
    expected = ((states * mask).sum(1) / mask.sum(1)).numpy()
    np.testing.assert_allclose(found.rank_x[:len(expected)], expected, atol=1e-5)
    assert not np.allclose(found.rank_x[:len(expected)], found.x[:len(expected)], atol=1e-2)  # not the pooler's

    class Settings:
        trust_remote_code, max_length, val_frac, test_frac, seed = False, None, None, 0.1, 0

        def __init__(self, data):
            self.data = data

    # a decoder and a tagger: what their classifier reads (the last real token; every tagged token) is scored
    for task_name, folder, data in (("text-cls", tiny_gpt2, sentiment_dir), ("token-cls", tiny_tagger, ner_dir)):
        other = get_task(task_name)
        splits = load_text_splits(data) if task_name == "text-cls" else other.load_data(Settings(data))
        info = other.describe_backbone(str(folder), Settings(data))
        prepared, _ = other.prepare([info], splits, Settings(data))
        found = frozen_features(other, info, prepared[info.name], splits.label_names, seed=0)
        assert found.rank_x is None and found.ranking_rows is found.x, task_name
