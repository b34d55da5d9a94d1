"""Object detection: torchvision detectors on a timm body, searched end to end; the export loads as a plain
torchvision model and reproduces the winning trial's validation mAP."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import autotransfer
from autotransfer.detection_data import load_detection_splits
from autotransfer.detection_metrics import compute, pad_rows
from autotransfer.detectors import ARCHITECTURES, build_detector, feature_body, forward, load_detector
from autotransfer.predict import predict_rows
from autotransfer.tasks import get_task

TASK = get_task("detection")


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_each_architecture_trains_and_detects_on_a_timm_body(architecture, tiny_resnet):
    body = feature_body(f"local-dir:{tiny_resnet}")
    assert min(body.feature_info.reduction()) >= 8  # the coarser maps only
    model = build_detector(architecture, body, 2, (64, 96), (0.5,) * 3, (0.25,) * 3).train()
    images = torch.rand(2, 3, 64, 96)
    boxes = torch.tensor([[[4, 4, 30, 28, 0], [40, 10, 60, 50, 1]], [[10, 10, 40, 30, 1], [0, 0, 0, 0, -1]]],
                         dtype=torch.float32)
    losses = forward(model, images, boxes, architecture, 100)
    assert losses.dim() == 1 and torch.isfinite(losses).all()
    losses.sum().backward()
    assert next(model.backbone.body.parameters()).grad is not None  # the body learns through the pyramid
    with torch.no_grad():
        found = forward(model.eval(), images, None, architecture, 100)
    assert found.shape == (2, 100, 6) and set(found[..., 5].unique().tolist()) <= {-1.0, 0.0, 1.0}


def test_the_coco_metrics_are_torchmetrics_and_see_a_perfect_detector():
    truth = pad_rows([np.array([[4, 4, 30, 28, 0], [40, 10, 60, 50, 1]], np.float32),
                      np.zeros((0, 5), np.float32)], 2, 5)
    perfect = pad_rows([np.array([[4, 4, 30, 28, 0.9, 0], [40, 10, 60, 50, 0.8, 1]], np.float32),
                        np.zeros((0, 6), np.float32)], 100, 6)
    assert compute(truth, perfect)["map"] == pytest.approx(1.0)
    wrong_class = perfect.copy()
    wrong_class[0, :2, 5] = 1 - wrong_class[0, :2, 5]
    assert compute(truth, wrong_class)["map"] == pytest.approx(0.0)
    assert compute(truth, perfect, per_class=True)["ap_per_class"] == {0: pytest.approx(1.0), 1: pytest.approx(1.0)}


def test_the_gallery_draws_true_boxes_green_and_confident_predictions_red():
    from autotransfer.tasks.detection import BoxData, BoxSplit

    canvas = np.full((1, 60, 80, 3), 255, np.uint8)  # a 50 x 70 image on a 60 x 80 canvas
    part = BoxSplit(canvas, pad_rows([np.array([[10, 10, 30, 30, 0]], np.float32)], 2, 5), ["img/a.jpg"],
                    np.array([[50, 70]]))
    predicted = pad_rows([np.array([[40, 20, 60, 40, 0.9, 1], [2, 40, 8, 46, 0.2, 0]], np.float32)], 100, 6)
    [(caption, image)] = TASK.gallery(BoxData("k", (60, 80), {"validation": part}), "validation", predicted,
                                      ["stop", "yield"], 12)
    px = np.asarray(image)
    assert image.size == (70, 50)  # the image, not the canvas
    assert tuple(px[10, 20]) == (40, 200, 40)  # the true box's top edge
    assert tuple(px[40, 50]) == (255, 40, 40)  # the confident prediction's bottom edge
    assert tuple(px[40, 5]) == (255, 255, 255)  # a prediction scoring 0.2 is not drawn (its top edge)
    assert caption == "a.jpg: 1 true (green), 1 predicted with score >= 0.5 (red)"


def test_a_task_without_a_gallery_reads_no_checkpoint_for_one(tmp_path):
    from autotransfer.gallery import write_gallery

    # a text task draws nothing: its (here unreachable) checkpoint is not even opened
    assert write_gallery(get_task("text-cls"), None, "s3://nowhere/ckpt", ["a", "b"], tmp_path) == []
    assert not (tmp_path / "gallery").exists()


@pytest.fixture(scope="module")
def run(ray_session, box_scenes, tiny_resnet, tmp_path_factory):
    space = tmp_path_factory.mktemp("spaces") / "boxes.yaml"
    space.write_text(f'task: detection\nbackbones: ["local-dir:{tiny_resnet}"]\nparams:\n  batch_size: [4]\n'
                     "  architecture: [fasterrcnn]\n  augment: [light]\nstrategies:\n  full:\n"
                     "    lr: {distribution: loguniform, low: 1.5e-3, high: 3.0e-3}\n"
                     "  freeze:\n    freeze_depth: {distribution: int, low: 1, high: num_layers}\n"
                     "    lr: {distribution: loguniform, low: 1.5e-3, high: 3.0e-3}\n")
    return autotransfer.search(task="detection", data=box_scenes, space=space, num_samples=2, max_epochs=6,
                               evals_per_epoch=1, min_steps=0, seed=0, dashboard=False, baseline=False,
                               output=tmp_path_factory.mktemp("runs") / "det")


@pytest.mark.e2e
def test_a_detection_search_learns_the_boxes(run):
    assert {r.strategy for r in run.records} == {"full", "freeze"}
    assert run.best.best_metric > 0.15, [(r.strategy, r.best_metric, r.error) for r in run.records]  # random: ~0
    meta = json.loads((run.output / "results.json").read_text())
    assert meta["metric"] == "map" and meta["data"]["label_names"] == ["stop", "yield"]
    assert set(meta["test"]["ap_per_class"]) == {"stop", "yield"} and "map_50" in meta["test"]["test_metrics"]
    page = (run.output / "leaderboard.html").read_text()
    assert "AP@[.5:.95] per class" in page
    # the report's gallery: validation images drawn with the selected trial's boxes, embedded in the page
    assert len(meta["gallery"]) == min(12, meta["data"]["splits"]["validation"]["rows"])
    assert all((run.output / g["file"]).is_file() for g in meta["gallery"])
    assert page.count('src="data:image/jpeg;base64,') == len(meta["gallery"])
    assert html.escape(meta["gallery"][0]["caption"]) in page


@pytest.mark.e2e
def test_the_exported_detector_reproduces_the_winning_validation_map(run, box_scenes, tmp_path):
    best = run.best_dir
    config = json.loads((best / "config.json").read_text())
    assert config["classes"] == ["stop", "yield"] and config["architecture"] == "fasterrcnn"
    assert config["category_ids"] == [1, 2]  # the COCO file's ids
    model = load_detector(best)
    assert type(model).__name__ == "FasterRCNN" and not model.training
    rows = list(predict_rows(best, box_scenes / "img", score_threshold=0.0, draw=tmp_path / "drawn"))
    truth = load_detection_splits(box_scenes).validation
    by_file: dict[str, list] = {}
    for r in rows:
        x, y, w, h = r["bbox"]
        # COCO results rows name the classes by the training file's category ids (1 and 2 here)
        by_file.setdefault(Path(r["file_name"]).name, []).append(
            [x, y, x + w, y + h, r["score"], config["category_ids"].index(r["category_id"])])
    pred = pad_rows([np.asarray(by_file.get(Path(im.path).name, np.zeros((0, 6))), np.float32).reshape(-1, 6)
                     for im in truth.inputs], 100, 6)
    true = pad_rows([np.concatenate([im.boxes, im.labels[:, None]], 1) for im in truth.inputs], 4, 5)
    assert compute(true, pred)["map"] == pytest.approx(run.best.best_metric, abs=1e-3)
    assert len(list((tmp_path / "drawn").iterdir())) == len(list((box_scenes / "img").iterdir()))
    # the same detector as ONNX (torch's exporter), run by onnxruntime on one of the images
    import onnxruntime
    from PIL import Image
    from torchvision.transforms.v2 import functional as F

    assert config["onnx"]["file"] == "model.onnx"
    with Image.open(truth.inputs[0].path) as im:
        image = F.to_dtype(F.pil_to_tensor(im.convert("RGB")), torch.float32, scale=True)
    with torch.inference_mode():
        expected = model([image])[0]
    boxes, labels, scores = onnxruntime.InferenceSession(str(best / "model.onnx")).run(None, {"image": image.numpy()})
    assert boxes.shape == tuple(expected["boxes"].shape) and (labels == expected["labels"].numpy()).all()
    assert np.allclose(boxes, expected["boxes"].numpy(), atol=1e-2) and np.allclose(scores, expected["scores"].numpy(),
                                                                                    atol=1e-3)


@pytest.mark.parametrize("strategy, config", [("lora", {"lora_r": 4}), ("freeze", {"freeze_depth": 99})])
def test_the_shared_strategies_adapt_the_body_and_always_train_the_heads(strategy, config, tiny_resnet):
    from autotransfer.strategies import count_parameters, get_strategy

    info = TASK.describe_backbone(f"local-dir:{tiny_resnet}", None)
    info.details["image_size"] = [64, 96]
    bundle = TASK.build(info, ["stop", "yield"], {"architecture": "fasterrcnn"})
    assert bundle.num_layers == info.num_layers > 0 and bundle.lora_targets
    config = {**config, "freeze_depth": min(config.get("freeze_depth", 0), bundle.num_layers)}
    adapted = get_strategy(strategy).apply(bundle, config)
    trainable = {n for n, p in adapted.model.named_parameters() if p.requires_grad}
    assert any("rpn" in n for n in trainable) and any("roi_heads" in n for n in trainable)  # the heads train
    trained, total = count_parameters(adapted.model)
    assert trained < total
    if strategy == "lora":
        assert any("lora_A" in n for n in trainable)
    else:  # full depth: the heads only, the detection analogue of a linear probe
        assert not any(".body." in n for n in trainable)
    adapted.model.train()
    boxes = torch.tensor([[[4, 4, 30, 28, 0]]], dtype=torch.float32)
    TASK.logits(adapted.model, {"images": torch.rand(1, 3, 64, 96), "boxes": boxes}).sum().backward()
    merged = get_strategy(strategy).finalize(adapted.model)
    assert type(merged).__name__ == "FasterRCNN"


def test_the_body_runs_channels_last_and_the_pyramid_gets_the_same_maps(tiny_resnet):
    torch.manual_seed(0)
    model = build_detector("fasterrcnn", feature_body(f"local-dir:{tiny_resnet}"), 2, (64, 96), (0.5,) * 3,
                           (0.25,) * 3).eval()
    pyramid, seen = model.backbone, []
    pyramid.body.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        fast = pyramid(x)
        pyramid.channels_last = False
        plain = pyramid(x)
    assert seen[0].is_contiguous(memory_format=torch.channels_last) and not seen[0].is_contiguous()
    assert seen[1].is_contiguous()
    assert list(fast) == list(plain)
    for name in fast:
        assert fast[name].is_contiguous()
        torch.testing.assert_close(fast[name], plain[name], atol=1e-5, rtol=1e-4)
