"""Benchmark: how fast ``autotransfer search`` answers bad input (target: at most 2 s each).

Each case runs the CLI as a user does (a fresh ``python -m autotransfer.cli`` process) on a
small input built here, and must end with exit code 2 and one ``autotransfer: error:`` line.
Side by side, in the same run, the script times what every bad input used to cost before the
door was made light: a fresh process importing the task implementations (torch,
transformers, timm, Ray Tune).  Prints each case's seconds and the ratio, writes JSON.

    python benchmarks/bad_input.py            # ~1 minute
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, provenance  # noqa: E402

TARGET_S = 2.0
SENTENCES = [(f"sentence number {i} is {'good' if i % 2 else 'bad'}", "pos" if i % 2 else "neg") for i in range(40)]


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _table(rows: list[tuple[str, str]], header: str = "sentence\tlabel") -> str:
    return header + "\n" + "".join(f"{a}\t{b}\n" for a, b in rows)


def cases(tmp: Path) -> list[tuple[str, list[str]]]:
    """(name, arguments after ``search``) for the bad inputs a newcomer meets first."""
    good = _write(tmp / "good.tsv", _table(SENTENCES))
    conll = _write(tmp / "ner.conll", "Anna\tPERSON\nvisited\tO\n\nParis\tB-LOC\n")
    (tmp / "photos").mkdir()
    return [
        ("missing file", ["--task", "text-cls", "--data", str(tmp / "nope.csv")]),
        ("empty file", ["--task", "text-cls", "--data", str(_write(tmp / "empty.csv", ""))]),
        ("single class", ["--task", "text-cls", "--data",
                          str(_write(tmp / "one.tsv", _table([(s, "pos") for s, _ in SENTENCES])))]),
        ("no label column", ["--task", "text-cls", "--data",
                             str(_write(tmp / "nolabel.tsv", _table(SENTENCES, "sentence\tstars")))]),
        ("unknown --label-col", ["--task", "text-cls", "--data", str(good), "--label-col", "stars"]),
        ("option of another task", ["--task", "text-cls", "--data", str(good), "--image-col", "path"]),
        ("unknown --task", ["--task", "text-classification", "--data", str(good)]),
        ("unknown --metric", ["--task", "text-cls", "--data", str(good), "--metric", "auc"]),
        ("unknown strategy", ["--task", "text-cls", "--data", str(good), "--strategies", "full,magic"]),
        ("more CPUs than the machine", ["--task", "text-cls", "--data", str(good), "--cpus-per-trial", "512"]),
        ("tags not BIO", ["--task", "token-cls", "--data", str(conll)]),
        ("no class folders", ["--task", "image-cls", "--data", str(tmp / "photos")]),
    ]


def timed(args: list[str]) -> tuple[float, int, str]:
    start = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, cwd=REPO)
    return time.perf_counter() - start, proc.returncode, proc.stderr.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each case; the median counts")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="autotransfer-bad-input-"))
    rows = []
    for name, argv in cases(tmp):
        out = tmp / "run" / name.replace(" ", "-")
        runs = [timed([sys.executable, "-m", "autotransfer.cli", "search", *argv, "--output", str(out)])
                for _ in range(args.repeats)]
        seconds = statistics.median(r[0] for r in runs)
        code, err = runs[0][1], runs[0][2]
        one_line = len(err.splitlines()) == 1 and err.startswith("autotransfer: error:")
        rows.append({"case": name, "seconds": seconds, "exit_code": code, "one_line": one_line, "message": err,
                     "wrote_nothing": not out.exists()})
        print(f"{name:>28}: {seconds:5.2f} s  exit {code}  {'one line' if one_line else 'NOT ONE LINE'}  {err[:90]}",
              flush=True)
    engine = statistics.median(timed([sys.executable, "-c", "import autotransfer.tasks.text_cls, "
                                       "autotransfer.tasks.image_cls, autotransfer.runner"])[0]
                               for _ in range(args.repeats))
    worst = max(r["seconds"] for r in rows)
    median = statistics.median(r["seconds"] for r in rows)
    ok = all(r["exit_code"] == 2 and r["one_line"] and r["wrote_nothing"] for r in rows)
    print(f"\nmedian {median:.2f} s, worst {worst:.2f} s (target <= {TARGET_S:.0f} s: "
          f"{'met' if worst <= TARGET_S else 'NOT met'}); importing the engine alone takes {engine:.2f} s, "
          f"{engine / median:.1f}x the median answer; every case exit 2, one line, nothing written: {ok}")
    out = {"benchmark": "bad_input", **provenance(("torch", "transformers", "ray", "pandas")),
           "target_s": TARGET_S, "repeats": args.repeats, "cases": rows,
           "summary": {"median_s": median, "worst_s": worst, "target_met": worst <= TARGET_S,
                       "engine_import_s": engine, "engine_import_over_median": engine / median,
                       "all_exit_2_one_line_nothing_written": ok}}
    args.out.write_text(json.dumps(out, indent=2))
    print("->", args.out)


if __name__ == "__main__":
    main()
