"""Benchmark: the GPU paths, on a machine with a CUDA GPU (CI has none; the CPU suite covers the logic).

1. Pinned memory: the training batches of both tasks arrive in pinned host memory (so the
   trial loop's ``non_blocking`` copies overlap).
2. Memory back to baseline: four trials in a row in one process, as a reused Ray Tune worker
   runs them (full fine-tuning, LoRA, linear probe, then one that runs out of GPU memory at
   both batch sizes under a memory cap): GPU memory allocated and reserved by the process
   before and after each.
3. Precision: the same one-trial search at ``--precision`` fp32, bf16 and fp16, on text and
   images: training samples/s, validation accuracy, peak GPU memory.
4. Fractional GPUs: the same 8 trials (seeded random sampler, FIFO) with ``--gpus-per-trial
   0.25`` and with ``--gpus-per-trial 1``: how many trials ran at once (from the trials'
   own start and end times), wall time, trials per hour, and the GPU's memory in use
   (nvidia-smi) before and after each search.

The GPU throughput target (>= 0.9 of a plain loop) is ``plain_loop.py --device cuda``.

    python benchmarks/gpu_paths.py                 # ~5 minutes on one H100
    python benchmarks/gpu_paths.py --text-model DIR --random-init-text   # weights too big to ship:
                                                   # DIR's architecture and tokenizer, random weights
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import provenance  # noqa: E402
from plain_loop import make_data  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
MIB = 2**20


def gpu_used_mib() -> float | None:
    """Memory in use on GPU 0, all processes (nvidia-smi), in MiB."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, check=True, timeout=30).stdout
        return float(out.strip().splitlines()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def random_init_copy(src: Path, dst: Path) -> Path:
    """``src``'s architecture, config and tokenizer with freshly initialised (seeded) weights."""
    import torch
    from transformers import AutoConfig, AutoModel

    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.suffix not in (".safetensors", ".bin", ".pt"):
            shutil.copy2(f, dst / f.name)
    torch.manual_seed(0)
    AutoModel.from_config(AutoConfig.from_pretrained(src)).save_pretrained(dst, safe_serialization=True)
    return dst


def trial_context(task_name: str, data: Path, backbone: str, **kw):
    from autotransfer.settings import SearchSettings
    from autotransfer.tasks import get_task
    from autotransfer.training import TrialContext

    s = SearchSettings(task=task_name, data=data, dashboard=False, gpus_per_trial=1)
    task = get_task(task_name)
    splits = task.load_data(s)
    info = task.describe_backbone(backbone, s)
    prepared, _ = task.prepare([info], splits, s)
    return TrialContext(task=task_name, backbones={info.name: info}, prepared=prepared,
                        label_names=splits.label_names, use_gpu=True, **kw)


def pinned(text_data: Path, text_model: str, image_data: Path, image_model: str, tasks: list[str]) -> dict:
    from autotransfer.tasks import get_task

    out = {}
    for name, data, model in (("text-cls", text_data, text_model), ("image-cls", image_data, image_model)):
        if name not in tasks:
            continue
        ctx = trial_context(name, data, model)
        prepared = ctx.prepared[next(iter(ctx.backbones))]
        inputs, labels = next(iter(get_task(name).batches(prepared, "train", 32, train=True, seed=0,
                                                           pin_memory=True, config={})))
        out[name] = all(v.is_pinned() for v in inputs.values()) and labels.is_pinned()
    return out


def memory_baseline(text_data: Path, text_model: str) -> dict:
    """Trials in a row in this process, as a reused worker runs them; memory after each."""
    import torch

    from autotransfer.training import TrialFailed, train

    ctx = trial_context("text-cls", text_data, text_model, max_epochs=1, evals_per_epoch=1)
    bb = next(iter(ctx.backbones))
    torch.cuda.init()
    torch.zeros(1, device="cuda")  # the CUDA context: part of the baseline
    rows = [{"when": "baseline (CUDA context, no trial)", "allocated_mib": torch.cuda.memory_allocated() / MIB,
             "reserved_mib": torch.cuda.memory_reserved() / MIB, "gpu_used_mib": gpu_used_mib()}]
    trials = [("full fine-tuning", {"strategy": "full", "lr": 5e-5, "batch_size": 32}, None),
              ("LoRA r=8", {"strategy": "lora", "lr": 1e-3, "lora_r": 8, "batch_size": 32}, None),
              ("linear probe", {"strategy": "linear_probe", "C": 1.0, "batch_size": 32}, None),
              ("full fine-tuning, out of memory", {"strategy": "full", "lr": 5e-5, "batch_size": 32}, 150 * MIB)]
    for label, config, cap in trials:
        peak = {}
        if cap:
            torch.cuda.set_per_process_memory_fraction(cap / torch.cuda.get_device_properties(0).total_memory)
        error = None
        try:
            last = train({"backbone": bb, **config}, ctx, lambda m, c: None)
            peak = {"peak_mib": last.get("gpu_memory_peak_mb"), "at_start_mib": last.get("gpu_memory_at_start_mb"),
                    "val_accuracy": last.get("accuracy"), "samples_per_s": last.get("samples_per_s")}
        except TrialFailed as exc:
            error = str(exc)
        finally:
            if cap:
                torch.cuda.set_per_process_memory_fraction(1.0)
        rows.append({"when": f"after {label}", "allocated_mib": torch.cuda.memory_allocated() / MIB,
                     "reserved_mib": torch.cuda.memory_reserved() / MIB, "gpu_used_mib": gpu_used_mib(),
                     **peak, **({"trial_error": error} if error else {})})
        print(f"  {rows[-1]}", flush=True)
    after = rows[1:]
    # what stays is constant from the first trial on: check whether it is cuBLAS's per-thread workspaces
    # (kept by torch for the process's next matrix products, not by autotransfer)
    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear is not None:
        clear()
        rows.append({"when": "after torch._C._cuda_clearCublasWorkspaces()",
                     "allocated_mib": torch.cuda.memory_allocated() / MIB,
                     "reserved_mib": torch.cuda.memory_reserved() / MIB, "gpu_used_mib": gpu_used_mib()})
        print(f"  {rows[-1]}", flush=True)
    base = rows[0]
    return {"rows": rows,
            "allocated_above_baseline_after_each_trial_mib": [r["allocated_mib"] - base["allocated_mib"]
                                                              for r in after],
            "reserved_above_baseline_after_each_trial_mib": [r["reserved_mib"] - base["reserved_mib"]
                                                             for r in after],
            "allocated_after_clearing_cublas_workspaces_mib": rows[-1]["allocated_mib"] if clear else None}


def one_trial_space(tmp: Path, task: str, backbone: str, strategy: dict, batch_size: int) -> Path:
    p = tmp / f"{task}-{len(list(tmp.glob('*.yaml')))}.yaml"
    p.write_text(json.dumps({"task": task, "backbones": [backbone],
                             "params": {"batch_size": batch_size, "weight_decay": 0.01, "warmup_ratio": 0.0},
                             "strategies": strategy}))
    return p


def precision_runs(tmp: Path, text_data: Path, text_model: str, image_data: Path, image_model: str,
                   tasks: list[str]) -> dict:
    import autotransfer

    setups = {
        "text-cls": dict(data=text_data, space=one_trial_space(tmp, "text-cls", text_model, {"full": {"lr": 1e-4}}, 32),
                         max_epochs=2),
        "image-cls": dict(data=image_data, space=one_trial_space(tmp, "image-cls", image_model,
                                                                 {"full": {"lr": 3e-4, "head_lr": 3e-3}}, 32),
                          max_epochs=5),
    }
    out: dict = {}
    for task, kw in setups.items():
        if task not in tasks:
            continue
        out[task] = {}
        for precision in ("fp32", "bf16", "fp16"):
            start = time.perf_counter()
            result = autotransfer.search(task=task, num_samples=1, evals_per_epoch=1, scheduler="fifo",
                                         gpus_per_trial=1, cpus_per_trial=4, precision=precision, warm_start=False,
                                         dashboard=False, output=tmp / f"prec-{task}-{precision}", **kw)
            m = result.records[0].last_metrics
            out[task][precision] = {"samples_per_s": m.get("samples_per_s"), "val_accuracy": m.get("accuracy"),
                                    "test_accuracy": result.test_metrics.get("accuracy"),
                                    "gpu_memory_peak_mb": m.get("gpu_memory_peak_mb"),
                                    "search_wall_s": time.perf_counter() - start}
            print(f"  {task} {precision}: {out[task][precision]}", flush=True)
        fp32 = out[task]["fp32"]["samples_per_s"]
        for p in ("bf16", "fp16"):
            out[task][p]["speedup_over_fp32"] = out[task][p]["samples_per_s"] / fp32 if fp32 else None
    return out


def trial_spans(run: Path) -> list[tuple[float, float]]:
    """(start, end) of each trial from its own Ray Tune result log (timestamps in seconds)."""
    spans = []
    for log in (run / "tune").glob("*/result.json"):
        rows = [json.loads(ln) for ln in log.read_text().splitlines() if ln.strip()]
        if rows:
            spans.append((rows[0]["timestamp"] - rows[0]["time_this_iter_s"], float(rows[-1]["timestamp"])))
    return spans


def max_overlap(spans: list[tuple[float, float]], resolution: float = 1.0) -> int:
    """Most trials running at one moment.  Ray's timestamps are whole seconds, so a trial that
    started within ``resolution`` of another's end is not counted as running beside it."""
    return max((sum(1 for s, e in spans if s <= t and e - t > resolution) for t, _ in spans), default=0)


def fractional(tmp: Path, text_data: Path, text_model: str, num_samples: int) -> dict:
    import autotransfer

    space = tmp / "fractional.yaml"
    space.write_text(json.dumps({"task": "text-cls", "backbones": [text_model],
                                 "params": {"batch_size": 32},
                                 "strategies": {"linear_probe": {"C": {"distribution": "loguniform",
                                                                       "low": 1e-2, "high": 1e2}},
                                                "full": {"lr": {"distribution": "loguniform", "low": 2e-5,
                                                                "high": 3e-4}},
                                                "lora": {"lr": {"distribution": "loguniform", "low": 1e-4,
                                                                "high": 3e-3}, "lora_r": [4, 8]}}}))
    runs = {}
    for name, gpus in (("quarter_gpu", 0.25), ("whole_gpu", 1.0)):
        before = gpu_used_mib()
        start = time.perf_counter()
        result = autotransfer.search(task="text-cls", data=text_data, space=space, num_samples=num_samples,
                                     max_epochs=1, evals_per_epoch=1, sampler="random", scheduler="fifo", seed=0,
                                     gpus_per_trial=gpus, cpus_per_trial=2, warm_start=False, dashboard=False,
                                     output=tmp / f"frac-{name}")
        wall = time.perf_counter() - start
        time.sleep(2)  # let Ray tear the trial workers down
        spans = trial_spans(tmp / f"frac-{name}")
        t0 = min((a for a, _ in spans), default=0.0)
        runs[name] = {"gpus_per_trial": gpus, "wall_s": wall, "trials": len(result.records),
                      "completed": sum(r.ok for r in result.records),
                      "trials_per_hour": len(result.records) / wall * 3600,
                      "max_trials_at_once": max_overlap(spans),
                      "trial_spans_s": sorted((round(a - t0, 1), round(b - t0, 1)) for a, b in spans),
                      "peak_gpu_memory_per_trial_mb": max((r.last_metrics.get("gpu_memory_peak_mb") or 0)
                                                          for r in result.records),
                      "gpu_memory_at_trial_start_mb": sorted({round(r.last_metrics.get("gpu_memory_at_start_mb")
                                                                     or 0, 1) for r in result.records}),
                      "gpu_used_mib_before": before, "gpu_used_mib_after": gpu_used_mib(),
                      "configs": sorted(json.dumps(r.config, sort_keys=True) for r in result.records)}
        print(f"  {name}: " + json.dumps({k: v for k, v in runs[name].items() if k != "configs"}), flush=True)
    q, w = runs["quarter_gpu"], runs["whole_gpu"]
    same = q.pop("configs") == w.pop("configs")
    return {**runs, "same_configurations": same,
            "trials_per_hour_quarter_over_whole": q["trials_per_hour"] / w["trials_per_hour"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=SHARED, help="the folder holding data/ (sst2, hymenoptera)")
    ap.add_argument("--text-model", type=Path, default=SHARED / "models" / "text" / "paraphrase-MiniLM-L3-v2")
    ap.add_argument("--random-init-text", action="store_true",
                    help="use --text-model's architecture and tokenizer with random weights")
    ap.add_argument("--image-model", type=Path, default=SHARED / "models" / "image" / "mobilenetv2_100")
    ap.add_argument("--text-rows", type=int, default=8000)
    ap.add_argument("--num-samples", type=int, default=8)
    ap.add_argument("--parts", default="pinned,memory,fractional,precision")
    ap.add_argument("--tasks", default="text-cls,image-cls", help="the tasks of 'pinned' and 'precision'")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    args = ap.parse_args()

    import torch

    if not torch.cuda.is_available():
        sys.exit("gpu_paths.py: no CUDA GPU here")
    tmp = Path(tempfile.mkdtemp(prefix="autotransfer-gpu-"))
    text_model = args.text_model
    if args.random_init_text:
        text_model = random_init_copy(args.text_model, tmp / f"{args.text_model.name}-random-init")
    text_data = make_data(tmp / "sst2", args.text_rows, shared=args.shared)
    image_data = args.shared / "data" / "hymenoptera"
    image_model = f"local-dir:{args.image_model.resolve()}"
    out: dict = {"benchmark": "gpu_paths", **provenance(("torch", "transformers", "timm", "peft", "ray", "optuna")),
                 "cuda": torch.version.cuda,
                 "setup": {"text_model": text_model.name, "text_weights": "random init" if args.random_init_text
                           else "pretrained", "text_train_rows": args.text_rows,
                           "image_model": args.image_model.name, "image_data": "hymenoptera (ants vs bees)",
                           "num_samples_fractional": args.num_samples}}
    parts = {"pinned": lambda: pinned(text_data, str(text_model), image_data, image_model, args.tasks.split(",")),
             "memory": lambda: memory_baseline(text_data, str(text_model)),
             "precision": lambda: precision_runs(tmp, text_data, str(text_model), image_data, image_model,
                                                args.tasks.split(",")),
             "fractional": lambda: fractional(tmp, text_data, str(text_model), args.num_samples)}
    for name in args.parts.split(","):
        print(f"{name}:", flush=True)
        start = time.perf_counter()
        try:
            out[name] = parts[name]()
        except Exception as exc:  # noqa: BLE001 - record it and go on with the other parts
            traceback.print_exc()
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
        out[name]["part_wall_s"] = time.perf_counter() - start
        args.out.write_text(json.dumps(out, indent=2, default=str))
    print(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
