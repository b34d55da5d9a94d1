"""Benchmark: image batches in the channels-last memory layout vs the default (contiguous NCHW).

The image task hands its models channels-last batches (``autotransfer.tasks.image_cls.channels_last``);
the weights keep their layout.  For each shared image backbone, loaded through the same ``local-dir:``
path as a search, in this one process, side by side and interleaved (so that load from other
processes falls on both):

- **train step**: forward, cross-entropy, backward and an AdamW step at ``--batch-size``;
- **eval forward**: a forward pass without gradients (validation, frozen features, prediction);

each timed with the default layout and with channels-last inputs, ``--threads`` torch threads (a
trial's share of the machine: 1 when two trials run on 2 cores), median of ``--repeats`` rounds of
``--steps`` steps.  Prints the speed-up (default time / channels-last time) and the largest logit
difference between the two layouts (same numbers up to float rounding).  Then a Faster R-CNN
training step on each CNN body (``autotransfer.detectors``: the body runs channels-last, its maps
go to the pyramid in the default layout) with the conversion on and off.  Target: faster on the CNNs,
no slower (>= 0.95x) on the ViT.

    python benchmarks/memory_format.py           # ~4 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import provenance  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO.parent / "shared" / "models" / "image"


def _timed(fn, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def measure(folder: Path, args: argparse.Namespace) -> dict:
    import timm
    import torch

    from autotransfer.tasks.image_cls import channels_last

    torch.manual_seed(0)
    model = timm.create_model(f"local-dir:{folder}", pretrained=True, num_classes=2)
    size = model.pretrained_cfg.get("input_size", (3, 224, 224))[-1]
    x = torch.randn(args.batch_size, 3, size, size)
    y = torch.randint(0, 2, (args.batch_size,))
    layouts = {"default": x.contiguous(), "channels_last": channels_last(x)}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def train_step(inputs):
        loss = torch.nn.functional.cross_entropy(model(inputs), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def eval_step(inputs):
        with torch.no_grad():
            model(inputs)

    model.eval()
    with torch.no_grad():
        logits = {k: model(v) for k, v in layouts.items()}
    max_diff = float((logits["default"] - logits["channels_last"]).abs().max())
    out: dict = {"input_size": size, "max_logit_difference": max_diff}
    for phase, step, train in (("train_step", train_step, True), ("eval_forward", eval_step, False)):
        model.train(train)
        for inputs in layouts.values():  # warm-up: oneDNN picks and caches its kernels per layout
            step(inputs)
        times: dict[str, list[float]] = {k: [] for k in layouts}
        for _ in range(args.repeats):
            for name, inputs in layouts.items():
                times[name].append(_timed(lambda: step(inputs), args.steps))
        med = {k: statistics.median(v) for k, v in times.items()}
        out[phase] = {"seconds": {k: round(v, 4) for k, v in med.items()},
                      "speedup": round(med["default"] / med["channels_last"], 3)}
    return out


def measure_detection(folder: Path, args: argparse.Namespace) -> dict:
    """A Faster R-CNN training step on the backbone's feature maps (``autotransfer.detectors``), its body run
    on channels-last batches or not (``TimmPyramid.channels_last``), on GTSDB-sized scenes with a few boxes."""
    import torch

    from autotransfer.detectors import build_detector, feature_body, forward

    torch.manual_seed(0)
    body = feature_body(f"local-dir:{folder}")
    size = (480, 816)
    model = build_detector("fasterrcnn", body, 4, size, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    images = torch.rand(args.detection_batch_size, 3, *size)
    # (x1, y1, x2, y2, class) rows padded with -1, two signs per scene
    boxes = torch.tensor([[[100., 200., 130., 228., 0.], [500., 150., 523., 175., 2.]]]).repeat(len(images), 1, 1)

    def step() -> None:
        loss = forward(model, images, boxes, "fasterrcnn", size[1]).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    times: dict[str, list[float]] = {"default": [], "channels_last": []}
    for layout in times:  # warm-up
        model.backbone.channels_last = layout == "channels_last"
        step()
    for _ in range(args.repeats):
        for layout in times:
            model.backbone.channels_last = layout == "channels_last"
            times[layout].append(_timed(step, args.steps))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"image_size": list(size), "batch_size": args.detection_batch_size,
            "train_step": {"seconds": {k: round(v, 4) for k, v in med.items()},
                           "speedup": round(med["default"] / med["channels_last"], 3)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--detection-batch-size", type=int, default=2, help="scenes per detection step (the recipe's 2)")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    cases = {}
    for folder in sorted(p for p in MODELS.iterdir() if (p / "config.json").exists()):
        cases[folder.name] = r = measure(folder, args)
        print(f"{folder.name:28s} train step {r['train_step']['seconds']['default']:.3f} s -> "
              f"{r['train_step']['seconds']['channels_last']:.3f} s ({r['train_step']['speedup']:.2f}x); "
              f"eval {r['eval_forward']['seconds']['default']:.3f} s -> "
              f"{r['eval_forward']['seconds']['channels_last']:.3f} s ({r['eval_forward']['speedup']:.2f}x); "
              f"max logit difference {r['max_logit_difference']:.1e}", flush=True)
    detection = {}
    for name in ("mobilenetv2_100", "tf_efficientnet_lite0"):  # the CNN bodies a detection space uses
        detection[name] = r = measure_detection(MODELS / name, args)
        print(f"{name:28s} detection train step {r['train_step']['seconds']['default']:.3f} s -> "
              f"{r['train_step']['seconds']['channels_last']:.3f} s ({r['train_step']['speedup']:.2f}x)", flush=True)
    result = {"benchmark": "memory_format", **provenance(), "settings": {k: str(v) for k, v in vars(args).items()},
              "cases": cases, "detection": detection}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
