"""Nothing lost on crashes: failing trials are isolated, OOM retries, a killed search resumes."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from rich.console import Console

import autotransfer
from autotransfer.api import SearchFailed
from autotransfer.live import LiveLeaderboard
from autotransfer.results import COMPLETED, FAILED, INTERRUPTED, RUNNING, STOPPED, TrialRecord, rank, settle_interrupted
from autotransfer.runner import saved_trial_statuses
from autotransfer.tasks import get_task
from autotransfer.training import TrialFailed, train

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ctx(text_ctx):
    return dataclasses.replace(text_ctx, max_epochs=1, evals_per_epoch=1)


def _oom_above(limit, monkeypatch):
    cls = type(get_task("text-cls"))
    real = cls.logits

    def logits(self, model, inputs):
        if torch.is_grad_enabled() and inputs["input_ids"].shape[0] > limit:  # training steps, not eval
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, model, inputs)

    monkeypatch.setattr(cls, "logits", logits)


def test_out_of_memory_retries_once_with_half_the_batch(ctx, monkeypatch):
    _oom_above(8, monkeypatch)
    reports = []
    config = {"backbone": next(iter(ctx.backbones)), "strategy": "full", "lr": 1e-3, "batch_size": 16}
    train(config, ctx, lambda m, c: reports.append(m))
    assert reports and reports[-1]["batch_size_used"] == 8


def test_a_trial_stopped_by_the_scheduler_frees_its_worker_within_a_step(ctx):
    """Ray reuses a worker only if the stopped trial's thread ends within 2 s: it must not train on to its
    next evaluation (the cause of "Trainable runner reuse requires reset_config()" failures)."""
    steps, reports = [], []
    config = {"backbone": next(iter(ctx.backbones)), "strategy": "full", "lr": 1e-3, "batch_size": 16}

    def stopped_after_five_steps():
        steps.append(1)
        return len(steps) > 5

    train(config, dataclasses.replace(ctx, max_epochs=2), lambda m, c: reports.append(m),
          should_stop=stopped_after_five_steps)
    assert not reports  # 30 steps to the first evaluation: it stopped long before
    assert len(steps) <= 8


def test_out_of_memory_twice_fails_the_trial_with_a_reason(ctx, monkeypatch):
    _oom_above(2, monkeypatch)
    config = {"backbone": next(iter(ctx.backbones)), "strategy": "full", "lr": 1e-3, "batch_size": 16}
    with pytest.raises(TrialFailed, match="out of GPU memory at batch size 16 and again at 8"):
        train(config, ctx, lambda m, c: None)


@pytest.mark.e2e
def test_diverging_trials_fail_alone_and_the_search_completes(ray_session, sentiment_dir, tiny_bert, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(f"""task: text-cls
backbones: [{tiny_bert}]
params: {{batch_size: [16]}}
strategies:
  linear_probe: {{C: {{distribution: loguniform, low: 1.0e-1, high: 1.0e+1}}}}
  full: {{lr: {{distribution: loguniform, low: 1.0e+10, high: 1.0e+12}}}}
""")
    result = autotransfer.search(task="text-cls", data=sentiment_dir, space=space, num_samples=4, max_epochs=1,
                                 evals_per_epoch=1, max_concurrent=2, seed=0, dashboard=False,
                                 output=tmp_path / "run")
    by_strategy = {r.strategy: r for r in result.records}
    assert {r.status for r in result.records if r.strategy == "full"} == {FAILED}
    assert all("NaN/inf" in r.error for r in result.records if r.strategy == "full")
    # a trial's own failure is final: not retried like a lost worker (max_failures is for those)
    assert all(not r.lost_attempts for r in result.records)
    assert all(r.status in (COMPLETED, STOPPED) for r in result.records if r.strategy == "linear_probe")
    assert result.best.strategy == "linear_probe" and len(result.records) == 4
    saved = json.loads((result.output / "results.json").read_text())
    assert sorted(t["status"] for t in saved["trials"]).count(FAILED) == sum(
        1 for r in result.records if r.strategy == "full")
    assert by_strategy["full"].rank > by_strategy["linear_probe"].rank  # failed trials rank last


@pytest.mark.e2e
def test_a_search_where_every_trial_fails_says_why(ray_session, sentiment_dir, tiny_bert, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(f"""task: text-cls
backbones: [{tiny_bert}]
strategies:
  full: {{lr: {{distribution: loguniform, low: 1.0e+10, high: 1.0e+12}}}}
