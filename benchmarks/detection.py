"""Benchmark: ``autotransfer search --task detection`` vs the hand recipe of torchvision's detection fine-tuning
tutorial, on the shared GTSDB traffic-sign scenes (issue #18).

Data: ``../shared/data/gtsdb/coco_4class.json`` (600 road scenes, 816x480, 4 sign groups, 852 boxes), split by
image with the seed into ``--train-images`` training images and ``--eval-images`` held-out images (default
480 / 120).  The search gets the training images as ``train.json`` (it carves its own validation images out of
them) and the held-out ones as ``test.json``; the recipe trains on all the training images.  Both are scored on
the held-out images with torchmetrics' COCO mAP@[.5:.95] and mAP@.5.

- **recipe**: torchvision's tutorial, by hand: Faster R-CNN on the same timm body (MobileNetV2 from
  ``../shared/models/image``, built by :func:`autotransfer.detectors.build_detector` like the search's, so the
  architecture is the same), every parameter trained, SGD lr 0.005, momentum 0.9, weight decay 5e-4, batch 2,
  ``StepLR(step_size=3, gamma=0.1)``, ``--recipe-epochs`` epochs (the tutorial: 10), on the images scaled as
  the search scales them (longer side 640 px);
- **search**: the CLI on ``search_spaces/detection-local.yaml`` (MobileNetV2 and EfficientNet-Lite0 bodies x
  Faster R-CNN / RetinaNet x freeze depth / full fine-tuning x rates, anchors, augmentation), ``--num-samples``
  trials of at most ``--max-epochs`` epochs.

CPU reality: a Faster R-CNN step on these images takes seconds on 2 cores, so the default budget is small and
the JSON records it; on a GPU raise ``--recipe-epochs 10`` and the search's budget.

    python benchmarks/detection.py                                   # ~70 minutes on 2 CPU cores
    python benchmarks/detection.py --train-images 160 --eval-images 60 --recipe-epochs 3 --num-samples 3
    # on one GPU (the recipe on cuda, 4 trials sharing the GPU): the recipe took 116 s on an H100
    python benchmarks/detection.py --recipe-epochs 10 --num-samples 8 --max-epochs 10 --gpus-per-trial 0.25 \
        --time-budget 240 --backbones local-dir:../shared/models/image/mobilenetv2_100
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cli_search, provenance  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
GTSDB = REPO.parent / "shared" / "data" / "gtsdb"
BODY = REPO.parent / "shared" / "models" / "image" / "mobilenetv2_100"


def split(out: Path, train_n: int, eval_n: int, seed: int, gtsdb: Path = GTSDB) -> dict[str, list[dict]]:
    """``out/train.json`` and ``out/test.json`` (COCO, image paths relative to them) split by image."""
    coco = json.loads((gtsdb / "coco_4class.json").read_text())
    images = sorted(coco["images"], key=lambda im: im["id"])
    random.Random(seed).shuffle(images)
    if train_n + eval_n > len(images):
        raise SystemExit(f"GTSDB has {len(images)} images; asked for {train_n} + {eval_n}")
    out.mkdir(parents=True)
    (out / "images").symlink_to((gtsdb / "images").resolve())
    parts = {"train": images[:train_n], "test": images[train_n:train_n + eval_n]}
    for name, part in parts.items():
        ids = {im["id"] for im in part}
        (out / f"{name}.json").write_text(json.dumps({
            "images": [{**im, "file_name": f"images/{Path(im['file_name']).name}"} for im in part],
            "annotations": [a for a in coco["annotations"] if a["image_id"] in ids],
            "categories": coco["categories"]}))
    return {name: json.loads((out / f"{name}.json").read_text()) for name in parts}


def _load(coco: dict, folder: Path, classes: list[int]) -> list[tuple]:
    """(image tensor in [0, 1] scaled like the search's, boxes, 0-based class ids) per image."""
    import torch
    from PIL import Image

    from autotransfer.tasks.detection import scaled_image

    rows = []
    for im in coco["images"]:
        with Image.open(folder / im["file_name"]) as pic:
            array, scale = scaled_image(pic)  # the search's own scaling: both see the same pixels
        pixels = torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255.0
        anns = [a for a in coco["annotations"] if a["image_id"] == im["id"]]
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                              for a in anns], dtype=torch.float32).reshape(-1, 4) * scale
        labels = torch.tensor([classes.index(a["category_id"]) for a in anns], dtype=torch.int64)
        rows.append((pixels, boxes, labels))
    return rows


