"""``image-cls``: image classification with timm backbones (hub names or ``local-dir:`` folders).

Preprocessing comes from each model's pretrained config (``timm.data.resolve_data_config``):
input size, resize (crop_pct), interpolation, mean/std.  Images are decoded once per
(resize size, interpolation) into a uint8 array shared by all trials; each batch is then
cropped/augmented per sample with torchvision transforms and normalised with the
model's mean/std.  Layer groups for freeze depth and layer-wise LR decay come from
timm's ``group_matcher``, so no architecture needs a table here.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from autotransfer.backbones import PACKAGE, HubUnavailable, offline_hint, package_folder
from autotransfer.data import SPLITS, LabeledSplits
from autotransfer.errors import UserError
from autotransfer.images import IMAGE_SUFFIXES, decode_images
from autotransfer.recipes import Recipe
from autotransfer.strategies.base import ModelBundle
from autotransfer.tasks import register_task
from autotransfer.tasks.base import BackboneInfo, Batch, IndexedCollate, PreparationStats, Task

LOCAL = "local-dir:"
AUGMENTATIONS = ("none", "light", "strong")


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """A batch of NCHW images in the channels-last memory layout (same shape and values).

    Convolutions then run on it in that layout and pass it on, in the forward and the backward
    pass (PyTorch's performance tuning guide recommends it for vision models, CPU and GPU).  The
    weights keep their layout, so checkpoints and exports are unchanged.  Measured by
    ``benchmarks/memory_format.py``; a ViT, whose patch embedding turns the image into tokens at
    once, neither gains nor loses.
    """
    return x.contiguous(memory_format=torch.channels_last)


def timm_name(name: str) -> str:
    """What ``timm.create_model`` takes: a hub/timm name, or ``local-dir:<abs folder>`` for folders."""
    if name.startswith(LOCAL):
        inner = name[len(LOCAL):]
        return LOCAL + str(package_folder(inner) if inner.startswith(PACKAGE) else Path(inner).expanduser().resolve())
    if name.startswith(PACKAGE):
        return LOCAL + str(package_folder(name))
    if name.startswith(("./", "../", "/", "~")):
        return LOCAL + str(Path(name).expanduser().resolve())
    return name


@dataclass
class ImageSplit:
    pixels: np.ndarray  # (n, S, S, 3) uint8, S = resize size
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class ImageData:
    """Decoded images of one preprocessing, plus the per-backbone crop and normalisation."""

    key: str
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    splits: dict[str, ImageSplit]

    def for_backbone(self, crop: int, mean: Any, std: Any) -> "ImageData":
        return ImageData(self.key, crop, tuple(mean), tuple(std), self.splits)


class _Collate:
    """uint8 HWC crops -> augmented, normalised float NCHW batches (per-sample random transforms)."""

    def __init__(self, data: ImageData, split: str, augment: str):
        from torchvision.transforms import v2

        self.split = data.splits[split]
        crop = data.crop
        if augment == "light":
            ops = [v2.RandomResizedCrop(crop, scale=(0.35, 1.0), antialias=True), v2.RandomHorizontalFlip()]
        elif augment == "strong":
            ops = [v2.RandomResizedCrop(crop, scale=(0.08, 1.0), antialias=True), v2.RandomHorizontalFlip(),
                   v2.RandomRotation(15), v2.ColorJitter(0.4, 0.4, 0.4, 0.05)]
        else:
            ops = [v2.CenterCrop(crop)]
        self.transform = v2.Compose(ops)
        self.normalize = v2.Normalize(mean=list(data.mean), std=list(data.std))

    def __call__(self, idx: list[int]) -> Batch:
        from torchvision.transforms import v2

        pix = torch.from_numpy(self.split.pixels[np.asarray(idx)]).permute(0, 3, 1, 2)  # N,3,S,S uint8
        images = torch.stack([self.transform(img) for img in pix])
        x = self.normalize(v2.functional.to_dtype(images, torch.float32, scale=True))
        return {"x": x}, torch.from_numpy(self.split.labels[np.asarray(idx)])


def _compile_kinds(matcher: Mapping[str, Any]) -> list[tuple[re.Pattern, str]]:
    """timm matcher entries -> (regex, 'stem'|'block'|'tail') in timm's first-match order."""
    out = []
    for group, spec in matcher.items():
        if spec is None:
            continue
        entries = spec if isinstance(spec, (list, tuple)) else [(spec, None)]
        for regex, suffix in entries:
            kind = "stem" if group == "stem" else ("block" if suffix is None else "tail")
            out.append((re.compile(regex), kind))
    return out


def timm_layout(model: nn.Module, head: list[str]) -> ModelBundle:
    """Stem, blocks and tail from the model's ``group_matcher``; LoRA targets inside the blocks."""
    from timm.models import group_parameters

    matcher = model.group_matcher(coarse=False)
    group_of = group_parameters(model, matcher, reverse=True)
    kinds = _compile_kinds(matcher)
    head_set = set(head)
    stem, tail, by_group = [], [], {}
    for name, _ in model.named_parameters():
        if name in head_set:
            continue
        kind = next((k for rx, k in kinds if rx.match(name)), "tail")
        if kind == "block":
            by_group.setdefault(group_of[name], []).append(name)
        else:
            (stem if kind == "stem" else tail).append(name)
    blocks = [by_group[g] for g in sorted(by_group)]
    block_modules = {n.rsplit(".", 1)[0] for b in blocks for n in b}
    # LoRA on the blocks' linear layers (ViTs) and dense convolutions (CNNs; depthwise ones excluded)
    targets = [name for name, m in model.named_modules() if name in block_modules and
               (isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1))]
    return ModelBundle(model=model, head=list(head), stem=stem, blocks=blocks, tail=tail, lora_targets=targets,
                       head_modules=sorted({n.rsplit(".", 1)[0] for n in head}))