""")
    with pytest.raises(SearchFailed, match="every trial failed .*NaN/inf"):
        autotransfer.search(task="text-cls", data=sentiment_dir, space=space, num_samples=2, max_epochs=1,
                            evals_per_epoch=1, dashboard=False, output=tmp_path / "run")
    assert (tmp_path / "run" / "results.json").exists() and (tmp_path / "run" / "leaderboard.html").exists()


def _search_args(data: Path, space: Path, run: Path, seed: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "autotransfer", "search", "--task", "text-cls", "--data", str(data),
            "--space", str(space), "--num-samples", "6", "--max-epochs", "3", "--max-concurrent", "1",
            "--no-dashboard", "--output", str(run), "--seed", str(seed), "--min-steps", "0", *extra]


def _finished(run: Path) -> list[dict]:
    try:
        trials = json.loads((run / "results.json").read_text())["trials"]
    except (OSError, ValueError, KeyError):
        return []
    return [t for t in trials if t["status"] != "running"]


@pytest.mark.e2e
@pytest.mark.xfail(strict=False, reason="known bug, to fix: when the SIGKILL lands just as the in-flight trial saves "
                   "its first checkpoint, Ray's saved state names trial_*/checkpoint_000000 but it is not on storage, "
                   "and on resume that trial fails ('Could not recover from checkpoint') instead of restarting; seen "
                   "in 2 of 3 full-suite runs on 2026-11-24, passes alone")
def test_sigkill_then_resume_keeps_finished_trials_and_runs_each_trial_once(sentiment_dir, tiny_space, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    args = _search_args(sentiment_dir, tiny_space, run, 3, "--evals-per-epoch", "2")
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and len(_finished(run)) < 2 and proc.poll() is None:
            time.sleep(0.5)
        assert len(_finished(run)) >= 2, (tmp_path / "first.log").read_text()[-3000:]
        time.sleep(3.0)  # past Ray's 1 s state snapshot; the next trial is in flight when the machine "dies"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray processes it started
        proc.wait(timeout=60)
    before = {t["trial_id"]: t for t in _finished(run)}
    assert 2 <= len(before) < 6

    resumed = subprocess.run([sys.executable, "-m", "autotransfer", "resume", str(run)], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = json.loads((run / "results.json").read_text())["trials"]
    ids = [t["trial_id"] for t in final]
    assert len(ids) == 6 and len(set(ids)) == 6  # exactly --num-samples trials, none twice
    after = {t["trial_id"]: t for t in final}
    for trial_id, t in before.items():  # finished trials survived unchanged
        for key in ("status", "best_metric", "iterations", "params", "history"):
            assert after[trial_id][key] == t[key], (trial_id, key)
    assert (run / "best" / "model.safetensors").exists()
    # the resumed search went on with the same Optuna study: every trial told once, in one study
    from autotransfer.searcher import load_study

    told = [t for t in load_study(run).trials if t.state.is_finished()]
    assert len(told) == 6
    # what results.json waits for, read from the state Ray Tune saved (its layout is this Ray version's)
    assert saved_trial_statuses(str(run / "tune")) == {i: "TERMINATED" for i in ids}


class _Trial:
    def __init__(self, trial_id: str, iterations: int):
        self.trial_id, self.config = trial_id, {"backbone": "m", "strategy": "full"}
        self.last_result = {"training_iteration": iterations, "epoch": 1.0}


def test_results_call_a_trial_finished_only_once_ray_has_saved_it_so():
    # a trial that finished a moment before a crash is still "running" in Ray's saved state, and a resume
    # runs it on: results.json must not have called it finished
    saved: dict[str, str] = {"a": "RUNNING", "b": "RUNNING"}
    written = []
    live = LiveLeaderboard("accuracy", max_iterations=2, num_samples=2, console=Console(file=io.StringIO()),
                           on_trial_end=lambda lv: written.append({r.trial_id: r.status for r in lv.records()}),
                           saved_statuses=lambda: dict(saved))
    live.check_every_s = 0.0
    for tid in ("a", "b"):
        live.on_trial_result(0, [], _Trial(tid, 1), {"accuracy": 0.5, "epoch": 1.0, "training_iteration": 1})
    live.on_trial_complete(0, [], _Trial("a", 2))
    live.on_step_end(0, [])
    assert written == [] and {r.status for r in live.records()} == {RUNNING}
    saved["a"] = "TERMINATED"
    live.on_step_end(1, [])
    assert written == [{"a": COMPLETED, "b": RUNNING}]
    live.on_trial_complete(0, [], _Trial("b", 1))
    live.on_step_end(2, [])
    assert len(written) == 1
    saved["b"] = "TERMINATED"
    live.on_step_end(3, [])
    assert written[-1] == {"a": COMPLETED, "b": STOPPED}
    # no saved state to read (e.g. a layout this code does not know): finished trials are passed on at once
    unknown = LiveLeaderboard("accuracy", 2, 1, console=Console(file=io.StringIO()),
                              on_trial_end=lambda lv: written.append("c"), saved_statuses=lambda: None)
    unknown.on_trial_complete(0, [], _Trial("c", 2))
    unknown.on_step_end(0, [])
    assert written[-1] == "c"


@pytest.mark.e2e
def test_ctrl_c_writes_results_and_says_how_to_resume(sentiment_dir, tiny_space, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    args = _search_args(sentiment_dir, tiny_space, run, 4)
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and len(_finished(run)) < 1 and proc.poll() is None:
            time.sleep(0.5)
        assert len(_finished(run)) >= 1
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends: the whole foreground group
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err[-3000:]
    assert f"autotransfer resume {run}" in err.replace("\n", "")
    saved = json.loads((run / "results.json").read_text())["trials"]
    assert 1 <= sum(t["status"] in ("completed", "stopped_early") for t in saved) < 6
    assert (run / "leaderboard.html").exists()


def test_the_terminal_ranks_trials_exactly_as_the_results_do():
    out = io.StringIO()
    live = LiveLeaderboard("accuracy", max_iterations=2, num_samples=3, console=Console(file=out, width=200))
    for tid, acc in (("low", 0.6), ("high", 0.9), ("failed", 0.95)):
        live.on_trial_result(0, [], _Trial(tid, 1), {"accuracy": acc, "epoch": 1.0, "training_iteration": 1})
    live.on_trial_complete(0, [], _Trial("low", 2))
    live.on_trial_complete(0, [], _Trial("high", 2))
    live.on_trial_error(0, [], _Trial("failed", 1))
    table_ids = [str(cell) for cell in live.table().columns[1]._cells]
    assert table_ids == [r.trial_id for r in rank(live.records())] == ["high", "low", "failed"]
    assert "[3/3] failed" in out.getvalue() and "leader 0.9000" in out.getvalue()  # progress lines agree


def test_only_trials_a_stop_cut_short_become_interrupted():
    def rec(tid, status):
        return TrialRecord(trial_id=tid, backbone="b", strategy="full", params={}, status=status, iterations=1,
                           epochs=1.0, best_metric=0.5, best_epoch=1.0, wall_time_s=1.0, trainable_params=None,
                           total_params=None)

    records = [rec("asha", STOPPED), rec("cut", STOPPED), rec("never-ended", RUNNING), rec("broke", FAILED),
               rec("done", COMPLETED)]
    settled = {r.trial_id: r.status for r in settle_interrupted(records, {"never-ended", "broke"}, {"cut", "done"})}
    assert settled == {"asha": STOPPED, "cut": INTERRUPTED, "never-ended": INTERRUPTED, "broke": FAILED,
                       "done": COMPLETED}
