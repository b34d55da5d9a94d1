"""The per-trial loop, run without Ray: reports, checkpoints on improvement, learning."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import numpy as np
import torch

from autotransfer.export import export_best
from autotransfer.results import COMPLETED, TrialRecord
from autotransfer.training import train


@pytest.fixture(scope="module")
def ctx(text_ctx):
    return text_ctx


def test_full_finetuning_learns_and_checkpoints_every_evaluation_with_the_best_weights(ctx, tmp_path):
    import json

    import numpy as np
    from safetensors.torch import load_file

    reports, saved = [], []

    def report(metrics, checkpoint_dir):
        reports.append(metrics)
        folder = Path(checkpoint_dir)
        saved.append((sorted(p.name for p in folder.iterdir()), load_file(str(folder / "trainable.safetensors")),
                      json.loads((folder / "trial_state.json").read_text()),
                      np.load(folder / "val_predictions.npy")))

    config = {"backbone": next(iter(ctx.backbones)), "strategy": "full", "lr": 2e-3, "batch_size": 16}
    last = train(config, ctx, report)
    assert len(reports) == ctx.max_epochs * ctx.evals_per_epoch
    epochs = [r["epoch"] for r in reports]
    assert epochs == sorted(epochs) and epochs[1::2] == [1.0, 2.0, 3.0, 4.0]  # two evaluations per epoch
    assert max(r["accuracy"] for r in reports) > 0.7  # the cue words are learnable (12% label noise)
    assert len(saved) == len(reports)  # a checkpoint at every evaluation
    for i, (files, weights, state, _) in enumerate(saved):
        best_at = max(range(i + 1), key=lambda k: (reports[k]["accuracy"], -k))  # the first evaluation at the best
        assert state["best"] == reports[best_at]["accuracy"] and state["step"] == reports[i]["step"]
        assert state["best_step"] == reports[best_at]["step"]
        assert all(torch.equal(weights[k], saved[best_at][1][k]) for k in weights)  # the best weights, kept
        assert ("latest.safetensors" in files) == (best_at != i) and "resume.pt" in files
    assert last["trial_finished"] and last["val_examples"] == 80 and not any(r.get("trial_finished")
                                                                             for r in reports[:-1])
    assert last["trainable_params"] == last["total_params"]


def test_export_rebuilds_the_trial_from_its_checkpoint(ctx, tmp_path):
    ckpt = {}

    def report(metrics, checkpoint_dir):
        if checkpoint_dir:
            dst = tmp_path / "ckpt"
            dst.mkdir(exist_ok=True)
            for p in Path(checkpoint_dir).iterdir():
                (dst / p.name).write_bytes(p.read_bytes())
            ckpt["metric"] = metrics["accuracy"]

    backbone = next(iter(ctx.backbones))
    config = {"backbone": backbone, "strategy": "lora", "lr": 5e-3, "lora_r": 4, "batch_size": 16}
    train(config, ctx, report)
    record = TrialRecord(trial_id="t1", backbone=backbone, strategy="lora",
                         params={k: v for k, v in config.items() if k not in ("backbone", "strategy")},
                         status=COMPLETED, iterations=8, epochs=4, best_metric=ckpt["metric"], best_epoch=None,
                         wall_time_s=1.0, trainable_params=None, total_params=None, checkpoint=str(tmp_path / "ckpt"))
    out = tmp_path / "best"
    tested = export_best(record, ctx, out)
    assert {"config.json", "model.safetensors", "tokenizer.json", "label_map.json", "autotransfer.json"} <= \
        {p.name for p in out.iterdir()}
    assert 0.0 <= tested["test_metrics"]["accuracy"] <= 1.0
    assert len(tested["confusion_matrix"]) == 2

    from transformers import pipeline

    clf = pipeline("text-classification", model=str(out))
    preds = clf(["great superb wonderful film", "awful boring terrible plot"])
    assert {p["label"] for p in preds} <= {"negative", "positive"}


def _trained(ctx, tmp_path, name, config):
    """Train one trial without Ray; its record, pointing at its last checkpoint."""
    dst = tmp_path / name

    def report(metrics, checkpoint_dir):
        dst.mkdir(exist_ok=True)
        for p in Path(checkpoint_dir).iterdir():
            (dst / p.name).write_bytes(p.read_bytes())

    train(config, ctx, report)
    return TrialRecord(trial_id=name, backbone=config["backbone"], strategy=config["strategy"],
                       params={k: v for k, v in config.items() if k not in ("backbone", "strategy")},
                       status=COMPLETED, iterations=8, epochs=4, best_metric=0.5, best_epoch=None, wall_time_s=1.0,
                       trainable_params=None, total_params=None, checkpoint=str(dst))


def test_a_soup_of_a_lora_and_a_full_trial_averages_merged_weights_and_exports_them(ctx, tmp_path):
    import dataclasses
    import itertools

    from safetensors.torch import load_file

    from autotransfer.export import rebuild
    from autotransfer.soup import greedy_soup

    backbone = next(iter(ctx.backbones))
    ctx = dataclasses.replace(ctx, max_epochs=1)
    records = {r.trial_id: r for r in (
        _trained(ctx, tmp_path, "full", {"backbone": backbone, "strategy": "full", "lr": 2e-3, "batch_size": 16}),
        _trained(ctx, tmp_path, "lora", {"backbone": backbone, "strategy": "lora", "lr": 5e-3, "lora_r": 4,
                                         "batch_size": 16}))}
    merged = {t: {k: v.clone() for k, v in rebuild(r, ctx).state_dict().items()} for t, r in records.items()}
    assert merged["full"].keys() == merged["lora"].keys()  # LoRA merged: the plain architecture's tensors
    rising = itertools.count()
    soup = greedy_soup("full", ["lora"], lambda t: rebuild(records[t], ctx), lambda m: float(next(rising)))
    assert soup.wins and soup.incompatible == []
    out = tmp_path / "best"
    export_best(records["full"], ctx, out, model=soup.model, notes={"soup": soup.to_dict()})
    exported = load_file(str(out / "model.safetensors"))
    for name in ("classifier.weight", "bert.encoder.layer.0.attention.self.query.weight"):
        key = next(k for k in exported if k.endswith(name))
        assert torch.allclose(exported[key], (merged["full"][key] + merged["lora"][key]) / 2, atol=1e-6), name
        assert not torch.allclose(exported[key], merged["full"][key])  # not the best trial alone


def test_a_linear_probe_fits_on_the_search_s_frozen_features_without_a_forward_pass_over_train(ctx, monkeypatch):
    import dataclasses

    import numpy as np

    from autotransfer import training
    from autotransfer.features import frozen_features
    from autotransfer.tasks import get_task

    backbone = next(iter(ctx.backbones))
    config = {"backbone": backbone, "strategy": "linear_probe", "C": 1.0, "batch_size": 16}
    computed = []
    real = training.head_features
    monkeypatch.setattr(training, "head_features", lambda *a, **k: computed.append(a[4]) or real(*a, **k))
    own = train(config, ctx, lambda m, c: None)
    assert computed == ["train"] and own["cached_features"] is False

    found = frozen_features(get_task(ctx.task), ctx.backbones[backbone], ctx.prepared[backbone], ctx.label_names,
                            ctx.seed)
    cached_ctx = dataclasses.replace(ctx, features={backbone: found})
    computed.clear()
    scored = []
    real_eval = training.evaluate
    monkeypatch.setattr(training, "evaluate", lambda *a, **k: scored.append(a[3]) or real_eval(*a, **k))
    saved = []
    runs = [train(config, cached_ctx, lambda m, c: saved.append(np.load(Path(c) / "val_predictions.npy")))
            for _ in range(2)]  # two trials, one computation
    assert computed == [] and scored == [] and all(r["cached_features"] for r in runs)  # no backbone pass at all
    assert len(found.y) == 480 and len(found.val_y) == 80
    for r in runs:  # the same features up to float noise (other padding per batch): the same probe
        assert r["accuracy"] == pytest.approx(own["accuracy"], abs=1 / 80)
    # the predictions kept for the validation interval are in split order, as evaluate() keeps them
    labels = get_task(ctx.task).labels(ctx.prepared[backbone], "validation")
    assert (saved[0] == labels).mean() == pytest.approx(runs[0]["accuracy"])


def test_trial_limits_torch_threads_to_its_cpu_share(ctx):
    import dataclasses

    import torch

    before = torch.get_num_threads()
    try:
        one = dataclasses.replace(ctx, threads=1, max_epochs=1, evals_per_epoch=1)
        config = {"backbone": next(iter(ctx.backbones)), "strategy": "linear_probe", "batch_size": 32}
        train(config, one, lambda m, c: None)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_diverging_loss_fails_the_trial_with_a_reason(ctx):
    import dataclasses

    from autotransfer.training import TrialFailed

    one = dataclasses.replace(ctx, max_epochs=2, evals_per_epoch=1)
    config = {"backbone": next(iter(ctx.backbones)), "strategy": "full", "lr": 1e12, "batch_size": 16}
    with pytest.raises(TrialFailed, match="NaN/inf"):
        train(config, one, lambda m, c: None)


def _watch_models(monkeypatch):
    """Record a weak reference to every model a trial builds."""
    import weakref

    import autotransfer.training as training

    built = []
    real = training.build_trial_model

    def build(*args, **kwargs):
        strategy, adapted = real(*args, **kwargs)
        built.append(weakref.ref(adapted.model))
        return strategy, adapted

    monkeypatch.setattr(training, "build_trial_model", build)
    return built


def test_a_finished_trial_leaves_no_model_behind(ctx, monkeypatch):
    """Ray Tune reuses the worker process for the next trial: a trial's model, optimizer state and
    activations must be gone when it returns, also when it failed (the traceback keeps its frames)."""
    import dataclasses

    from autotransfer.training import TrialFailed

    built = _watch_models(monkeypatch)
    one = dataclasses.replace(ctx, max_epochs=1, evals_per_epoch=1)
    bb = next(iter(ctx.backbones))
    train({"backbone": bb, "strategy": "full", "lr": 1e-3, "batch_size": 16}, one, lambda m, c: None)
    with pytest.raises(TrialFailed) as failed:
        train({"backbone": bb, "strategy": "full", "lr": 1e12, "batch_size": 16},
              dataclasses.replace(one, max_epochs=2), lambda m, c: None)
    assert len(built) == 2
    assert [ref() for ref in built] == [None, None]
    assert failed.value is not None  # the error is still there to report


def test_out_of_gpu_memory_retries_at_half_batch_after_freeing_the_first_attempt(ctx, monkeypatch):
    import dataclasses

    import torch

    import autotransfer.training as training

    built = _watch_models(monkeypatch)
    real_logits = type(training.get_task(ctx.task)).logits
    batch_sizes = []

    def logits(self, model, inputs):
        n = next(iter(inputs.values())).shape[0]
        batch_sizes.append(n)
        if n > 8 and model.training:
            alive = [ref() is not None for ref in built]
            assert alive.count(True) == 1  # only this attempt's model
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        if len(built) == 2:
            assert built[0]() is None  # the failed attempt's model was freed before the retry
        return real_logits(self, model, inputs)

    monkeypatch.setattr(type(training.get_task(ctx.task)), "logits", logits)
    one = dataclasses.replace(ctx, max_epochs=1, evals_per_epoch=1)
    last = train({"backbone": next(iter(ctx.backbones)), "strategy": "full", "lr": 1e-3, "batch_size": 16},
                 one, lambda m, c: None)
    assert last["batch_size_used"] == 8
    assert len(built) == 2 and all(ref() is None for ref in built)
    assert "gpu_memory_peak_mb" not in last  # GPU memory is reported only for GPU trials


def test_lr_schedules_warm_up_then_follow_their_shape():
    import torch

    from autotransfer.training import lr_schedule

    lrs = {}
    for name in ("linear", "cosine", "constant"):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = lr_schedule(opt, name, warmup_steps=10, total_steps=110)
        seen = []
        for _ in range(110):
            seen.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        lrs[name] = seen
    for seen in lrs.values():  # the same linear warm-up from 0
        assert seen[0] == 0.0 and seen[5] == pytest.approx(0.5) and seen[10] == pytest.approx(1.0)
    # a quarter of the way through the decay: linear 0.75, cosine (1 + cos(pi/4)) / 2, constant 1
    assert lrs["linear"][35] == pytest.approx(0.75)
    assert lrs["cosine"][35] == pytest.approx((1 + 2 ** -0.5) / 2)
    assert lrs["constant"][35] == pytest.approx(1.0) and lrs["constant"][109] == pytest.approx(1.0)


def test_a_trial_trains_with_the_schedule_and_optimizer_its_config_names(ctx, monkeypatch):
    import dataclasses

    import autotransfer.training as training

    used = {}
    real = training.lr_schedule

    def schedule(optimizer, name, *args):
        used["scheduler"], used["optimizer"] = name, type(optimizer).__name__
        return real(optimizer, name, *args)

    monkeypatch.setattr(training, "lr_schedule", schedule)
    short = dataclasses.replace(ctx, max_epochs=1, evals_per_epoch=1)
    config = {"backbone": next(iter(ctx.backbones)), "strategy": "full", "lr": 1e-3, "batch_size": 16}
    train({**config, "scheduler": "cosine", "optimizer": "sgd"}, short, lambda metrics, checkpoint_dir: None)
    assert used == {"scheduler": "cosine", "optimizer": "SGD"}
    train(config, short, lambda metrics, checkpoint_dir: None)  # neither named: the defaults
    assert used == {"scheduler": "linear", "optimizer": "AdamW"}


def test_lp_ft_starts_fine_tuning_from_the_fitted_probe(ctx):
    """With zero learning rates the fine-tuning phase changes nothing: the trial scores exactly what the linear
    probe scores, so phase 0 fitted the head and phase 1 started from it."""
    import dataclasses

    short = dataclasses.replace(ctx, max_epochs=1, evals_per_epoch=1)
    bb = next(iter(ctx.backbones))
    probe = train({"backbone": bb, "strategy": "linear_probe", "C": 1.0, "batch_size": 16}, short, lambda m, c: None)
    frozen_ft = train({"backbone": bb, "strategy": "lp_ft", "C": 1.0, "lr": 0.0, "head_lr": 0.0, "batch_size": 16},
                      short, lambda m, c: None)
    assert frozen_ft["accuracy"] == probe["accuracy"] and frozen_ft["val_loss"] == pytest.approx(probe["val_loss"])
    tuned = train({"backbone": bb, "strategy": "lp_ft", "C": 1.0, "lr": 2e-3, "batch_size": 16}, short,
                  lambda m, c: None)
    assert tuned["trainable_params"] == tuned["total_params"] and tuned["val_loss"] != probe["val_loss"]


def test_a_phase_change_keeps_the_optimizer_state_of_what_goes_on_training():
    import torch

    from autotransfer.training import _optimization

    a, b = torch.nn.Parameter(torch.ones(3, 3)), torch.nn.Parameter(torch.ones(3, 3))
    first, _ = _optimization([{"params": [a], "lr": 0.1}], {}, torch.device("cpu"), 0, 10)
    a.grad = torch.ones(3, 3)
    first.step()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        second, schedule = _optimization([{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.1}], {},
                                         torch.device("cpu"), 4, 10, previous=first)
    assert second.state[a] is first.state[a] and b not in second.state
    assert schedule.last_epoch == 4  # the schedule continues where the trial is
    # fast-forwarding the new schedule is meant: no torch warning in the trial's log says otherwise
    assert not [w for w in caught if "lr_scheduler" in str(w.message)], [str(w.message) for w in caught]


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_the_fused_optimizer_step_trains_as_the_per_tensor_one(name, monkeypatch):
    """On a CPU a trial's optimizer takes torch's fused step (benchmarks/fused_optimizer.py: several times faster);
    the weights it trains must be those of the per-tensor default: decayed and undecayed groups, two learning
    rates, 20 steps."""
    import autotransfer.training as training

    def trained(fused: bool) -> tuple[list[torch.Tensor], torch.optim.Optimizer]:
        monkeypatch.setattr(training, "FUSED_OPTIMIZER", fused)
        torch.manual_seed(0)
        weight, bias = torch.nn.Parameter(torch.randn(64, 32)), torch.nn.Parameter(torch.randn(32))
        head = torch.nn.Parameter(torch.randn(2, 32))
        optimizer, schedule = training._optimization(
            [{"params": [weight, bias], "lr": 1e-2}, {"params": [head], "lr": 1e-1}],
            {"weight_decay": 0.1, "optimizer": name}, torch.device("cpu"), 0, 20)
        grads = torch.Generator().manual_seed(1)
        for _ in range(20):
            for p in (weight, bias, head):
                p.grad = torch.randn(p.shape, generator=grads)
            optimizer.step()
            schedule.step()
        return [weight.detach(), bias.detach(), head.detach()], optimizer

    fused, fused_optimizer = trained(True)
    plain, plain_optimizer = trained(False)
    assert fused_optimizer.defaults["fused"] and not plain_optimizer.defaults["fused"]
    torch.manual_seed(0)
    start = [torch.randn(64, 32), torch.randn(32), torch.randn(2, 32)]
    for f, p, s in zip(fused, plain, start):
        assert (p - s).abs().max() > 1e-3  # it trained
        torch.testing.assert_close(f, p, rtol=1e-5, atol=1e-6)


def test_gradual_unfreeze_trains_only_the_groups_thawed_so_far(ctx, monkeypatch):
    import dataclasses

    import autotransfer.training as training

    built = []
    real = training.build_trial_model

    def build(*args, **kwargs):
        strategy, adapted = real(*args, **kwargs)
        built.append((adapted.model, {n: p.detach().clone() for n, p in adapted.model.named_parameters()}))
        return strategy, adapted

    monkeypatch.setattr(training, "build_trial_model", build)
    two = dataclasses.replace(ctx, max_epochs=2, evals_per_epoch=1)
    last = train({"backbone": next(iter(ctx.backbones)), "strategy": "gradual_unfreeze", "lr": 1e-3,
                  "unfreeze_every": 1.0, "batch_size": 16}, two, lambda m, c: None)
    model, before = built[0]
    bundle_blocks = [n for n, _ in model.named_parameters() if ".layer." in n]
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed and not (changed & set(bundle_blocks))  # one epoch of head, one of the top group (the tail)
    assert last["trainable_params"] < last["total_params"]



def test_a_trial_resumed_from_its_last_checkpoint_ends_where_an_uninterrupted_one_does(ctx, tmp_path):
    """Stopped after the 3rd of 8 evaluations (mid-epoch: two per epoch) and resumed from that checkpoint, the
    trial ends with the same weights as one that ran through: optimizer moments, step, schedule, dropout RNG
    and data order all continue."""
    import dataclasses
    import shutil

    from safetensors.torch import load_file

    from autotransfer.training import _train

    config = {"backbone": next(iter(ctx.backbones)), "strategy": "full", "lr": 2e-3, "batch_size": 16,
              "warmup_ratio": 0.1}
    short = dataclasses.replace(ctx, max_epochs=4, evals_per_epoch=2)
    finals = {}

    def run(name, restore=None, stop_after=None):
        count = [0]

        def report(metrics, checkpoint_dir):
            count[0] += 1
            target = tmp_path / f"{name}-{count[0]}"
            shutil.copytree(checkpoint_dir, target)
            finals[name] = target
            if count[0] == stop_after:
                raise KeyboardInterrupt  # the worker dies here

        try:
            _train(config, short, report, str(restore) if restore else None, 16)
        except KeyboardInterrupt:
            pass
        return finals[name]

    through = run("through")
    stopped = run("stopped", stop_after=3)
    resumed = run("resumed", restore=stopped)

    def weights(folder):
        tensors = load_file(str(folder / "trainable.safetensors"))
        if (folder / "latest.safetensors").exists():
            tensors.update(load_file(str(folder / "latest.safetensors")))
        return tensors

    a, b = weights(through), weights(resumed)
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_a_stale_latest_file_beside_a_checkpoint_is_not_restored(tmp_path):
    """Ray copies a checkpoint into a folder of the same name without emptying it (after a crash, a trial's next
    checkpoint can land where an unregistered one was): the trial state says which files this evaluation wrote."""
    import shutil

    from safetensors.torch import save_file

    from autotransfer.checkpoints import LATEST_FILE, Checkpointer, restore_latest

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    best = {k: v.detach().clone() for k, v in model.state_dict().items()}
    folder = tmp_path / "checkpoint_000001"
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    Checkpointer("accuracy", lambda m, d: shutil.copytree(d, folder)).evaluation(
        model, {"accuracy": 0.9}, np.zeros(4), step=10, optimizer=optimizer)  # improved: no latest file written
    save_file({k: torch.full_like(v, 7.0) for k, v in best.items()}, str(folder / LATEST_FILE))  # a stale one
    fresh = torch.nn.Linear(3, 2)
    state = restore_latest(fresh, folder)
    assert state["step"] == 10
    assert all(torch.equal(fresh.state_dict()[k], best[k]) for k in best)
