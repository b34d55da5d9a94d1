"""Detectors: torchvision's detection architectures on any timm backbone, through a feature pyramid.

A timm model created with ``features_only=True`` gives feature maps at several strides (the same
``local-dir:`` folders and hub names image-cls takes); a torchvision ``FeaturePyramidNetwork`` turns the
coarser ones (stride 8 and up by default: small objects need the finer maps, CPUs the fewer) into equal-width
maps, and torchvision's Faster R-CNN, RetinaNet or FCOS detects on them.  Nothing detection-specific is written
here: anchors, the RPN, RoI pooling, losses and box decoding are torchvision's.

The image normalisation is the backbone's own (timm's pretrained config), and the detector's resize is set to
the size the images were prepared at, so it does not resize again.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import torch
from torch import nn

ARCHITECTURES = ("fasterrcnn", "retinanet", "fcos")
#: the feature maps the pyramid reads: strides of at least this many pixels
MIN_STRIDE = 8
#: anchor sizes per pyramid level, in pixels of the prepared image, before the space's ``anchor_scale``
ANCHOR_BASE = 16
FPN_CHANNELS = 128


class TimmPyramid(nn.Module):
    """A timm ``features_only`` body and a torchvision FPN on its maps: what torchvision's detectors take as
    ``backbone`` (an ``OrderedDict`` of maps, and ``out_channels``)."""

    def __init__(self, body: nn.Module, out_channels: int = FPN_CHANNELS, channels_last: bool = True):
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork
        from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

        self.body = body
        self.fpn = FeaturePyramidNetwork(list(body.feature_info.channels()), out_channels,
                                         extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels
        #: run the body on a channels-last copy of the batch (convolutions are faster in that layout; see
        #: ``autotransfer.tasks.image_cls.channels_last``); its maps go on to the pyramid in the default layout
        self.channels_last = channels_last

    @property
    def levels(self) -> list[str]:
        """Names of the maps the body gives (the pyramid adds one pooled level after them)."""
        return [str(i) for i in range(len(self.body.feature_info.channels()))]

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        if self.channels_last:
            maps = [f.contiguous() for f in self.body(x.contiguous(memory_format=torch.channels_last))]
        else:
            maps = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(maps)))


def feature_body(source: str, pretrained: bool = True) -> nn.Module:
    """The timm backbone as a feature extractor over its maps of stride >= :data:`MIN_STRIDE`."""
    import logging

    import timm

    # loading a classifier's weights into its feature extractor leaves the classifier's keys unused, as meant
    logging.getLogger("timm.models._builder").setLevel(logging.ERROR)
    with torch.device("meta"):
        probe = timm.create_model(source, pretrained=False, features_only=True)
    reductions = probe.feature_info.reduction()
    indices = tuple(i for i, r in enumerate(reductions) if r >= MIN_STRIDE) or (len(reductions) - 1,)
    return timm.create_model(source, pretrained=pretrained, features_only=True, out_indices=indices)


def build_detector(architecture: str, body: nn.Module, num_classes: int, image_size: Sequence[int],
                   mean: Sequence[float], std: Sequence[float], anchor_scale: float = 1.0,
                   detections_per_image: int = 100) -> nn.Module:
    """A torchvision detector for ``num_classes`` object classes (background added where the architecture
    wants one) on ``body``, for images prepared at ``image_size`` (height, width)."""
    from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown detection architecture {architecture!r}; choose one of {', '.join(ARCHITECTURES)}")
    backbone = TimmPyramid(body)
    levels = len(backbone.levels) + 1  # + the pooled level
    reductions = list(body.feature_info.reduction()) + [body.feature_info.reduction()[-1] * 2]
    sizes = tuple((max(4, int(round(ANCHOR_BASE * anchor_scale * r / MIN_STRIDE))),) for r in reductions)
    size = dict(min_size=min(image_size), max_size=max(image_size), image_mean=list(mean), image_std=list(std),
                detections_per_img=detections_per_image)
    if architecture == "fasterrcnn":
        anchors = AnchorGenerator(sizes=sizes, aspect_ratios=((0.5, 1.0, 2.0),) * levels)
        pool = MultiScaleRoIAlign(featmap_names=backbone.levels, output_size=7, sampling_ratio=2)
        # proposal counts of torchvision's low-resolution mobile configuration: a few objects per image need no
        # 2,000 proposals, and CPUs pay for each
        return FasterRCNN(backbone, num_classes=num_classes + 1, rpn_anchor_generator=anchors, box_roi_pool=pool,
                          rpn_pre_nms_top_n_train=1000, rpn_post_nms_top_n_train=500, rpn_pre_nms_top_n_test=300,
                          rpn_post_nms_top_n_test=300, box_batch_size_per_image=256, **size)
    if architecture == "retinanet":
        anchors = AnchorGenerator(sizes=tuple((s[0], int(s[0] * 1.26), int(s[0] * 1.59)) for s in sizes),
                                  aspect_ratios=((0.5, 1.0, 2.0),) * levels)
        return RetinaNet(backbone, num_classes=num_classes, anchor_generator=anchors, **size)
    anchors = AnchorGenerator(sizes=sizes, aspect_ratios=((1.0,),) * levels)
    return FCOS(backbone, num_classes=num_classes, anchor_generator=anchors, **size)


def class_offset(architecture: str) -> int:
    """What to add to a class id for the detector's labels: Faster R-CNN keeps 0 for the background."""
    return 1 if architecture == "fasterrcnn" else 0


