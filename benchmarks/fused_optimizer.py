"""Benchmark: torch's fused optimizer step vs the per-tensor default, the same trials side by side.

A trial's AdamW (or SGD) takes torch's fused, in-place step on CPUs and CUDA GPUs
(``autotransfer.training.fused_step``).  Before, it took the per-tensor default on a CPU, which
allocates parameter-sized temporaries every step; a text encoder's vocabulary embedding makes
them tens of MB.  This script runs each trial both ways in this one process, alternating
(per-tensor, fused, per-tensor, fused...; ``--repeats`` of each), with ``autotransfer.training.train``
at a fixed budget, 2 threads:

- text: SST-2, ``--rows`` training rows and 500 test rows as the evaluation split
  (``robustness.py``'s sampling); the text recipe (full fine-tuning, AdamW lr 2e-5) on both shared
  MiniLMs and LoRA (r 8, lr 1e-3) on MiniLM-L6, ``--text-steps`` optimizer steps at batch 32;
- images: ants vs bees (its train and val folders), ``augment: none``; full fine-tuning of
  MobileNetV2 with SGD (lr 1e-3, momentum 0.9: the image recipe) and of EfficientNet-Lite0 with
  AdamW (lr 1e-4), ``--image-steps`` steps at batch 32.

Prints and writes per trial: training throughput (samples/s over the training steps; medians over
the repeats), trial wall time, and each side's final evaluation accuracy and training loss (the
update is the same computation, so these agree up to float rounding and what it does to a few
hundred steps).  Target: full fine-tuning trials faster on a CPU (throughput ratio > 1), LoRA not
slower; accuracy not changed beyond the evaluation split's noise.

    python benchmarks/fused_optimizer.py                 # ~30 minutes on 2 CPU cores
    python benchmarks/fused_optimizer.py --cases text    # the three text trials, ~10 minutes
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PrepareSettings, write_json  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
TEXT = SHARED / "models" / "text"
IMAGE = SHARED / "models" / "image"
RECIPE = {"strategy": "full", "lr": 2e-5, "head_lr": 2e-5, "layer_decay": 1.0, "weight_decay": 0.01,
          "warmup_ratio": 0.0, "batch_size": 32}
#: (case group, task, backbone, config)
TRIALS = [
    ("text", "text-cls", str(TEXT / "paraphrase-MiniLM-L3-v2"), RECIPE),
    ("text", "text-cls", str(TEXT / "all-MiniLM-L6-v2"), RECIPE),
    ("text", "text-cls", str(TEXT / "all-MiniLM-L6-v2"),
     {"strategy": "lora", "lr": 1e-3, "head_lr": 1e-3, "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.1,
      "weight_decay": 0.01, "warmup_ratio": 0.0, "batch_size": 32}),
    ("image", "image-cls", f"local-dir:{IMAGE / 'mobilenetv2_100'}",
     {"strategy": "full", "optimizer": "sgd", "lr": 1e-3, "head_lr": 1e-3, "layer_decay": 1.0, "weight_decay": 0.0,
      "warmup_ratio": 0.0, "batch_size": 32, "augment": "none"}),
    ("image", "image-cls", f"local-dir:{IMAGE / 'tf_efficientnet_lite0'}",
     {"strategy": "full", "lr": 1e-4, "head_lr": 1e-3, "layer_decay": 1.0, "weight_decay": 0.01, "warmup_ratio": 0.0,
      "batch_size": 32, "augment": "none"}),
]


def text_data(rows: int, seed: int) -> tuple[object, Path]:
    from autotransfer.tables import load_text_splits
    from robustness import make_case

    search_dir, _ = make_case(Path(tempfile.mkdtemp(prefix="fused-optimizer-")), "sst2", rows, 500, seed)
    (search_dir / "test.tsv").rename(search_dir / "dev.tsv")  # the test rows are the evaluation split
    (search_dir / "test.tsv").write_text("\n".join((search_dir / "dev.tsv").read_text().split("\n")[:11]) + "\n")
    return load_text_splits(search_dir), search_dir


def image_data() -> tuple[object, Path]:
    from autotransfer.images import load_image_splits

    folder = SHARED / "data" / "hymenoptera"
    return load_image_splits(folder), folder


def one_trial(task_name: str, info, prepared, splits, budget, config: dict, fused: bool) -> dict:
    import autotransfer.training as training

    ctx = training.TrialContext(task=task_name, backbones={info.name: info}, prepared=prepared,
                                label_names=splits.label_names, threads=2, budget=budget)
    training.FUSED_OPTIMIZER = fused
    try:
        reports: list[dict] = []
        start = time.perf_counter()
        last = training.train({"backbone": info.name, **config}, ctx, lambda m, c: reports.append(m))
    finally:
        training.FUSED_OPTIMIZER = True
    return {"wall_s": time.perf_counter() - start, "samples_per_s": last["samples_per_s"], "steps": last["step"],
            "accuracy": last["accuracy"], "train_loss": reports[-1]["train_loss"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="text,image", help="text, image or both (comma-separated)")
    ap.add_argument("--rows", type=int, default=1000, help="SST-2 training rows")
    ap.add_argument("--text-steps", type=int, default=100)
    ap.add_argument("--image-steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=2, help="runs of each side, alternating; medians reported")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    args = ap.parse_args()

    import transformers

    from autotransfer.budget import derive_budget
    from autotransfer.tasks import get_task

    transformers.utils.logging.set_verbosity_error()
    groups = set(args.cases.split(","))
    data = {}
    if "text" in groups:
        data["text"] = text_data(args.rows, args.seed)
    if "image" in groups:
        data["image"] = image_data()
    rows = []
    for group, task_name, backbone, config in TRIALS:
        if group not in groups:
            continue
        splits, folder = data[group]
        task = get_task(task_name)
        info = task.describe_backbone(backbone, PrepareSettings(folder))
        prepared, _ = task.prepare([info], splits, PrepareSettings(folder))
        steps = args.text_steps if group == "text" else args.image_steps
        n_train = task.num_examples(prepared[info.name], "train")
        budget = derive_budget(n_train, config["batch_size"], 1, 1, 1, min_steps=steps)
        runs: dict[str, list[dict]] = {"per_tensor": [], "fused": []}
        for _ in range(args.repeats):
            for side in runs:
                runs[side].append(one_trial(task_name, info, prepared, splits, budget, config, side == "fused"))
        med = {side: {k: statistics.median(r[k] for r in rs) for k in ("wall_s", "samples_per_s")}
               for side, rs in runs.items()}
        row = {"data": folder.name if group == "image" else f"sst2:{args.rows}", "backbone": Path(backbone).name,
               "strategy": config["strategy"], "optimizer": config.get("optimizer", "adamw"),
               "train_examples": n_train, "steps": runs["fused"][0]["steps"],
               "evaluation_examples": task.num_examples(prepared[info.name], "validation"),
               **{side: {**med[side], "runs": rs} for side, rs in runs.items()},
               "throughput_ratio": med["fused"]["samples_per_s"] / med["per_tensor"]["samples_per_s"],
               "wall_ratio": med["fused"]["wall_s"] / med["per_tensor"]["wall_s"],
               "accuracy_difference": runs["fused"][-1]["accuracy"] - runs["per_tensor"][-1]["accuracy"],
               "train_loss_difference": runs["fused"][-1]["train_loss"] - runs["per_tensor"][-1]["train_loss"]}
        rows.append(row)
        write(args, rows)
        print(f"{row['backbone']:24s} {row['strategy']:5s} {row['optimizer']:5s}: throughput "
              f"{med['per_tensor']['samples_per_s']:.1f} -> {med['fused']['samples_per_s']:.1f} samples/s "
              f"({row['throughput_ratio']:.2f}x), wall {row['wall_ratio']:.2f}x; accuracy "
              f"{runs['per_tensor'][-1]['accuracy']:.3f} vs {runs['fused'][-1]['accuracy']:.3f}", flush=True)
    print(json.dumps(write(args, rows)["summary"], indent=2))


def write(args: argparse.Namespace, rows: list[dict]) -> dict:
    """The JSON so far (after every trial, so a stopped run keeps what it measured)."""
    full = [r for r in rows if r["strategy"] == "full"]
    summary = {"throughput_ratio": {f"{r['backbone']} {r['strategy']}": round(r["throughput_ratio"], 3) for r in rows},
               "wall_ratio": {f"{r['backbone']} {r['strategy']}": round(r["wall_ratio"], 3) for r in rows},
               "accuracy_differences": [round(r["accuracy_difference"], 4) for r in rows],
               "target": "full fine-tuning throughput ratio > 1; no trial slower beyond noise; accuracy unchanged "
                         "beyond the evaluation split's noise",
               "met": bool(full) and all(r["throughput_ratio"] > 1 for r in full)}
    return write_json(args.out, "fused_optimizer", args, cases=rows, summary=summary)


if __name__ == "__main__":
    main()
