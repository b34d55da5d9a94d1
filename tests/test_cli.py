"""The command line: help with examples, one-line errors with exit code 2, a real run, predict."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autotransfer.cli import main

REPO = Path(__file__).resolve().parent.parent


def _cli(*args, cwd=REPO, timeout=600):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "autotransfer", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_the_command_exits_with_main_s_code_and_skips_the_final_collection(monkeypatch):
    """``autotransfer`` (the console script, and ``python -m autotransfer``) is ``cli.run``: main's exit code, with
    the objects a search loaded left out of the interpreter's last garbage collection (``gc.freeze``), a walk
    over torch, transformers and Ray that took 1.4 s of every command's exit."""
    import gc
    import importlib.metadata as md

    from autotransfer import cli

    (entry,) = [e for e in md.entry_points(group="console_scripts") if e.name == "autotransfer"]
    assert entry.value == "autotransfer.cli:run"
    assert "run()" in (REPO / "autotransfer" / "__main__.py").read_text()
    frozen = []
    monkeypatch.setattr(cli, "main", lambda: 2)
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(True))
    with pytest.raises(SystemExit) as exit_:
        cli.run()
    assert exit_.value.code == 2 and frozen == [True]


def test_help_shows_examples(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["search", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "--num-samples" in out and "pipeline" in out


def test_the_data_flags_are_the_tasks_declared_options(capsys):
    """--text-col and friends come from the task specs, each naming the tasks that read it."""
    import re

    with pytest.raises(SystemExit):
        main(["search", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert re.search(r"--label-col COLUMN text-cls, image-cls: label column", out)
    assert re.search(r"--image-col COLUMN image-cls: ", out) and re.search(r"--text-pair-col COLUMN text-cls: ", out)


def test_an_unknown_task_is_one_line(capsys, tmp_path):
    assert main(["search", "--task", "ner", "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["autotransfer: error: --task: unknown task 'ner'; choose one of text-cls, image-cls, token-cls, detection"]


@pytest.mark.e2e
def test_search_then_predict_from_the_command_line(tmp_path, sentiment_dir, tiny_space):
    out = tmp_path / "cli-run"
    proc = _cli("search", "--task", "text-cls", "--data", sentiment_dir, "--space", tiny_space,
                "--strategies", "linear_probe,full", "--num-samples", "3", "--max-epochs", "2", "--output", out,
                "--no-dashboard")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "report:" in proc.stdout
    soup = json.loads((out / "results.json").read_text()).get("soup") or {}
    # the summary names what was exported: the best trial, or the soup and then the trial it started from
    assert ("exported: a soup of" in proc.stdout and "best trial:" in proc.stdout) if soup.get("exported") else \
        "best:" in proc.stdout
    assert "[3/3]" in proc.stderr  # progress lines when not on a terminal
    new = tmp_path / "new.csv"
    new.write_text("text\nsuperb wonderful film\nawful dull plot\n")
    pred = _cli("predict", "--model", out / "best", "--data", new, "--output", tmp_path / "pred.csv")
    assert pred.returncode == 0, pred.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "pred.csv")))
    assert len(rows) == 2 and {r["prediction"] for r in rows} <= {"negative", "positive"}
    rebuilt = _cli("report", out)
    assert rebuilt.returncode == 0 and "leaderboard.html" in rebuilt.stdout