def head_parameter_names(model: nn.Module) -> list[str]:
    """Everything outside the pretrained body: the pyramid, the RPN and the box heads (trained by every
    strategy; the detection analogue of a classifier head)."""
    return [n for n, _ in model.named_parameters() if not n.startswith("backbone.body.")]


def detections_tensor(outputs: list[dict[str, torch.Tensor]], width: int, offset: int) -> torch.Tensor:
    """torchvision's per-image detections as one ``(images, width, 6)`` tensor ``[x1, y1, x2, y2, score, class]``,
    classes shifted back to the task's ids and rows past each image's detections padded with class -1."""
    out = torch.zeros(len(outputs), width, 6)
    out[..., 5] = -1
    for i, det in enumerate(outputs):
        n = min(width, len(det["scores"]))
        out[i, :n, :4] = det["boxes"][:n].float().cpu()
        out[i, :n, 4] = det["scores"][:n].float().cpu()
        out[i, :n, 5] = det["labels"][:n].float().cpu() - offset
    return out


def targets(boxes: torch.Tensor, offset: int) -> list[dict[str, torch.Tensor]]:
    """A batch's padded ``(images, M, 5)`` true boxes as torchvision's per-image target dicts."""
    out = []
    for rows in boxes:
        keep = rows[:, 4] >= 0
        out.append({"boxes": rows[keep, :4].float(), "labels": rows[keep, 4].long() + offset})
    return out


def forward(model: nn.Module, images: torch.Tensor, boxes: Optional[torch.Tensor], architecture: str,
            width: int) -> torch.Tensor:
    """Training: the detector's loss terms as one 1-D tensor; evaluation: the padded detections."""
    offset = class_offset(architecture)
    batch = list(images)
    if model.training:
        assert boxes is not None
        losses: dict[str, Any] = model(batch, targets(boxes, offset))
        return torch.stack([v for _, v in sorted(losses.items())])
    return detections_tensor(model(batch), width, offset).to(images.device)


#: the exported detector's description, beside its weights
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
#: the ONNX graph of the exported detector, written when the ``onnx`` package is installed (the ``onnx`` extra)
ONNX_FILE = "model.onnx"
#: ONNX opset of the export (torchvision's detection ops need 11 or later)
ONNX_OPSET = 17


