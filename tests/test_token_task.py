"""token-cls without Ray: data in, windows, sentence-level decoding, a head fitted on word features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autotransfer.entities import ENTITY_METRICS
from autotransfer.objective import IGNORE
from autotransfer.tasks import get_task
from autotransfer.training import TrialContext, train
from autotransfer.uncertainty import intervals
from conftest import make_tagged, write_conll

TASK = get_task("token-cls")


class _S:
    val_frac = None
    test_frac = 0.1
    seed = 0
    trust_remote_code = False
    max_length = None

    def __init__(self, data, **kw):
        self.data = data
        self.__dict__.update(kw)


def _prepared(data, backbone, **kw):
    splits = TASK.load_data(_S(data, **kw))
    info = TASK.describe_backbone(str(backbone), _S(data, **kw))
    prepared, stats = TASK.prepare([info], splits, _S(data, **kw))
    return splits, info, prepared[info.name], stats


def test_a_conll_folder_becomes_rows_of_tag_ids_per_sentence(ner_dir):
    splits = TASK.load_data(_S(ner_dir))
    assert splits.label_names == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (240, 60, 60)
    first = make_tagged(240, 1)[0]
    row = splits.train.labels[0]
    assert [splits.label_names[i] for i in row[row >= 0]] == [t for _, t in first]
    assert splits.train.inputs[0] == [w for w, _ in first]
    assert (row[len(first):] == -1).all()  # padding past the sentence
    counts = splits.summary()["splits"]["train"]["class_counts"]
    assert counts["B-PER"] == sum(t == "B-PER" for s in make_tagged(240, 1) for _, t in s)


def test_a_single_file_is_split_by_sentence_with_the_seed(tmp_path):
    path = write_conll(tmp_path / "all.conll", make_tagged(400, 5))
    a = TASK.load_data(_S(path))
    b = TASK.load_data(_S(path))
    assert len(a.validation) == 100 and len(a.test) == 40  # 300 sentences or a quarter; --test-frac 0.1
    assert len(a.train) + len(a.validation) + len(a.test) == 400
    assert a.validation.inputs == b.validation.inputs
    assert TASK.load_data(_S(path, seed=1)).validation.inputs != a.validation.inputs


def test_long_sentences_become_windows_and_every_word_is_scored_once(ner_dir, tiny_tagger):
    splits, _, data, _ = _prepared(ner_dir, tiny_tagger, max_length=8)
    val = data.splits["validation"]
    assert val.windows > val.sentences  # sentences of up to 12 words do not fit 8 sub-tokens
    words = int((splits.validation.labels >= 0).sum())
    assert int((val.tags != IGNORE).sum()) == words == int((val.word >= 0).sum())
    # decoding the gold tags as if a model had predicted them gives the gold rows back, whole sentences
    objective = TASK.objective
    loader = TASK.batches(data, "validation", 4, train=False)
    rows, order = [], []
    for (inputs, labels), idx in zip(loader, loader.batch_sampler):
        assert inputs["input_ids"].shape[1] <= 8
        logits = torch.nn.functional.one_hot(labels["tags"].clamp(min=0), len(splits.label_names)).float()
        pred, true = objective.decode(logits, labels)
        assert (pred == true).all() and len(pred) == len(idx)
        rows.append(true)
        order.extend(idx)
    gold = np.empty_like(splits.validation.labels)
    gold[order] = np.concatenate(rows)
    assert (gold == TASK.labels(data, "validation")).all()
    assert objective.score(gold, gold)["entity_f1"] == 1.0


def test_the_tagger_trains_and_scores_entities(ner_dir, tiny_tagger):
    splits, info, data, _ = _prepared(ner_dir, tiny_tagger)
    ctx = TrialContext(task="token-cls", backbones={info.name: info}, prepared={info.name: data},
                       label_names=splits.label_names, metric="entity_f1", max_epochs=3, evals_per_epoch=1)
    reports = []
    probe = train({"backbone": info.name, "strategy": "linear_probe", "C": 10.0, "batch_size": 16}, ctx,
                  lambda m, c: reports.append(m))
    assert set(ENTITY_METRICS) <= set(probe)
    assert probe["entity_f1"] > 0.5, probe  # word identity is enough to find these names and places
    full = []
    train({"backbone": info.name, "strategy": "full", "lr": 5e-3, "head_lr": 5e-3, "batch_size": 16}, ctx,
          lambda m, c: full.append(m))
    assert full[-1]["val_loss"] < full[0]["val_loss"] and full[-1]["entity_f1"] > 0.5, full


def test_intervals_resample_whole_sentences():
    rng = np.random.default_rng(0)
    gold = np.full((80, 6), -1)
    gold[:, :4] = rng.choice([0, 0, 1, 2, 3], size=(80, 4))
    noisy = gold.copy()
    noisy[:40, 0] = np.where(noisy[:40, 0] == 1, 0, noisy[:40, 0])  # misses some entities in half the sentences
    score = TASK.objective.metric_function("entity_f1")
    found, _ = intervals(gold, {"a": gold, "b": noisy}, "a", score)
    assert found["a"]["interval"] == [1.0, 1.0]
    low, high = found["b"]["interval"]
    assert low < score(gold, noisy) < high <= 1.0


def test_refit_data_joins_train_and_validation_sentence_by_sentence(ner_dir, tiny_tagger):
    splits, _, data, _ = _prepared(ner_dir, tiny_tagger, max_length=8)
    joined = TASK.with_train(data, ("train", "validation"))
    train, val, both = data.splits["train"], data.splits["validation"], joined.splits["train"]
    assert (both.sentences, both.windows) == (train.sentences + val.sentences, train.windows + val.windows)
    # the joined split decodes to the two splits' gold rows, one after the other
    width = both.gold.shape[1]
    pad = lambda g: np.pad(g, ((0, 0), (0, width - g.shape[1])), constant_values=-1)  # noqa: E731
    assert (both.gold == np.concatenate([pad(train.gold), pad(val.gold)])).all()
    loader = TASK.batches(joined, "train", 7, train=False)
    rows = {}
    for (_, labels), idx in zip(loader, loader.batch_sampler):
        logits = torch.nn.functional.one_hot(labels["tags"].clamp(min=0), len(splits.label_names)).float()
        for i, row in zip(idx, TASK.objective.decode(logits, labels)[1]):
            rows[i] = row
    assert (np.stack([rows[i] for i in range(both.sentences)]) == both.gold).all()


def test_backbones_sharing_a_tokenizer_share_one_preparation(ner_dir, tiny_tagger, tmp_path):
    import shutil

    twin = shutil.copytree(tiny_tagger, tmp_path / "twin")
    splits = TASK.load_data(_S(ner_dir))
    infos = [TASK.describe_backbone(str(p), _S(ner_dir)) for p in (tiny_tagger, twin)]
    prepared, stats = TASK.prepare(infos, splits, _S(ner_dir))
    assert (stats.distinct, stats.runs) == (1, 1)
    assert prepared[infos[0].name] is prepared[infos[1].name]


def test_a_decoder_tags_words_too(ner_dir, tiny_gpt2):
    """GPT-2 has a token-classification head in transformers: its byte-level BPE reads pre-split words with a
    prefix space, and the causal tagger learns the names and places (each word's tag is in the word itself,
    which a left-to-right model sees)."""
    splits, info, data, _ = _prepared(ner_dir, tiny_gpt2)
    ctx = TrialContext(task="token-cls", backbones={info.name: info}, prepared={info.name: data},
                       label_names=splits.label_names, metric="entity_f1", max_epochs=3, evals_per_epoch=1)
    bundle = TASK.build(info, splits.label_names, {})
    assert type(bundle.model).__name__ == "GPT2ForTokenClassification" and bundle.num_layers == 2
    full = []
    train({"backbone": info.name, "strategy": "full", "lr": 5e-3, "head_lr": 5e-3, "batch_size": 16}, ctx,
          lambda m, c: full.append(m))
    assert full[-1]["val_loss"] < full[0]["val_loss"] and full[-1]["entity_f1"] > 0.5, full


def test_a_freeze_trial_replays_its_frozen_bottom_on_tagged_windows(ner_dir, tiny_tagger):
    import dataclasses

    splits, info, data, _ = _prepared(ner_dir, tiny_tagger)
    ctx = TrialContext(task="token-cls", backbones={info.name: info}, prepared={info.name: data},
                       label_names=splits.label_names, metric="entity_f1", max_epochs=2, evals_per_epoch=1)
    config = {"backbone": info.name, "strategy": "freeze", "freeze_depth": 1, "lr": 5e-3, "batch_size": 16}
    losses = {}
    for on in (False, True):
        reports = []
        last = train(config, dataclasses.replace(ctx, prefix_cache=on), lambda m, c: reports.append(m))
        assert last["prefix_cache"].startswith("computed") if on else last["prefix_cache"] == "off: turned off", last
        losses[on] = [r["train_loss"] for r in reports]
    assert losses[True] == pytest.approx(losses[False], rel=1e-3, abs=1e-4)  # the same trial, its bottom replayed
