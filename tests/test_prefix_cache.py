"""A ``freeze`` trial's frozen bottom, computed once and replayed (autotransfer.prefix_cache)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from autotransfer import prefix_cache
from autotransfer.training import train


@pytest.fixture(scope="module")
def ctx(text_ctx):
    return dataclasses.replace(text_ctx, max_epochs=3)


def _run(ctx, config):
    reports = []
    last = train(config, ctx, lambda m, c: reports.append(m))
    return last, [r["accuracy"] for r in reports], [r["train_loss"] for r in reports]


@pytest.mark.parametrize("depth", [1, 2])  # the tiny BERT has 2 blocks: 2 freezes them all
def test_a_replayed_freeze_trial_trains_as_the_model_itself_and_computes_its_bottom_once(ctx, monkeypatch, depth):
    backbone = next(iter(ctx.backbones))
    # lr 1e-2: the tiny random model learns clearly within 3 epochs at it (at 3e-3 it sat at 0.46-0.60 with random
    # batches, so the learning check below hung on the batch order)
    config = {"backbone": backbone, "strategy": "freeze", "freeze_depth": depth, "lr": 1e-2, "batch_size": 16}
    calls = []
    real = prefix_cache.compute_rows
    monkeypatch.setattr(prefix_cache, "compute_rows",
                        lambda *a, **k: calls.append(k.get("split", "train")) or real(*a, **k))
    plain, plain_acc, plain_loss = _run(dataclasses.replace(ctx, prefix_cache=False), config)
    assert plain["prefix_cache"] == "off: turned off" and calls == []

    shared = dataclasses.replace(ctx, search_id=f"search-{depth}")
    first, first_acc, first_loss = _run(shared, config)
    second, second_acc, _ = _run(shared, config)
    assert first["prefix_cache"].startswith("computed") and second["prefix_cache"] == "reused"
    assert calls == ["train", "validation"]  # one pass over each split for both trials
    # the same batches, the same frozen features (eval mode both ways), the same dropout draws above them:
    # the same trial up to float noise
    assert first_loss == pytest.approx(plain_loss, rel=1e-3, abs=1e-4)
    assert first_acc == pytest.approx(plain_acc, abs=1 / 80) and second_acc == first_acc
    if depth == 1:  # and it learns (chance is 0.5; with both random blocks frozen, only the head trains)
        assert max(first_acc) > 0.6


def test_the_frozen_bottom_runs_in_eval_mode_while_the_rest_trains(ctx):
    from autotransfer.tasks import get_task
    from autotransfer.training import build_trial_model, train_mode

    backbone = ctx.backbones[next(iter(ctx.backbones))]
    config = {"backbone": backbone.name, "strategy": "freeze", "freeze_depth": 1}
    _, adapted = build_trial_model(get_task("text-cls"), backbone, ctx.label_names, config)
    modules, loose = prefix_cache.prefix_modules(adapted.model, adapted.bundle, 1)
    names = [n for n, _ in modules]
    assert loose == [] and names == ["bert.embeddings", "bert.encoder.layer.0"]
    prefix_cache.mark_frozen(modules)
    train_mode(adapted.model)
    assert not adapted.model.bert.embeddings.training and not adapted.model.bert.encoder.layer[0].training
    assert adapted.model.bert.encoder.layer[1].training and adapted.model.classifier.training


def test_a_replay_that_does_not_reproduce_the_model_is_dropped_and_the_trial_goes_on(ctx, monkeypatch):
    backbone = next(iter(ctx.backbones))
    config = {"backbone": backbone, "strategy": "freeze", "freeze_depth": 1, "lr": 3e-3, "batch_size": 16}
    real = prefix_cache.compute_rows

    def corrupted(*a, **k):
        found = real(*a, **k)
        found.rows = [r + 1.0 for r in found.rows]  # not what the frozen layers compute
        return found

    monkeypatch.setattr(prefix_cache, "compute_rows", corrupted)
    last, _, _ = _run(ctx, config)
    assert last["prefix_cache"].startswith("off: replayed logits differ")
    assert last["step"] > 0


def test_evaluations_replay_the_frozen_bottom_too(ctx, monkeypatch):
    from autotransfer import training

    config = {"backbone": next(iter(ctx.backbones)), "strategy": "freeze", "freeze_depth": 2, "lr": 3e-3,
              "batch_size": 16}
    ran = []  # per evaluation: how often the first frozen block's attention ran
    real = training.evaluate

    def counting(model, *a, **k):
        seen = []
        hook = model.bert.encoder.layer[0].attention.register_forward_hook(lambda *_: seen.append(1))
        try:
            return real(model, *a, **k)
        finally:
            hook.remove()
            ran.append(len(seen))

    monkeypatch.setattr(training, "evaluate", counting)
    accuracies = {}
    for on in (False, True):
        ran.clear()
        last, accuracies[on], _ = _run(dataclasses.replace(ctx, prefix_cache=on, search_id="evaluations"), config)
        if on:  # the first evaluation checks its first batch against the model; after that, nothing below runs
            assert last["prefix_cache"].startswith("computed") and "off" not in last["prefix_cache"]
            assert ran[0] == 1 and set(ran[1:]) == {0} and len(ran) > 2
        else:
            assert min(ran) >= 2  # every validation batch (80 rows, 32 a batch)
    assert accuracies[True] == accuracies[False]


def test_a_validation_replay_that_does_not_reproduce_the_model_is_dropped_alone(ctx, monkeypatch):
    config = {"backbone": next(iter(ctx.backbones)), "strategy": "freeze", "freeze_depth": 1, "lr": 3e-3,
              "batch_size": 16}
    plain, plain_acc, _ = _run(dataclasses.replace(ctx, prefix_cache=False), config)
    real = prefix_cache.compute_rows

    def corrupted(*a, **k):
        found = real(*a, **k)
        if k.get("split") == "validation":
            found.rows = [r + 1.0 for r in found.rows]
        return found

    monkeypatch.setattr(prefix_cache, "compute_rows", corrupted)
    last, acc, _ = _run(ctx, config)
    assert last["prefix_cache"].startswith("computed")  # training still replays
    assert "; validation: off: replayed logits differ" in last["prefix_cache"]
    assert acc == pytest.approx(plain_acc, abs=1 / 80)  # scored by the model itself, not the corrupted rows


def test_over_the_size_limit_the_trial_computes_its_bottom_as_before(ctx, monkeypatch):
    monkeypatch.setattr(prefix_cache, "LIMIT_MB", 0)
    config = {"backbone": next(iter(ctx.backbones)), "strategy": "freeze", "freeze_depth": 2, "lr": 3e-3,
              "batch_size": 16}
    last, _, _ = _run(ctx, config)
    assert last["prefix_cache"].startswith("off: the frozen prefix's outputs pass the 0 MiB")


def test_other_strategies_keep_their_own_modes(ctx):
    for strategy in ("full", "lora", "gradual_unfreeze"):
        config = {"backbone": next(iter(ctx.backbones)), "strategy": strategy, "lr": 1e-3, "batch_size": 16}
        last = train(config, dataclasses.replace(ctx, max_epochs=1), lambda m, c: None)
        assert "prefix_cache" not in last, strategy


@pytest.fixture(scope="module")
def image_ctx(shapes_dir, tiny_resnet):
    """An image-cls trial context on the generated shapes with a tiny timm ResNet."""
    from autotransfer.images import load_image_splits
    from autotransfer.tasks import get_task
    from autotransfer.training import TrialContext

    class Settings:
        trust_remote_code = False
        image_size = None

    task = get_task("image-cls")
    splits = load_image_splits(shapes_dir)
    info = task.describe_backbone(f"local-dir:{tiny_resnet}", Settings())
    prepared, _ = task.prepare([info], splits, Settings())
    return TrialContext(task="image-cls", backbones={info.name: info}, prepared=prepared,
                        label_names=splits.label_names, max_epochs=2, evals_per_epoch=1, seed=0, search_id="s")


def test_images_replay_only_without_augmentation(image_ctx):
    ctx = image_ctx
    base = {"backbone": next(iter(ctx.backbones)), "strategy": "freeze", "freeze_depth": 2, "lr": 3e-3,
            "batch_size": 16}
    augmented = train({**base, "augment": "light"}, ctx, lambda m, c: None)
    assert augmented["prefix_cache"].startswith("off: this task's training batches are not a fixed function")
    losses = {}
    for on in (False, True):
        reports = []
        last = train({**base, "augment": "none"}, dataclasses.replace(ctx, prefix_cache=on),
                     lambda m, c: reports.append(m))
        losses[on] = [r["train_loss"] for r in reports]
        assert last["prefix_cache"].startswith("computed") if on else last["prefix_cache"] == "off: turned off"
    assert losses[True] == pytest.approx(losses[False], rel=1e-3, abs=1e-4)


@pytest.mark.parametrize("depth", [1, 2])  # timm's test_vit has 2 blocks: 2 freezes them all
def test_a_vit_replays_its_frozen_bottom_around_its_position_embedding(shapes_dir, tiny_vit, monkeypatch, depth):
    """A ViT's class token and position embedding are parameters of the model itself, used between its patch
    embedding and its first block: the replay hands the patch embedding a placeholder and the trial is the
    same trial as without it (the losses match the plain trial's), its frozen bottom computed once."""
    import timm

    from autotransfer.images import load_image_splits
    from autotransfer.tasks import get_task
    from autotransfer.training import TrialContext, build_trial_model

    class Settings:
        trust_remote_code = False
        image_size = None

    task = get_task("image-cls")
    splits = load_image_splits(shapes_dir)
    info = task.describe_backbone(f"local-dir:{tiny_vit}", Settings())
    prepared, _ = task.prepare([info], splits, Settings())
    base = {"backbone": info.name, "strategy": "freeze", "freeze_depth": depth, "lr": 3e-3, "batch_size": 16,
            "augment": "none"}
    _, adapted = build_trial_model(task, info, splits.label_names, base)
    model = adapted.model
    modules, loose = prefix_cache.prefix_modules(model, adapted.bundle, depth)
    assert isinstance(model, timm.models.VisionTransformer)
    assert {"cls_token", "pos_embed"} <= set(loose)  # held by the model itself, between the replaced modules
    assert [n for n, _ in prefix_cache.between(model, modules)] == ["pos_drop", "patch_drop", "norm_pre"]

    calls = []
    real = prefix_cache.compute_rows
    monkeypatch.setattr(prefix_cache, "compute_rows",
                        lambda *a, **k: calls.append(k.get("split", "train")) or real(*a, **k))
    ctx = TrialContext(task="image-cls", backbones={info.name: info}, prepared=prepared,
                       label_names=splits.label_names, max_epochs=2, evals_per_epoch=1, seed=0,
                       search_id=f"vit-{depth}")
    runs = {}
    for on in (False, True):
        reports = []
        last = train(base, dataclasses.replace(ctx, prefix_cache=on), lambda m, c: reports.append(m))
        runs[on] = last, [r["train_loss"] for r in reports], [r["accuracy"] for r in reports]
    assert runs[False][0]["prefix_cache"] == "off: turned off"
    assert runs[True][0]["prefix_cache"].startswith("computed") and "off" not in runs[True][0]["prefix_cache"]
    assert calls == ["train", "validation"]
    assert runs[True][1] == pytest.approx(runs[False][1], rel=1e-3, abs=1e-4)
    assert runs[True][2] == pytest.approx(runs[False][2], abs=1e-9)


def test_a_placeholder_whose_work_reaches_the_logits_is_caught_by_the_check(ctx, monkeypatch):
    """The placeholders are only safe where the next replaced module drops what was computed from them: a
    module whose recorded shape is wrong for the model makes the replayed logits differ (or fail), and the
    trial trains without the replay."""
    real = prefix_cache.compute_rows

    def wrong_shape(*args, **kwargs):
        found = real(*args, **kwargs)
        found.shapes = {name: (3,) for name in found.shapes}  # every module "has its own shape"
        return found

    monkeypatch.setattr(prefix_cache, "compute_rows", wrong_shape)
    config = {"backbone": next(iter(ctx.backbones)), "strategy": "freeze", "freeze_depth": 2, "lr": 3e-3,
              "batch_size": 16}
    last, _, _ = _run(dataclasses.replace(ctx, max_epochs=1), config)
    # here the placeholders reach the classifier (a wrong width): the replayed forward pass fails on the check
    assert last["prefix_cache"].startswith("off: the replayed forward pass fails")


def test_a_replayed_cnn_batch_keeps_the_model_s_channels_last_layout(image_ctx):
    """An image trial runs its CNN on channels-last maps; rows replayed in the default layout would send the first
    trainable block down other kernels, which round differently, and the replayed trial would drift from the plain
    one (a search's ASHA then stopped it at another rung).  With the layout given back it is the same trial, to the
    bit."""
    ctx = dataclasses.replace(image_ctx, max_epochs=3, search_id="layout")
    config = {"backbone": next(iter(ctx.backbones)), "strategy": "freeze", "freeze_depth": 2, "lr": 3e-2,
              "batch_size": 8, "augment": "none"}
    seen = []
    load = prefix_cache.Replay.load

    def spy(self, *args, **kwargs):
        load(self, *args, **kwargs)
        seen.append(self.state.is_contiguous(memory_format=torch.channels_last))

    runs = {}
    for on in (False, True):
        reports = []
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(prefix_cache.Replay, "load", spy)
            last = train(config, dataclasses.replace(ctx, prefix_cache=on), lambda m, c: reports.append(m))
        runs[on] = [(r["train_loss"], r["accuracy"]) for r in reports]
        assert last["prefix_cache"].startswith("computed") if on else last["prefix_cache"] == "off: turned off"
    assert seen and all(seen)
    assert runs[True] == runs[False]  # the same floats, not merely close ones
