"""The command line: help with examples, one-line errors with exit code 2, a real run, predict."""

from __future__ import annotations

import csv
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


def test_help_shows_examples(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["search", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "--num-samples" in out and "pipeline" in out


@pytest.mark.parametrize("make_args,needle", [
    (lambda d, s, t: ["--data", t / "missing.csv", "--space", s], "does not exist"),
    (lambda d, s, t: ["--data", (t / "empty.csv").resolve(), "--space", s], "empty"),
    (lambda d, s, t: ["--data", d, "--space", s, "--backbones", t / "no-model"], "does not exist"),
    (lambda d, s, t: ["--data", d, "--space", s, "--backbones", "nobody/unknown-model"], "model hub"),
    (lambda d, s, t: ["--data", d, "--space", t / "broken.yaml"], "malformed YAML"),
    (lambda d, s, t: ["--data", d, "--space", s, "--num-samples", "0"], "--num-samples"),
    (lambda d, s, t: ["--data", d, "--space", s, "--label-col", "stars"], "'stars' is not a column"),
    (lambda d, s, t: ["--data", d, "--space", s, "--strategies", "magic"], "unknown strategy 'magic'"),
    (lambda d, s, t: ["--data", d, "--space", s, "--cpus-per-trial", "64"], "more than the cluster has"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, sentiment_dir, tiny_space, make_args, needle,
                                                         capsys):
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "broken.yaml").write_text("backbones: [a\n")
    out = tmp_path / "run"
    args = ["search", "--task", "text-cls", *make_args(sentiment_dir, tiny_space, tmp_path), "--output", out,
            "--no-dashboard"]
    code = main([str(a) for a in args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    last = err.splitlines()[-1]  # progress lines may come first; the error is the last, single line
    assert needle in last and last.startswith("autotransfer: error:")
    assert "Traceback" not in err
    assert not out.exists()  # refused before anything was written


def test_existing_run_is_not_overwritten(tmp_path, sentiment_dir, tiny_space, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.json").write_text("{}")
    code = main(["search", "--task", "text-cls", "--data", str(sentiment_dir), "--space", str(tiny_space),
                 "--output", str(out)])
    assert code == 2 and "already holds a run" in capsys.readouterr().err
    assert (out / "results.json").read_text() == "{}"


@pytest.mark.e2e
def test_search_then_predict_from_the_command_line(tmp_path, sentiment_dir, tiny_space):
    out = tmp_path / "cli-run"
    proc = _cli("search", "--task", "text-cls", "--data", sentiment_dir, "--space", tiny_space,
                "--strategies", "linear_probe,full", "--num-samples", "3", "--max-epochs", "2", "--output", out,
                "--no-dashboard")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "best:" in proc.stdout and "report:" in proc.stdout
    assert "[3/3]" in proc.stderr  # progress lines when not on a terminal
    new = tmp_path / "new.csv"
    new.write_text("text\nsuperb wonderful film\nawful dull plot\n")
    pred = _cli("predict", "--model", out / "best", "--data", new, "--output", tmp_path / "pred.csv")
    assert pred.returncode == 0, pred.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "pred.csv")))
    assert len(rows) == 2 and {r["prediction"] for r in rows} <= {"negative", "positive"}
    rebuilt = _cli("report", out)
    assert rebuilt.returncode == 0 and "leaderboard.html" in rebuilt.stdout
