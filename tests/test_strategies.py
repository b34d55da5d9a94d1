"""Strategies freeze, wrap and group exactly what they promise, on two architectures."""

from __future__ import annotations

import pytest
import torch

from autotransfer.strategies import count_parameters, get_strategy, list_strategies, register_strategy
from autotransfer.strategies.base import Strategy
from autotransfer.tasks import get_task

TASK = get_task("text-cls")


class _S:
    trust_remote_code = False


@pytest.fixture(params=["tiny_bert", "tiny_distilbert"])
def backbone(request):
    return TASK.describe_backbone(str(request.getfixturevalue(request.param)), _S())


def _bundle(backbone):
    return TASK.build(backbone, ["negative", "positive"], {})


def _trainable_names(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_registry_lists_the_four_strategies():
    assert set(list_strategies()) >= {"linear_probe", "freeze", "full", "lora"}
    with pytest.raises(ValueError, match="already registered"):
        @register_strategy
        class Impostor(Strategy):
            name = "full"


def test_linear_probe_trains_only_the_head(backbone):
    bundle = _bundle(backbone)
    adapted = get_strategy("linear_probe").apply(bundle, {"C": 1.0})
    assert _trainable_names(adapted.model) == set(bundle.head)
    # the head's last linear layer is what the logistic regression is fitted into
    assert adapted.classifier is not None
    assert {f"{n}.weight" for n, m in adapted.model.named_modules() if m is adapted.classifier} <= set(bundle.head)
    assert adapted.classifier.out_features == 2


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_freeze_depth_freezes_stem_and_bottom_blocks(backbone, depth):
    bundle = _bundle(backbone)
    adapted = get_strategy("freeze").apply(bundle, {"freeze_depth": depth, "lr": 1e-3})
    trainable = _trainable_names(adapted.model)
    assert not trainable & set(bundle.stem)
    for i, block in enumerate(bundle.blocks):
        assert (set(block) <= trainable) == (i >= depth)
        assert not (set(block) & trainable) or i >= depth
    assert set(bundle.head) <= trainable and set(bundle.tail) <= trainable


def test_full_trains_everything_with_layer_decay(backbone):
    bundle = _bundle(backbone)
    adapted = get_strategy("full").apply(bundle, {"lr": 1e-3, "head_lr": 1e-2, "layer_decay": 0.5})
    t, total = count_parameters(adapted.model)
    assert t == total
    lrs = [g["lr"] for g in adapted.param_groups]
    assert lrs[-1] == 1e-2  # head
    assert lrs[:-1] == sorted(lrs[:-1])  # geometric growth from stem to top block
    assert lrs[0] < lrs[-2]


def test_lora_trains_fewer_parameters_and_merges_to_the_same_function(backbone):
    full_t, _ = count_parameters(get_strategy("full").apply(_bundle(backbone), {}).model)
    strategy = get_strategy("lora")
    adapted = strategy.apply(_bundle(backbone), {"lora_r": 4, "lr": 1e-3})
    lora_t, _ = count_parameters(adapted.model)
    assert 0 < lora_t < full_t / 2
    # make the adapters non-trivial, then check the merged plain model computes the same thing
    with torch.no_grad():
        for n, p in adapted.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    adapted.model.eval()
    x = {"input_ids": torch.tensor([[2, 10, 11, 12, 3]]), "attention_mask": torch.ones(1, 5, dtype=torch.long)}
    before = adapted.model(**x).logits
    merged = strategy.finalize(adapted.model)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(merged(**x).logits, before, atol=1e-5, rtol=1e-4)


def test_gradual_unfreeze_thaws_one_group_per_phase_from_the_top(backbone):
    strategy = get_strategy("gradual_unfreeze")
    bundle = _bundle(backbone)
    config = {"lr": 1e-3, "head_lr": 1e-2, "layer_decay": 0.5, "unfreeze_every": 1.0}
    groups = [names for names in (bundle.stem, *bundle.blocks, bundle.tail) if names]
    assert strategy.phase_starts(config, bundle, 10, 1000) == [10 * k for k in range(1, len(groups) + 1)]
    assert strategy.phase_starts({**config, "unfreeze_every": 0.5}, bundle, 10, 12) == [5, 10]  # within budget
    previous = set()
    for phase in range(len(groups) + 2):  # past the last group nothing more thaws
        adapted = strategy.apply(bundle, config, phase)
        trainable = _trainable_names(adapted.model)
        thawed = [n for names in groups[max(0, len(groups) - phase):] for n in names] if phase else []
        assert trainable == set(bundle.head) | set(thawed)
        assert previous <= trainable  # once thawed, a group keeps training
        previous = trainable
        rates = sorted({g["lr"] for g in adapted.param_groups})
        top = min(phase, len(groups))
        assert rates == sorted({1e-2} | {1e-3 * 0.5 ** k for k in range(top)})  # discriminative rates


def test_lp_ft_probes_then_fine_tunes_everything(backbone):
    strategy = get_strategy("lp_ft")
    bundle = _bundle(backbone)
    assert strategy.fits_head_first and not strategy.fits_head_on_features
    assert strategy.phase_starts({}, bundle, 10, 100) == [0]
    probe = strategy.apply(bundle, {"C": 1.0}, 0)
    assert _trainable_names(probe.model) == set(bundle.head) and probe.classifier is not None
    full = strategy.apply(bundle, {"lr": 1e-3, "layer_decay": 1.0}, 1)
    assert count_parameters(full.model)[0] == count_parameters(full.model)[1]


def test_bitfit_trains_only_the_backbone_s_biases_and_the_head(backbone):
    bundle = _bundle(backbone)
    adapted = get_strategy("bitfit").apply(bundle, {"lr": 1e-3, "head_lr": 1e-2})
    trainable = _trainable_names(adapted.model)
    body = {n for names in (bundle.stem, *bundle.blocks, bundle.tail) for n in names}
    assert trainable == set(bundle.head) | {n for n in body if n.endswith(".bias")}
    assert any("LayerNorm.bias" in n or "layer_norm.bias" in n for n in trainable)  # normalisation shifts too
    assert not any(n.endswith(".weight") for n in trainable - set(bundle.head))
    trained, total = count_parameters(adapted.model)
    assert trained < 0.1 * total
    assert sorted(g["lr"] for g in adapted.param_groups) == [1e-3, 1e-2]