@register_task
class ImageClassification(Task):
    name = "image-cls"

    # ------------------------------------------------------------------ data
    # ------------------------------------------------------------- backbones
    def describe_backbone(self, name: str, settings: Any) -> BackboneInfo:
        import timm
        from timm.data import resolve_data_config

        source = timm_name(name)
        if source.startswith(LOCAL):
            folder = Path(source[len(LOCAL):])
            if not (folder / "config.json").is_file():
                raise UserError(f"backbone {name!r}: {folder} is not a timm model folder (no config.json)")
        elif name not in timm.list_models(pretrained=True) and name.split(".")[0] not in timm.list_models():
            raise UserError(f"backbone {name!r}: not a timm model name (see timm.list_models()) "
                            "and not a local-dir: folder")
        try:
            if not source.startswith(LOCAL):
                # fetch (or find cached) pretrained weights now, once, rather than failing in every trial
                timm.create_model(source, pretrained=True, num_classes=2)
            with torch.device("meta"):
                skeleton = timm.create_model(source, pretrained=False, num_classes=2)
        except Exception as exc:  # noqa: BLE001 - timm and the hub raise many kinds; report one line
            if not source.startswith(LOCAL):
                raise HubUnavailable(offline_hint(name, exc)) from None
            raise UserError(f"backbone {name!r}: timm cannot build it ({str(exc).splitlines()[0][:160]})") from None
        cfg = resolve_data_config({}, model=skeleton)
        head = self._head_names(skeleton)
        bundle = timm_layout(skeleton, head)
        crop = int(cfg["input_size"][-1])
        resize = int(math.floor(crop / float(cfg.get("crop_pct", 0.875) or 1.0)))
        interp = str(cfg.get("interpolation", "bicubic"))
        return BackboneInfo(
            name=name, source=source, num_layers=bundle.num_layers, preprocessing=f"{resize}-{interp}",
            details={"crop": crop, "resize": resize, "interpolation": interp,
                     "mean": list(cfg["mean"]), "std": list(cfg["std"])},
        )

    @staticmethod
    def _head_names(model: nn.Module) -> list[str]:
        classifier = model.get_classifier()
        prefix = next((n for n, m in model.named_modules() if m is classifier), None)
        if prefix is None or not isinstance(classifier, nn.Module):
            return []
        return [f"{prefix}.{n}" if prefix else n for n, _ in classifier.named_parameters()]

    # ---------------------------------------------------------- preparation
    def prepare(self, backbones: list[BackboneInfo], splits: LabeledSplits,
                settings: Any) -> tuple[dict[str, Any], PreparationStats]:
        """Decode every image once per (resize size, interpolation)."""
        stats = PreparationStats()
        start = time.perf_counter()
        cache: dict[str, ImageData] = {}
        out: dict[str, Any] = {}
        workers = max(2, int(getattr(settings, "cpus_per_trial", 1) or 1) * 2)
        for bb in backbones:
            key = bb.preprocessing
            if key not in cache:
                decoded = {}
                for split in SPLITS:
                    s = splits.split(split)
                    pixels, keep = decode_images(list(s.inputs), bb.details["resize"], bb.details["interpolation"],
                                                 workers=workers)
                    decoded[split] = ImageSplit(pixels, s.labels[keep])
                    if len(keep) == 0:
                        raise UserError(f"{settings.data}: no readable image in the {split} split")
                stats.runs += 1
                cache[key] = ImageData(key, bb.details["crop"], (0.0,) * 3, (1.0,) * 3, decoded)
            out[bb.name] = cache[key].for_backbone(bb.details["crop"], bb.details["mean"], bb.details["std"])
        stats.distinct = len(cache)
        stats.seconds = time.perf_counter() - start
        return out, stats

    def recipes(self) -> list[Recipe]:
        """The PyTorch transfer-learning tutorial's two recipes: the head alone on the frozen backbone (as
        a converged logistic regression, what its SGD epochs approach), and full fine-tuning with SGD
        (lr 1e-3, momentum 0.9, random-resized crops and flips), for the search's budget."""
        return [Recipe("head only (logistic regression)", "linear_probe", {"C": 1.0}),
                Recipe("full fine-tuning, SGD lr 1e-3", "full",
                       {"lr": 1e-3, "head_lr": 1e-3, "layer_decay": 1.0, "weight_decay": 0.0, "warmup_ratio": 0.0,
                        "augment": "light", "label_smoothing": 0.0, "batch_size": 16},
                       fixed={"optimizer": "sgd"})]

    # ----------------------------------------------------------------- model
    def build(self, backbone: BackboneInfo, label_names: list[str], settings: Mapping[str, Any]) -> ModelBundle:
        import timm

        model = timm.create_model(backbone.source, pretrained=True, num_classes=len(label_names))
        return timm_layout(model, self._head_names(model))

    # ---------------------------------------------------------------- batches
    def batches(self, prepared: ImageData, split: str, batch_size: int, *, train: bool, seed: int = 0,
                pin_memory: bool = False, config: Optional[Mapping[str, Any]] = None) -> Iterable[Batch]:
        augment = str((config or {}).get("augment", "light")) if train else "none"
        return self._loader(prepared, split, batch_size, train, seed, pin_memory,
                            _Collate(prepared, split, augment))

    def indexed_batches(self, prepared: ImageData, split: str, batch_size: int, *, train: bool, seed: int = 0,
                        pin_memory: bool = False, config: Optional[Mapping[str, Any]] = None,
                        ) -> Optional[Iterable[tuple[Batch, np.ndarray]]]:
        """Only without augmentation (``augment: none``): a randomly cropped image is not a fixed function of
        its row."""
        augment = str((config or {}).get("augment", "light")) if train else "none"
        if augment != "none":
            return None
        return self._loader(prepared, split, batch_size, train, seed, pin_memory,
                            IndexedCollate(_Collate(prepared, split, augment)))

    @staticmethod
    def _loader(prepared: ImageData, split: str, batch_size: int, train: bool, seed: int, pin_memory: bool,
                collate: Any) -> DataLoader:
        n = len(prepared.splits[split])
        if train:
            gen = torch.Generator().manual_seed(seed)
            torch.manual_seed(seed)  # per-sample augmentation draws from the global generator
            return DataLoader(range(n), batch_size=batch_size, shuffle=True, generator=gen, collate_fn=collate,
                              pin_memory=pin_memory)
        return DataLoader(range(n), batch_size=batch_size, shuffle=False, collate_fn=collate, pin_memory=pin_memory)

    def num_examples(self, prepared: ImageData, split: str) -> int:
        return len(prepared.splits[split])

    def with_train(self, prepared: ImageData, splits: tuple[str, ...]) -> ImageData:
        parts = [prepared.splits[name] for name in splits]
        merged = ImageSplit(np.concatenate([p.pixels for p in parts]), np.concatenate([p.labels for p in parts]))
        return ImageData(prepared.key, prepared.crop, prepared.mean, prepared.std,
                         {**prepared.splits, "train": merged})

    def labels(self, prepared: ImageData, split: str) -> np.ndarray:
        return prepared.splits[split].labels

    def logits(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        # here, on the batch's device, rather than in the loader: a pinned copy to the GPU need not keep the layout
        return model(channels_last(inputs["x"]))

    # ----------------------------------------------------------------- export
    def export(self, model: nn.Module, backbone: BackboneInfo, label_names: list[str], out: Path) -> None:
        from timm.models import save_for_hf

        save_for_hf(model, str(out), model_config={"label_names": list(label_names)}, safe_serialization=True)

    def predict(self, model_dir: Path, data: Path, settings: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        import timm
        from timm.data import create_transform, resolve_data_config
        from PIL import Image

        model = timm.create_model(LOCAL + str(Path(model_dir).resolve()), pretrained=True).eval()
        names = json.loads((Path(model_dir) / "config.json").read_text()).get("label_names")
        transform = create_transform(**resolve_data_config({}, model=model), is_training=False)
        if data.is_dir():
            paths = sorted(str(p) for p in data.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            from autotransfer.images import PATH_COLUMNS
            from autotransfer.tables import read_table

            df = read_table(data)
            lower = {c.lower(): c for c in df.columns}
            col = settings.get("image_col") or next((lower[c] for c in PATH_COLUMNS if c in lower), None)
            if col is None or col not in df.columns:
                raise UserError(f"{data}: no image path column (columns: {', '.join(df.columns)}); pass --image-col")
            paths = [str((data.parent / p).resolve()) for p in df[col].astype(str)]
        if not paths:
            raise UserError(f"{data}: no images found")
        bs = int(settings.get("batch_size", 32))
        with torch.inference_mode():
            for i in range(0, len(paths), bs):
                chunk, tensors = [], []
                for p in paths[i:i + bs]:
                    try:
                        with Image.open(p) as im:
                            tensors.append(transform(im.convert("RGB")))
                            chunk.append(p)
                    except OSError:
                        yield {"path": p, "prediction": "", "score": float("nan"), "error": "unreadable image"}
                if not tensors:
                    continue
                probs = model(channels_last(torch.stack(tensors))).softmax(-1)
                score, idx = probs.max(-1)
                for p, s, k in zip(chunk, score.tolist(), idx.tolist()):
                    yield {"path": p, "prediction": names[k] if names else str(k), "score": s, "error": ""}
