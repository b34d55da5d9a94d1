"""Image data: folder layouts, odd formats, bad files, one decode per preprocessing, timm layouts."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from autotransfer.errors import UserError
from autotransfer.images import BadImagesWarning, decode_images, load_image_splits
from autotransfer.strategies import count_parameters, get_strategy
from autotransfer.tasks import get_task
from conftest import make_image_tree

TASK = get_task("image-cls")


class _S:
    def __init__(self, data=None):
        self.data, self.cpus_per_trial = data, 1


def test_split_folders_are_used_as_given(shapes_dir):
    s = load_image_splits(shapes_dir)
    assert (len(s.train), len(s.validation), len(s.test)) == (80, 24, 24)
    assert s.label_names == ["blue", "red"]
    assert s.source["given_splits"] == ["test", "train", "validation"]


def test_class_tree_without_splits_is_carved_and_quirks_are_handled(tmp_path):
    root = make_image_tree(tmp_path / "photos", 20, 3, quirks=True)
    with pytest.warns(BadImagesWarning, match="notes.txt"):
        s = load_image_splits(root, val_frac=0.2, test_frac=0.2, seed=0)
    assert len(s.train) + len(s.validation) + len(s.test) == 40 + 6  # 4 odd modes + 2 broken files listed
    paths = s.train.inputs + s.validation.inputs + s.test.inputs
    with pytest.warns(BadImagesWarning) as caught:
        pixels, keep = decode_images(paths, 32)
    message = str(caught[0].message)
    assert "empty.jpg" in message and "truncated.png" in message and "skipped 2" in message
    assert pixels.shape == (44, 32, 32, 3) and pixels.dtype == np.uint8  # grey, RGBA, GIF, JPEG -> RGB


def test_csv_of_paths(tmp_path):
    root = make_image_tree(tmp_path / "imgs", 10, 4)
    rows = ["path,label"] + [f"imgs/{p.parent.name}/{p.name},{p.parent.name}" for p in sorted(root.rglob("*.png"))]
    rows.append("imgs/red/missing.png,red")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    with pytest.warns(BadImagesWarning, match="do not exist"):
        s = load_image_splits(tmp_path / "labels.csv", val_frac=0.2, test_frac=0.2)
    assert len(s.train) + len(s.validation) + len(s.test) == 20


@pytest.mark.parametrize("build,needle", [
    (lambda r: (r / "a").mkdir(parents=True), "holds no images"),
    (lambda r: r.mkdir(), "no class folders"),
    (lambda r: make_image_tree(r, 3, 0) and [p.unlink() for p in (r / "blue").iterdir()] and (r / "blue").rmdir(),
     "single class"),
])
def test_bad_image_folders(tmp_path, build, needle):
    root = tmp_path / "bad"
    build(root)
    with pytest.raises(UserError, match=needle):
        load_image_splits(root)


def test_decoding_happens_once_per_distinct_preprocessing(shapes_dir, tiny_resnet, tiny_vit, tmp_path):
    splits = load_image_splits(shapes_dir)
    infos = [TASK.describe_backbone(f"local-dir:{p}", _S()) for p in (tiny_resnet, tiny_vit)]
    infos.append(TASK.describe_backbone(f"local-dir:{tiny_resnet}", _S()))
    infos[-1].name = "resnet-again"
    prepared, stats = TASK.prepare(infos, splits, _S(shapes_dir))
    # test_resnet resizes bilinear, test_vit bicubic: two preprocessings for three backbones
    assert stats.distinct == 2 and stats.runs == 2
    assert prepared["resnet-again"].splits is prepared[infos[0].name].splits
    x, y = next(iter(TASK.batches(prepared[infos[0].name], "train", 8, train=True, config={"augment": "strong"})))
    assert x["x"].shape == (8, 3, 160, 160) and x["x"].dtype == torch.float32 and y.shape == (8,)


def test_timm_groups_drive_freeze_depth_and_lora(tiny_resnet):
    info = TASK.describe_backbone(f"local-dir:{tiny_resnet}", _S())
    assert info.num_layers == 4  # test_resnet: one block per stage
    bundle = TASK.build(info, ["blue", "red"], {})
    adapted = get_strategy("freeze").apply(bundle, {"freeze_depth": 2, "lr": 1e-3})
    trainable = {n for n, p in adapted.model.named_parameters() if p.requires_grad}
    assert not any(n.startswith(("conv1", "bn1", "layer1.", "layer2.")) for n in trainable)
    assert any(n.startswith("layer3.") for n in trainable) and {"fc.weight", "fc.bias"} <= trainable
    full, _ = count_parameters(get_strategy("full").apply(TASK.build(info, ["blue", "red"], {}), {}).model)
    lora, _ = count_parameters(get_strategy("lora").apply(TASK.build(info, ["blue", "red"], {}), {"lora_r": 2}).model)
    assert 0 < lora < full / 2


def test_unknown_timm_name_is_refused():
    with pytest.raises(UserError, match="not a timm model name"):
        TASK.describe_backbone("resnet9000_imaginary", _S())


def test_frozen_batchnorm_keeps_its_pretrained_statistics(tiny_resnet):
    from autotransfer.training import train_mode

    info = TASK.describe_backbone(f"local-dir:{tiny_resnet}", _S())
    model = get_strategy("linear_probe").apply(TASK.build(info, ["blue", "red"], {}), {}).model
    before = {n: b.clone() for n, b in model.named_buffers() if "running_mean" in n}
    train_mode(model)
    model(torch.randn(8, 3, 64, 64) * 3 + 1)  # a forward pass in training mode
    after = dict(model.named_buffers())
    assert before and all(torch.equal(before[n], after[n]) for n in before)  # the CNN has BatchNorm statistics
    full = get_strategy("full").apply(TASK.build(info, ["blue", "red"], {}), {}).model
    train_mode(full)
    assert any(m.training for m in full.modules() if isinstance(m, torch.nn.BatchNorm2d))  # trainable BN still adapts


def test_each_unfreezing_phase_freezes_batchnorm_exactly_where_weights_are_frozen(tiny_resnet):
    from autotransfer.training import train_mode

    info = TASK.describe_backbone(f"local-dir:{tiny_resnet}", _S())
    bundle = TASK.build(info, ["blue", "red"], {})
    strategy = get_strategy("gradual_unfreeze")
    norms = {n: m for n, m in bundle.model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert norms
    for phase in range(bundle.num_layers + 3):
        model = strategy.apply(bundle, {"lr": 1e-3}, phase).model
        train_mode(model)
        for name, norm in norms.items():
            trains = any(p.requires_grad for p in norm.parameters(recurse=False))
            assert norm.training == trains, (phase, name)
    assert all(m.training for m in norms.values())  # the last phases thaw everything


def test_bitfit_on_a_cnn_trains_the_batchnorm_shifts_and_keeps_their_statistics_adapting(tiny_resnet):
    from autotransfer.training import train_mode

    info = TASK.describe_backbone(f"local-dir:{tiny_resnet}", _S())
    bundle = TASK.build(info, ["blue", "red"], {})
    model = get_strategy("bitfit").apply(bundle, {"lr": 1e-3}).model
    train_mode(model)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(m.bias.requires_grad and not m.weight.requires_grad and m.training for m in norms)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and not any(m.weight.requires_grad for m in convs)



def test_a_checkpoint_keeps_the_batchnorm_statistics_a_trial_learned(tiny_resnet, shapes_dir, tmp_path):
    """Full fine-tuning of a CNN updates its BatchNorm running statistics; the checkpoint holds them, so the model
    rebuilt from it (export, soup, refit's record) scores exactly what the trial reported."""
    from pathlib import Path

    from autotransfer.training import TrialContext, build_trial_model, evaluate, load_trainable, train

    info = TASK.describe_backbone(f"local-dir:{tiny_resnet}", _S())
    splits = load_image_splits(shapes_dir)
    prepared, _ = TASK.prepare([info], splits, _S(shapes_dir))
    ctx = TrialContext(task="image-cls", backbones={info.name: info}, prepared=prepared,
                       label_names=splits.label_names, max_epochs=1, evals_per_epoch=1)
    config = {"backbone": info.name, "strategy": "full", "lr": 3e-3, "batch_size": 16, "augment": "none"}
    kept = tmp_path / "ckpt"

    def keep(metrics, checkpoint_dir):
        kept.mkdir(exist_ok=True)
        for p in Path(checkpoint_dir).iterdir():
            (kept / p.name).write_bytes(p.read_bytes())
        keep.reported = metrics

    train(config, ctx, keep)
    from safetensors.torch import load_file

    assert any(k.endswith("running_mean") for k in load_file(str(kept / "trainable.safetensors")))
    _, adapted = build_trial_model(TASK, info, splits.label_names, config)
    load_trainable(adapted.model, kept)
    metrics, _ = evaluate(adapted.model, TASK, prepared[info.name], "validation", 16, torch.device("cpu"))
    assert metrics["accuracy"] == keep.reported["accuracy"] and metrics["loss"] == pytest.approx(keep.reported["val_loss"])


def test_image_batches_reach_the_model_channels_last_and_give_the_same_logits(shapes_dir, tiny_resnet, tmp_path):
    splits = load_image_splits(shapes_dir)
    info = TASK.describe_backbone(f"local-dir:{tiny_resnet}", _S())
    prepared, _ = TASK.prepare([info], splits, _S(shapes_dir))
    model = TASK.build(info, ["a", "b", "c"], {}).model.eval()
    seen = []
    model.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    for train in (True, False):  # training batches and evaluation batches alike
        inputs, _ = next(iter(TASK.batches(prepared[info.name], "train", 8, train=train, config={"augment": "none"})))
        with torch.no_grad():
            logits = TASK.logits(model, inputs)
            reference = model(inputs["x"].contiguous())
        got, plain = seen[-2:]
        assert got.is_contiguous(memory_format=torch.channels_last) and not got.is_contiguous()
        assert plain.is_contiguous()
        torch.testing.assert_close(logits, reference, atol=1e-5, rtol=1e-4)
    # the weights keep their layout: checkpoints and exports are written as before
    assert all(p.is_contiguous() for p in model.parameters())