def recipe(data: dict[str, dict], folder: Path, epochs: int, seed: int, body_dir: Path = BODY,
           device: str = "cpu") -> dict:
    """torchvision's detection tutorial by hand on the search's Faster R-CNN + MobileNetV2 body."""
    import torch
    from torchmetrics.detection import MeanAveragePrecision

    from autotransfer.detectors import build_detector, feature_body
    from autotransfer.tasks import get_task

    torch.manual_seed(seed)
    classes = [c["id"] for c in data["train"]["categories"]]
    train, held_out = _load(data["train"], folder, classes), _load(data["test"], folder, classes)
    size = (max(p.shape[1] for p, _, _ in train + held_out), max(p.shape[2] for p, _, _ in train + held_out))
    body = get_task("detection").describe_backbone(f"local-dir:{body_dir}", None)  # its normalisation, as the search's
    model = build_detector("fasterrcnn", feature_body(body.source), len(classes), size, body.details["mean"],
                           body.details["std"]).to(device)
    train = [(p.to(device), b.to(device), lab.to(device)) for p, b, lab in train]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.005, momentum=0.9, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.1)
    start = time.perf_counter()
    order = list(range(len(train)))
    rng = random.Random(seed)
    for _ in range(epochs):
        model.train()
        rng.shuffle(order)
        for i in range(0, len(order), 2):
            batch = [train[j] for j in order[i:i + 2]]
            losses = model([p for p, _, _ in batch], [{"boxes": b, "labels": lab + 1} for _, b, lab in batch])
            loss = sum(losses.values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        schedule.step()
    train_s = time.perf_counter() - start
    model.eval()
    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox")
    with torch.inference_mode():
        for pixels, boxes, labels in held_out:
            det = {k: v.cpu() for k, v in model([pixels.to(device)])[0].items()}
            metric.update([{"boxes": det["boxes"], "scores": det["scores"], "labels": det["labels"] - 1}],
                          [{"boxes": boxes, "labels": labels}])
    scores = metric.compute()
    return {"map": float(scores["map"]), "map_50": float(scores["map_50"]), "train_s": round(train_s, 1),
            "wall_s": round(time.perf_counter() - start, 1), "epochs": epochs, "steps": epochs * -(-len(train) // 2),
            "device": device}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-images", type=int, default=480)
    ap.add_argument("--eval-images", type=int, default=120)
    ap.add_argument("--recipe-epochs", type=int, default=3)
    ap.add_argument("--num-samples", type=int, default=4)
    ap.add_argument("--max-epochs", type=int, default=3)
    ap.add_argument("--min-steps", type=int, default=None, help="the search's step floor (default: the CLI's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                    help="the recipe's device; auto: cuda when there is one (and the search gets --gpus-per-trial 1)")
    ap.add_argument("--gpus-per-trial", type=float, default=None, help="the search's (default: 1 on cuda, else 0)")
    ap.add_argument("--time-budget", type=float, default=None, help="the search's --time-budget in seconds")
    ap.add_argument("--backbones", default=None, help="the search's --backbones (default: the space's two bodies)")
    ap.add_argument("--gtsdb", type=Path, default=GTSDB, help="the folder holding coco_4class.json and images/")
    ap.add_argument("--body", type=Path, default=BODY, help="the recipe's timm body (a local-dir folder)")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    args = ap.parse_args()
    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    gpus = args.gpus_per_trial if args.gpus_per_trial is not None else (1.0 if device == "cuda" else 0.0)
    if device == "cpu":
        torch.set_num_threads(2)
    tmp = Path(tempfile.mkdtemp(prefix="autotransfer-detection-"))
    data = split(tmp / "data", args.train_images, args.eval_images, args.seed, args.gtsdb)
    hand = recipe(data, tmp / "data", args.recipe_epochs, args.seed, args.body, device)
    print(f"recipe: mAP {hand['map']:.4f}, mAP@.5 {hand['map_50']:.4f} on {args.eval_images} held-out images, "
          f"{hand['wall_s']:.0f}s", flush=True)
    flags = ["--task", "detection", "--data", str(tmp / "data"), "--space",
             str(REPO / "search_spaces" / "detection-local.yaml"), "--seed", str(args.seed),
             "--num-samples", str(args.num_samples), "--max-epochs", str(args.max_epochs)]
    if args.min_steps is not None:
        flags += ["--min-steps", str(args.min_steps)]
    if gpus:
        flags += ["--gpus-per-trial", f"{gpus:g}"]
    if args.time_budget is not None:
        flags += ["--time-budget", f"{args.time_budget:g}"]
    if args.backbones:
        flags += ["--backbones", args.backbones]
    results, best, wall = cli_search(flags, tmp / "run")
    tested = results["test"]["test_metrics"]
    found = {"map": tested["map"], "map_50": tested["map_50"], "wall_s": round(wall, 1),
             "best": {k: best.get(k) for k in ("backbone", "strategy", "params", "best_metric", "status")},
             "ap_per_class": results["test"].get("ap_per_class"),
             "trials": [{"strategy": t["strategy"], "backbone": Path(t["backbone"]).name, "status": t["status"],
                         "validation_map": t["best_metric"], "wall_s": t["wall_time_s"], "params": t["params"]}
                        for t in results["trials"]],
             "budget": results.get("budget")}
    print(f"search: mAP {found['map']:.4f}, mAP@.5 {found['map_50']:.4f}, {wall:.0f}s "
          f"(best: {best['strategy']} on {Path(best['backbone']).name})", flush=True)
    out = {"benchmark": "detection", **provenance(("torch", "torchvision", "timm", "ray", "optuna", "torchmetrics")),
           "settings": {k: str(v) for k, v in vars(args).items()},
           "data": {"train_images": args.train_images, "held_out_images": args.eval_images,
                    "held_out_boxes": len(data["test"]["annotations"])},
           "recipe": hand, "search": found,
           "ratios": {"map_difference": round(found["map"] - hand["map"], 4),
                      "wall_search_over_recipe": round(found["wall_s"] / hand["wall_s"], 2)}}
    args.out.write_text(json.dumps(out, indent=2, default=str))
    print("->", args.out)


if __name__ == "__main__":
    main()
