"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# measure the code of the repository this script sits in (the commit git_state records), not whatever
# checkout pip's editable install points at: this process, the CLI subprocesses and Ray's workers
sys.path.insert(0, str(REPO))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)


class PrepareSettings:
    """The settings a task's ``describe_backbone()`` and ``prepare()`` read, for benchmarks that call a task
    directly (without the CLI): the data path, no remote code, the default max length."""

    trust_remote_code, max_length = False, None

    def __init__(self, data: Path, cpus_per_trial: int = 2):
        self.data, self.cpus_per_trial = data, cpus_per_trial


def machine() -> dict:
    """What the numbers were measured on."""
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:  # pragma: no cover
        gpu = None
    model = ""
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "")
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": model or platform.processor() or platform.machine(), "gpu": gpu}


def git_state() -> dict:
    """The commit measured, and whether the code differed from it (the package, the search spaces or the
    benchmark scripts; the benchmarks' own JSON outputs do not count)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "HEAD")
    if not commit and os.environ.get("AUTOTRANSFER_BENCH_COMMIT"):
        # a copy of the working tree without .git (the lent GPU machine): the command that shipped it names
        # the commit it was cut from, and shipping a committed tree is how it stays clean
        return {"commit": os.environ["AUTOTRANSFER_BENCH_COMMIT"], "dirty": None, "changed": [],
                "commit_from": "AUTOTRANSFER_BENCH_COMMIT (no .git in this copy)"}
    changed = git("status", "--porcelain", "--", "autotransfer", "search_spaces", "benchmarks/*.py")
    return {"commit": commit, "dirty": bool(changed), "changed": changed.splitlines()}


def provenance(packages: tuple[str, ...] = ("torch", "transformers", "timm", "ray", "optuna", "scikit-learn")) -> dict:
    """What every benchmark JSON records: date, command line, commit (and dirty flag), machine, library versions."""
    import importlib.metadata as md
    from datetime import datetime, timezone

    versions = {}
    for p in packages:
        try:
            versions[p] = md.version(p)
        except md.PackageNotFoundError:
            versions[p] = None
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "git": git_state(), "machine": machine(),
            "versions": versions}


def cli_search(args: list[str], out: Path) -> tuple[dict, dict, float]:
    """``autotransfer search ARGS --no-dashboard --output OUT`` as a user runs it (a fresh process):
    (its ``results.json``, the best trial's record in it, wall seconds); a failed search raises with its stderr."""
    import json
    import time

    cmd = [sys.executable, "-m", "autotransfer.cli", "search", *args, "--no-dashboard", "--output", str(out)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"search failed ({proc.returncode}): {proc.stderr[-2000:]}")
    results = json.loads((out / "results.json").read_text())
    best = next(t for t in results["trials"] if t["trial_id"] == results["best_trial"])
    return results, best, wall


def write_json(path: Path, benchmark: str, args: object, **parts: object) -> dict:
    """A benchmark's JSON: its name, :func:`provenance`, its command-line settings, then ``parts`` (cases,
    summary...); written at once, so a run stopped later keeps what it had measured, and returned."""
    import json

    out = {"benchmark": benchmark, **provenance(), "settings": {k: str(v) for k, v in vars(args).items()}, **parts}
    path.write_text(json.dumps(out, indent=2) + "\n")
    return out