def save_detector(model: nn.Module, out: Path, **config: Any) -> None:
    """``out/model.safetensors`` (the whole detector's weights) and ``out/config.json`` (everything that
    rebuilds it: architecture, timm body, classes, input size, normalisation, anchors)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    body = model.backbone.body
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_FILE))
    onnx = export_onnx(model, out / ONNX_FILE, config["image_size"])
    (out / CONFIG_FILE).write_text(json.dumps({
        "format": "autotransfer-detector", **config,
        "out_indices": [int(i) for i in body.feature_info.out_indices],  # the feature maps the pyramid reads
        "onnx": onnx,
    }, indent=2))


def export_onnx(model: nn.Module, path: Path, image_size: Sequence[int]) -> dict[str, Any]:
    """Write the detector as ONNX with torch's TorchScript-based exporter (the one torchvision's detectors
    support): input ``image``, one float ``(3, height, width)`` image in [0, 1] of any size; outputs ``boxes``
    ``(N, 4)`` in that image's pixels, ``labels`` ``(N,)`` (as the torchvision model's) and ``scores`` ``(N,)``.
    Returns what ``config.json`` records: the file, or why none was written (no ``onnx`` package, or an error)."""
    import importlib.util
    import warnings

    if importlib.util.find_spec("onnx") is None:
        return {"file": None, "reason": "the onnx package is not installed (pip install 'autotransfer[onnx]')"}
    was_training = model.training
    device = next(model.parameters()).device
    example = torch.rand(3, *(int(v) for v in image_size), device=device)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings from inside torchvision, expected for detectors
            torch.onnx.export(model.eval(), ([example],), str(path), opset_version=ONNX_OPSET, dynamo=False,
                              input_names=["image"], output_names=["boxes", "labels", "scores"],
                              dynamic_axes={"image": {1: "height", 2: "width"}})
    except Exception as exc:  # noqa: BLE001 - the safetensors export stands; the config says why ONNX did not
        path.unlink(missing_ok=True)
        return {"file": None, "reason": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    finally:
        model.train(was_training)
    return {"file": path.name, "opset": ONNX_OPSET, "input": "image: float32 (3, height, width) in [0, 1]",
            "outputs": ["boxes (N, 4) x1 y1 x2 y2", "labels (N,)", "scores (N,)"]}


def load_detector(folder: str | Path) -> nn.Module:
    """The exported detector as a plain torchvision model in eval mode::

        model = autotransfer.detectors.load_detector("reports/<run>/best")
        detections = model([image_tensor_0_to_1])  # [{"boxes", "labels", "scores"}], labels are 1-based for
                                                  # Faster R-CNN (config.json "classes"[label - 1])

    The timm body is rebuilt from its architecture name (no pretrained download) and every weight comes from
    ``model.safetensors``, loaded tensors-only.
    """
    import timm
    from safetensors.torch import load_file

    folder = Path(folder)
    config = json.loads((folder / CONFIG_FILE).read_text())
    body = timm.create_model(config["timm_architecture"], pretrained=False, features_only=True,
                             out_indices=tuple(config["out_indices"]))
    model = build_detector(config["architecture"], body, len(config["classes"]), config["image_size"],
                           config["mean"], config["std"], config["anchor_scale"], config["detections_per_image"])
    model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    model.autotransfer_config = {"architecture": config["architecture"],  # type: ignore[assignment]
                                 "anchor_scale": config["anchor_scale"]}
    return model.eval()


def predict_images(model_dir: Path, data: Path, score_threshold: float = 0.05,
                   draw: Optional[Path] = None) -> Iterator[dict[str, Any]]:
    """COCO results rows (``file_name``, ``category_id``: the training file's own category id, ``category``,
    ``bbox`` as ``[x, y, w, h]``, ``score``) for every image under ``data`` (a folder, or one image); with
    ``draw``, each image with its boxes there."""
    from PIL import Image
    from torchvision.transforms.v2 import functional as F

    from autotransfer.errors import UserError
    from autotransfer.images import IMAGE_SUFFIXES

    model = load_detector(model_dir)
    config = json.loads((Path(model_dir) / CONFIG_FILE).read_text())
    classes, offset = config["classes"], class_offset(config["architecture"])
    ids = config.get("category_ids") or list(range(len(classes)))  # exports before the ids were kept: indices
    paths = [data] if data.is_file() else sorted(p for p in data.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise UserError(f"--data: no images under {data}")
    limit = max(config["image_size"])
    for path in paths:
        with Image.open(path) as im:
            image = im.convert("RGB")
        scale = min(1.0, limit / max(image.size))
        small = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale)))) \
            if scale < 1.0 else image
        with torch.inference_mode():
            det = model([F.to_dtype(F.pil_to_tensor(small), torch.float32, scale=True)])[0]
        kept = []
        for box, label, score in zip(det["boxes"].tolist(), det["labels"].tolist(), det["scores"].tolist()):
            if score < score_threshold:
                continue
            x1, y1, x2, y2 = (v / scale for v in box)  # back to the original image's pixels
            cls = int(label) - offset
            kept.append((x1, y1, x2, y2, cls, score))
            yield {"file_name": str(path), "category_id": ids[cls], "category": classes[cls],
                   "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                   "score": round(float(score), 4)}
        if draw is not None:
            Path(draw).mkdir(parents=True, exist_ok=True)
            draw_boxes(image, kept, classes).save(Path(draw) / path.name)


def draw_boxes(image: Any, predicted: list[tuple[Any, ...]], classes: list[str],
               truth: Optional[list[tuple[Any, ...]]] = None) -> Any:
    """``image`` (PIL) with ``predicted`` boxes ``(x1, y1, x2, y2, class, score)`` in red, labelled, and the
    ``truth`` boxes ``(x1, y1, x2, y2, class)`` in green, drawn by torchvision."""
    from torchvision.transforms.v2 import functional as F
    from torchvision.utils import draw_bounding_boxes

    pixels = F.pil_to_tensor(image.convert("RGB"))
    if truth:
        pixels = draw_bounding_boxes(pixels, torch.tensor([b[:4] for b in truth], dtype=torch.float32),
                                     colors=(40, 200, 40), width=2)
    if predicted:
        pixels = draw_bounding_boxes(pixels, torch.tensor([b[:4] for b in predicted], dtype=torch.float32),
                                     labels=[f"{classes[int(b[4])]} {b[5]:.2f}" for b in predicted],
                                     colors=(255, 40, 40), width=2)
    return F.to_pil_image(pixels)
