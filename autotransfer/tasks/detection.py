"""``detection``: object detection with torchvision's detectors on timm backbones.

Data in COCO, Pascal VOC or YOLO form (:mod:`autotransfer.detection_data`).  Every image is decoded once,
scaled so its longer side is at most :data:`MAX_SIDE` pixels (never enlarged; the aspect ratio kept, the boxes
scaled with it) and placed at the top left of a canvas shared by the split, into one uint8 array all trials
share.  Training batches are augmented per image with torchvision's box-aware transforms (photometric changes,
scale and shift jitter; horizontal flips only when the space allows them: flipping a sign can change its
meaning), which move the boxes with the pixels.

The model is :func:`autotransfer.detectors.build_detector` (Faster R-CNN, RetinaNet or FCOS, the space's
``architecture``) on the backbone's feature maps.  The body's repeated blocks are the layer groups the shared
strategies freeze or adapt (``freeze`` at full depth trains the heads only, the detection analogue of a linear
probe); the pyramid and the detection heads always train.  ``best/`` holds ``model.safetensors`` and a
``config.json`` describing the whole model; :func:`autotransfer.detectors.load_detector` rebuilds it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from autotransfer.backbones import blocks_by_list, find_block_list, layout
from autotransfer.data import SPLITS, LabeledSplits
from autotransfer.detection_metrics import pad_rows
from autotransfer.recipes import Recipe
from autotransfer.strategies.base import ModelBundle
from autotransfer.tasks import register_task
from autotransfer.tasks.base import BackboneInfo, Batch, PreparationStats, Task

#: prepared images are at most this many pixels on their longer side (small objects need resolution; CPUs time)
MAX_SIDE = 640
#: detections kept per image (torchvision's default)
DETECTIONS_PER_IMAGE = 100
#: the report's gallery draws the predicted boxes scoring at least this
GALLERY_SCORE = 0.5


@dataclass
class BoxSplit:
    images: np.ndarray  # (n, H, W, 3) uint8, each image at the top left of the canvas
    boxes: np.ndarray  # (n, M, 5) float32 [x1, y1, x2, y2, class], class -1 pads
    paths: list[str]
    sizes: np.ndarray  # (n, 2) int: each scaled image's (height, width) on the canvas

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class BoxData:
    key: str
    size: tuple[int, int]  # canvas (height, width)
    splits: dict[str, BoxSplit]


def scaled_image(image: Any) -> tuple[np.ndarray, float]:
    """A PIL image as the search prepares it (longer side at most :data:`MAX_SIDE`, never enlarged; RGB pixels)
    and the scale applied to it."""
    from PIL import Image

    w, h = image.size
    scale = min(1.0, MAX_SIDE / max(w, h))
    if scale < 1.0:
        image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR)
    return np.asarray(image.convert("RGB")), scale


def prepare_boxes(splits: LabeledSplits) -> BoxData:
    """Decode, scale and place every image once; boxes scaled with their image."""
    from PIL import Image

    decoded: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for split in SPLITS:
        rows = []
        for item in splits.split(split).inputs:
            with Image.open(item.path) as im:
                pixels, scale = scaled_image(im)
            boxes = np.concatenate([item.boxes * scale, item.labels[:, None].astype(np.float32)], axis=1)
            rows.append((pixels, boxes.astype(np.float32)))
        decoded[split] = rows
    height = max(p.shape[0] for rows in decoded.values() for p, _ in rows)
    width = max(p.shape[1] for rows in decoded.values() for p, _ in rows)
    most = max((len(b) for rows in decoded.values() for _, b in rows), default=1)
    out = {}
    for split, rows in decoded.items():
        canvas = np.zeros((len(rows), height, width, 3), dtype=np.uint8)
        for i, (p, _) in enumerate(rows):
            canvas[i, :p.shape[0], :p.shape[1]] = p
        out[split] = BoxSplit(canvas, pad_rows([b for _, b in rows], most, 5),
                              [item.path for item in splits.split(split).inputs],
                              np.array([p.shape[:2] for p, _ in rows], dtype=np.int64).reshape(-1, 2))
    return BoxData(key=f"boxes-{MAX_SIDE}", size=(height, width), splits=out)


class _Collate:
    """uint8 canvases -> float images in [0, 1] (the detector normalises) and padded boxes, augmented per image in
    training with torchvision's box-aware transforms."""

    def __init__(self, data: BoxData, split: str, augment: str, hflip: bool):
        from torchvision.transforms import v2

        self.split = data.splits[split]
        ops: list[Any] = []
        if augment in ("light", "strong"):
            ops.append(v2.RandomPhotometricDistort(p=0.5))
        if augment == "strong":
            ops.append(v2.RandomAffine(degrees=0, translate=(0.05, 0.05), scale=(0.8, 1.25)))
        if hflip:
            ops.append(v2.RandomHorizontalFlip())
        self.transform = v2.Compose(ops + [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=2)]) \
            if ops else None

    def __call__(self, idx: list[int]) -> Batch:
        from torchvision import tv_tensors
        from torchvision.transforms import v2

        images = torch.from_numpy(self.split.images[np.asarray(idx)]).permute(0, 3, 1, 2)
        boxes = torch.from_numpy(self.split.boxes[np.asarray(idx)])
        if self.transform is not None:
            size = tuple(images.shape[-2:])
            outs, rows = [], []
            for img, rb in zip(images, boxes):
                keep = rb[:, 4] >= 0
                boxed = tv_tensors.BoundingBoxes(rb[keep, :4], format="XYXY", canvas_size=size)
                img2, target = self.transform(img, {"boxes": boxed, "labels": rb[keep, 4]})
                outs.append(img2)
                rows.append(np.concatenate([np.asarray(target["boxes"], dtype=np.float32).reshape(-1, 4),
                                            np.asarray(target["labels"], dtype=np.float32)[:, None]], axis=1))
            images = torch.stack(outs)
            boxes = torch.from_numpy(pad_rows(rows, boxes.shape[1], 5))
        x = v2.functional.to_dtype(images, torch.float32, scale=True)
        return {"images": x, "boxes": boxes}, boxes


