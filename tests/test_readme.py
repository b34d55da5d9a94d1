"""The README's main command, run as a newcomer runs it: a fresh folder holding only what ships with the repository.

Nothing beside it (no ``../shared``), the model hub unreachable: the search must find its model where the
set-up command put it (the ``examples`` extra's pip package) and end with a usable ``best/``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.e2e


def readme_commands() -> list[str]:
    """The commands of the README's first shell block (set-up, main command, tests), comments dropped."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    return [ln.split("#", 1)[0].strip() for ln in block.splitlines() if ln.split("#", 1)[0].strip()]


def test_the_readme_starts_with_set_up_main_command_and_tests():
    setup, main, tests = readme_commands()
    assert "pip install" in setup and '".[dev]"' in setup
    assert main.startswith("autotransfer search ") and "../" not in main  # only what ships with the repository
    assert "pytest" in tests


#: appended to the README's command: the same data, space and offline path at a budget the suite can afford (the
#: full command takes minutes on 2 cores; its time is measured by hand and stated in the README)
SMALLER = ["--num-samples", "2", "--max-epochs", "1", "--min-steps", "0"]


def without_time_budget(args: list[str]) -> list[str]:
    """The command without its ``--time-budget N``: a wall-clock cut that on a loaded machine can stop the trials
    before their first evaluation; ``SMALLER`` bounds the work by steps instead, the same on any machine."""
    out = list(args)
    if "--time-budget" in out:
        i = out.index("--time-budget")
        del out[i:i + 2]
    return [a for a in out if not a.startswith("--time-budget=")]


def test_the_readme_main_command_runs_with_nothing_beside_the_repository(tmp_path):
    main = readme_commands()[1]
    clean = tmp_path / "newcomer" / "autotransfer"
    for part in ("examples", "search_spaces"):
        shutil.copytree(REPO / part, clean / part)
    assert not (clean.parent / "shared").exists()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    args = without_time_budget(shlex.split(main))
    args = [sys.executable, "-m", "autotransfer", *args[1:], *SMALLER, "--no-dashboard", "--output",
            str(tmp_path / "run")]
    done = subprocess.run(args, cwd=clean, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    test = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    assert test["accuracy"] > 0.6  # pretrained all-MiniLM-L6-v2 on SST-2 sentences, 2 short trials: above chance
    from transformers import pipeline

    clf = pipeline("text-classification", model=str(tmp_path / "run" / "best"), device=-1)
    assert clf("a gripping, beautifully acted film")[0]["label"] in {"0", "1"}
