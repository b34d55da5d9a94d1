"""Decoder-only backbones (GPT-2 family) through the same text-cls path as encoders."""

from __future__ import annotations


import pytest
import torch

import autotransfer
from autotransfer.results import COMPLETED, STOPPED
from autotransfer.strategies import count_parameters, get_strategy
from autotransfer.tasks import get_task

TASK = get_task("text-cls")
TEXTS = ["the film was great", "really awful plot with a very boring cast and a weak ending overall", "fun"]


class _S:
    trust_remote_code = False
    max_length = None


def _bundle(tiny_gpt2):
    return TASK.build(TASK.describe_backbone(str(tiny_gpt2), _S()), ["negative", "positive"], {})


def test_a_decoder_gets_layer_groups_lora_targets_and_a_pad_token(tiny_gpt2):
    bundle = _bundle(tiny_gpt2)
    assert bundle.num_layers == 2 and bundle.head == ["score.weight"]
    assert bundle.lora_targets == ["c_attn"]  # peft's table for gpt2
    assert bundle.model.config.pad_token_id == bundle.model.config.eos_token_id is not None
    lora = get_strategy("lora").apply(bundle, {"lora_r": 4})
    trainable = {n for n, p in lora.model.named_parameters() if p.requires_grad}
    assert any("c_attn.lora_A" in n for n in trainable) and any(n.endswith("score.modules_to_save.default.weight")
                                                                 for n in trainable)
    trained, total = count_parameters(lora.model)
    assert trained < total / 10


@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_batches_pool_each_row_s_last_real_token(tiny_gpt2, side):
    """A row's logits do not depend on how much padding its batch gave it, on either side (transformers#35909).

    GPT-2's positions are absolute: under left padding they are counted from the first real token (as
    generation does); the search and its exports pad on the right, where they need nothing."""
    from transformers import AutoTokenizer

    model = _bundle(tiny_gpt2).model.eval()
    tok = AutoTokenizer.from_pretrained(tiny_gpt2)
    tok.pad_token, tok.padding_side = tok.eos_token, side
    with torch.no_grad():
        alone = torch.cat([model(**tok([t], return_tensors="pt")).logits for t in TEXTS])
        enc = tok(TEXTS, return_tensors="pt", padding=True)
        positions = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        batched = model(**enc, position_ids=positions).logits
    assert (enc["attention_mask"] == 0).any()
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-4)


def test_the_search_s_own_batches_pool_like_unpadded_rows(tiny_gpt2, sentiment_dir):
    """The prepared data pads with the token the model's config names; its batches score like single rows."""
    from autotransfer.tables import load_text_splits

    info = TASK.describe_backbone(str(tiny_gpt2), _S())
    prepared, _ = TASK.prepare([info], load_text_splits(sentiment_dir), _S())
    data = prepared[info.name]
    model = _bundle(tiny_gpt2).model.eval()
    assert data.pad_id == model.config.pad_token_id
    inputs, _ = next(iter(TASK.batches(data, "validation", 8, train=True, seed=0)))
    assert (inputs["attention_mask"] == 0).any()  # rows of different lengths: padded on the right
    with torch.no_grad():
        batched = model(**inputs).logits
        alone = torch.cat([model(input_ids=ids[m.bool()][None]).logits
                           for ids, m in zip(inputs["input_ids"], inputs["attention_mask"])])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-4)


def _decoder_ctx(tiny_gpt2, text_ctx, sentiment_dir):
    import dataclasses

    from autotransfer.tables import load_text_splits

    info = TASK.describe_backbone(str(tiny_gpt2), _S())
    prepared, _ = TASK.prepare([info], load_text_splits(sentiment_dir), _S())
    return info, dataclasses.replace(text_ctx, backbones={info.name: info}, prepared=prepared, max_epochs=1)


def test_a_linear_probe_fits_a_decoder_s_bias_free_score_layer(tiny_gpt2, text_ctx, sentiment_dir):
    """GPT-2's and Llama's ``score`` layer has no bias: the probe's logistic regression is fitted without an
    intercept, so the layer computes exactly what was fitted."""
    from autotransfer.training import train

    info, ctx = _decoder_ctx(tiny_gpt2, text_ctx, sentiment_dir)
    reports = []
    train({"backbone": info.name, "strategy": "linear_probe", "C": 1.0, "batch_size": 16}, ctx,
          lambda metrics, checkpoint_dir: reports.append(metrics))
    assert len(reports) == 1 and reports[0]["trainable_params"] > 0
    assert 0.0 < reports[0]["accuracy"] <= 1.0


def test_an_exported_decoder_predicts_batches_with_a_pipeline(tiny_gpt2, text_ctx, sentiment_dir, tmp_path):
    from pathlib import Path

    from transformers import pipeline

    from autotransfer.export import export_best
    from autotransfer.results import TrialRecord
    from autotransfer.training import train

    info, ctx = _decoder_ctx(tiny_gpt2, text_ctx, sentiment_dir)
    ckpt = tmp_path / "ckpt"

    def keep(metrics, checkpoint_dir):
        ckpt.mkdir(exist_ok=True)
        for p in Path(checkpoint_dir).iterdir():
            (ckpt / p.name).write_bytes(p.read_bytes())

    config = {"backbone": info.name, "strategy": "lora", "lr": 5e-3, "lora_r": 4, "batch_size": 16}
    train(config, ctx, keep)
    record = TrialRecord(trial_id="gpt2", backbone=info.name, strategy="lora", params=config, status=COMPLETED,
                         iterations=2, epochs=1, best_metric=0.5, best_epoch=None, wall_time_s=1.0,
                         trainable_params=None, total_params=None, checkpoint=str(ckpt))
    export_best(record, ctx, tmp_path / "best")
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(tmp_path / "best")
    assert saved.pad_token == "<|endoftext|>" and saved.padding_side == "right"
    clf = pipeline("text-classification", model=str(tmp_path / "best"), device=-1)
    preds = clf(TEXTS, batch_size=3)
    assert len(preds) == 3 and {p["label"] for p in preds} <= {"negative", "positive"}
    one_by_one = [clf(t)[0]["score"] for t in TEXTS]
    assert [p["score"] for p in preds] == pytest.approx(one_by_one, abs=1e-5)  # batching changed nothing


@pytest.mark.e2e
def test_a_search_mixes_an_encoder_and_a_decoder(ray_session, sentiment_dir, tiny_bert, tiny_gpt2, tmp_path):
    space = tmp_path / "mixed.yaml"
    space.write_text(f"""\
task: text-cls
backbones: ["{tiny_bert}", "{tiny_gpt2}"]
params:
  batch_size: [16]
strategies:
  linear_probe: {{}}
  full:
    lr: {{distribution: loguniform, low: 1.0e-3, high: 5.0e-3}}
  lora:
    lr: {{distribution: loguniform, low: 2.0e-3, high: 1.0e-2}}
    lora_r: [4]
""")
    result = autotransfer.search(task="text-cls", data=sentiment_dir, space=space, num_samples=4, max_epochs=2,
                                 evals_per_epoch=1, min_steps=0, seed=0, dashboard=False, output=tmp_path / "run",
                                 baseline=False)
    assert {r.backbone for r in result.records} == {str(tiny_bert), str(tiny_gpt2)}
    assert all(r.status in (COMPLETED, STOPPED) for r in result.records), [r.error for r in result.records]
    decoder = [r for r in result.records if r.backbone == str(tiny_gpt2)]
    assert decoder and max(r.best_metric for r in decoder) > 0.6  # the cue words are learnable through a decoder