@register_task
class Detection(Task):
    name = "detection"

    # ------------------------------------------------------------- backbones
    def describe_backbone(self, name: str, settings: Any) -> BackboneInfo:
        from timm.data import resolve_data_config

        from autotransfer.tasks.image_cls import ImageClassification

        found = ImageClassification().describe_backbone(name, settings)  # the same names, checks and errors
        from autotransfer.detectors import feature_body

        with torch.device("meta"):
            body = feature_body(found.source, pretrained=False)
            cfg = resolve_data_config({}, model=body)
        blocks = find_block_list(body)
        return BackboneInfo(name=name, source=found.source,
                            num_layers=len(body.get_submodule(blocks)) if blocks else 0, preprocessing=f"boxes-{MAX_SIDE}",
                            details={"mean": list(cfg["mean"]), "std": list(cfg["std"]),
                                     "architecture": body.pretrained_cfg.get("architecture"),
                                     "strides": list(body.feature_info.reduction())})

    # ---------------------------------------------------------- preparation
    def prepare(self, backbones: list[BackboneInfo], splits: LabeledSplits,
                settings: Any) -> tuple[dict[str, Any], PreparationStats]:
        """Images decoded and scaled once for every backbone (the detector normalises per backbone)."""
        start = time.perf_counter()
        data = prepare_boxes(splits)
        ids = list(splits.source.get("category_ids") or range(len(splits.label_names)))
        for bb in backbones:
            bb.details["image_size"] = list(data.size)  # what the detector is built for
            bb.details["category_ids"] = ids  # what its predictions call the classes (export)
        return {bb.name: data for bb in backbones}, PreparationStats(distinct=1, runs=1,
                                                                       seconds=time.perf_counter() - start)

    def recipes(self) -> list[Recipe]:
        """torchvision's detection fine-tuning tutorial: Faster R-CNN, everything trained, SGD lr 0.005 with
        momentum 0.9 and weight decay 5e-4, batch 2 (here for the search's budget)."""
        return [Recipe("Faster R-CNN fine-tuning, SGD lr 0.005", "full",
                       {"lr": 5e-3, "head_lr": 5e-3, "layer_decay": 1.0, "weight_decay": 5e-4, "warmup_ratio": 0.0,
                        "batch_size": 2, "architecture": "fasterrcnn", "augment": "none"},
                       fixed={"optimizer": "sgd"})]

    # ----------------------------------------------------------------- model
    def build(self, backbone: BackboneInfo, label_names: list[str], settings: Mapping[str, Any]) -> ModelBundle:
        from autotransfer.detectors import build_detector, feature_body, head_parameter_names

        architecture = str(settings.get("architecture", "fasterrcnn"))
        model = build_detector(architecture, feature_body(backbone.source), len(label_names),
                               backbone.details.get("image_size", (MAX_SIDE, MAX_SIDE)), backbone.details["mean"],
                               backbone.details["std"], float(settings.get("anchor_scale", 1.0)),
                               DETECTIONS_PER_IMAGE)
        model.autotransfer_config = {"architecture": architecture,  # type: ignore[assignment]
                                     "anchor_scale": float(settings.get("anchor_scale", 1.0))}
        head = head_parameter_names(model)
        blocks = find_block_list(model.backbone.body)
        if blocks is None:
            block_of, n_blocks = {}, 0
        else:
            block_of, n_blocks = blocks_by_list(model, f"backbone.body.{blocks}")
        # LoRA on the body's dense convolutions inside its blocks (depthwise ones excluded), as image-cls does
        targets = [n for n, m in model.named_modules()
                   if isinstance(m, nn.Conv2d) and m.groups == 1 and f"{n}.weight" in block_of]
        return layout(model, head, block_of, n_blocks, targets)

    # ---------------------------------------------------------------- batches
    def batches(self, prepared: BoxData, split: str, batch_size: int, *, train: bool, seed: int = 0,
                pin_memory: bool = False, config: Optional[Mapping[str, Any]] = None) -> Iterable[Batch]:
        config = config or {}
        augment = str(config.get("augment", "light")) if train else "none"
        collate = _Collate(prepared, split, augment, bool(config.get("hflip", False)) and train)
        n = len(prepared.splits[split])
        if train:
            gen = torch.Generator().manual_seed(seed)
            torch.manual_seed(seed)
            return DataLoader(range(n), batch_size=batch_size, shuffle=True, generator=gen, collate_fn=collate,
                              pin_memory=pin_memory)
        return DataLoader(range(n), batch_size=batch_size, shuffle=False, collate_fn=collate, pin_memory=pin_memory)

    def num_examples(self, prepared: BoxData, split: str) -> int:
        return len(prepared.splits[split])

    def with_train(self, prepared: BoxData, splits: tuple[str, ...]) -> BoxData:
        parts = [prepared.splits[name] for name in splits]
        width = max(p.boxes.shape[1] for p in parts)
        merged = BoxSplit(np.concatenate([p.images for p in parts]),
                          np.concatenate([pad_rows(list(p.boxes), width, 5) for p in parts]),
                          [path for p in parts for path in p.paths], np.concatenate([p.sizes for p in parts]))
        return BoxData(prepared.key, prepared.size, {**prepared.splits, "train": merged})

    def labels(self, prepared: BoxData, split: str) -> np.ndarray:
        return prepared.splits[split].boxes

    def logits(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        from autotransfer.detectors import forward

        config = _config_of(model)
        return forward(model, inputs["images"], inputs.get("boxes"), config["architecture"], DETECTIONS_PER_IMAGE)

    def gallery(self, prepared: BoxData, split: str, predictions: np.ndarray, label_names: list[str],
                limit: int) -> list[tuple[str, Any]]:
        """Images spread over the split, true boxes in green and predicted ones (score >= 0.5) in red."""
        from PIL import Image

        from autotransfer.detectors import draw_boxes

        part = prepared.splits[split]
        picked = np.unique(np.linspace(0, len(part) - 1, min(limit, len(part))).round().astype(int)) \
            if len(part) else []
        drawn = []
        for i in picked:
            h, w = (int(v) for v in part.sizes[i])
            truth = [tuple(b) for b in part.boxes[i] if b[4] >= 0]
            predicted = [(*b[:4], int(b[5]), float(b[4])) for b in predictions[i]
                         if b[5] >= 0 and b[4] >= GALLERY_SCORE]
            image = draw_boxes(Image.fromarray(part.images[i, :h, :w]), predicted, label_names, truth)
            drawn.append((f"{Path(part.paths[i]).name}: {len(truth)} true (green), {len(predicted)} predicted "
                          f"with score >= {GALLERY_SCORE} (red)", image))
        return drawn

    # ----------------------------------------------------------------- export
    def export(self, model: nn.Module, backbone: BackboneInfo, label_names: list[str], out: Path) -> None:
        from autotransfer.detectors import save_detector

        config = _config_of(model)
        save_detector(model, out, architecture=config["architecture"], timm_architecture=backbone.details["architecture"],
                      classes=list(label_names), image_size=backbone.details["image_size"],
                      category_ids=list(backbone.details.get("category_ids") or range(len(label_names))),
                      mean=backbone.details["mean"], std=backbone.details["std"],
                      anchor_scale=config["anchor_scale"], detections_per_image=DETECTIONS_PER_IMAGE)

    def predict(self, model_dir: Path, data: Path, settings: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        from autotransfer.detectors import predict_images

        draw = settings.get("draw")
        return predict_images(model_dir, data, float(settings.get("score_threshold") or 0.05),
                              Path(draw) if draw else None)


def _config_of(model: nn.Module) -> dict[str, Any]:
    """The detector's architecture and anchors, set on it at build (found inside a model a strategy wrapped, peft)."""
    for m in model.modules():
        config = getattr(m, "autotransfer_config", None)
        if config is not None:
            return config
    raise AttributeError("not an autotransfer detector")
