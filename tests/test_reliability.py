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
from autotransfer.tune_state import mend_missing_checkpoints, saved_trial_statuses
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


def _in_flight_with_checkpoint(run: Path):
    """An unfinished trial whose checkpoint the saved state names and storage holds (None if there is none)."""
    from autotransfer.tune_state import saved_trials

    for t in saved_trials(str(run / "tune")) or []:
        if t.status == "RUNNING" and t.checkpoint and (run / "tune" / f"trial_{t.trial_id}" / t.checkpoint).is_dir():
            return t
    return None


@pytest.mark.e2e
def test_sigkill_then_resume_keeps_finished_trials_and_runs_each_trial_once(sentiment_dir, tiny_space, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    args = _search_args(sentiment_dir, tiny_space, run, 3, "--evals-per-epoch", "2")
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline, in_flight = time.time() + 300, None
        # the machine "dies" while a trial is in flight, after the saved state recorded one of its checkpoints:
        # frozen (SIGSTOP) to check that without a race, killed if so, else let go on
        while time.time() < deadline and proc.poll() is None and in_flight is None:
            time.sleep(0.2)
            if len(_finished(run)) < 2 or _in_flight_with_checkpoint(run) is None:
                continue
            os.killpg(proc.pid, signal.SIGSTOP)  # the driver and the Ray processes it started
            in_flight = _in_flight_with_checkpoint(run) if len(_finished(run)) >= 2 else None
            os.killpg(proc.pid, signal.SIGKILL if in_flight else signal.SIGCONT)
        assert in_flight is not None, (tmp_path / "first.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    # the kill landed where Ray had registered the trial's next checkpoint and deleted the one the saved state
    # names, before saving the state again (a 1 s window at every evaluation): the trial must continue from it
    trial_dir = run / "tune" / f"trial_{in_flight.trial_id}"
    named = int(in_flight.checkpoint.split("_")[1])
    (trial_dir / in_flight.checkpoint).rename(trial_dir / f"checkpoint_{named + 1:06d}")
    before = {t["trial_id"]: t for t in _finished(run)}
    assert 2 <= len(before) < 6

    resumed = subprocess.run([sys.executable, "-m", "autotransfer", "resume", str(run)], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = json.loads((run / "results.json").read_text())["trials"]
    continued = next(t for t in final if t["trial_id"] == in_flight.trial_id)
    assert continued["status"] in (COMPLETED, STOPPED), continued.get("error")
    assert f"trial {in_flight.trial_id}: its last saved checkpoint was lost" in resumed.stderr
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


def _snapshot(tune: Path, trials: dict[str, tuple[str, str | None]]) -> None:
    """An experiment snapshot in the layout Ray Tune 2.x writes: trial id -> (status, latest checkpoint)."""
    data = [[json.dumps({"trial_id": tid, "status": status}),
             json.dumps({"last_result": {"checkpoint_dir_name": named, "training_iteration": 1}})]
            for tid, (status, named) in trials.items()]
    tune.mkdir(parents=True, exist_ok=True)
    (tune / "experiment_state-2026-11-24_10-00-00.json").write_text(json.dumps({"trial_data": data}))


def _checkpoint(folder: Path, step: int) -> None:
    from autotransfer.checkpoints import PREDICTIONS_FILE, STATE_FILE, WEIGHTS_FILE

    folder.mkdir(parents=True)
    (folder / WEIGHTS_FILE).write_bytes(b"w" * 8)
    (folder / PREDICTIONS_FILE).write_bytes(b"p" * 8)
    (folder / STATE_FILE).write_text(json.dumps({"step": step}))


def test_a_resume_puts_back_the_checkpoint_a_crash_left_missing(tmp_path):
    # Ray deletes a trial's older checkpoint when it registers the next, and saves the snapshot naming the new
    # one up to a second later: a crash in between leaves the snapshot naming a deleted checkpoint
    tune = tmp_path / "tune"
    _snapshot(tune, {"a": ("RUNNING", "checkpoint_000002"), "b": ("RUNNING", "checkpoint_000000"),
                     "c": ("TERMINATED", "checkpoint_000001"), "d": ("PENDING", None)})
    _checkpoint(tune / "trial_a" / "checkpoint_000003", step=40)  # a: only the newer one is on storage
    _checkpoint(tune / "trial_b" / "checkpoint_000000", step=10)  # b: named one there, an unregistered newer too
    _checkpoint(tune / "trial_b" / "checkpoint_000001", step=20)
    (tune / "trial_c").mkdir()  # c: finished, its checkpoints pruned: not touched

    assert mend_missing_checkpoints(str(tune)) == ["a"]
    assert sorted(p.name for p in (tune / "trial_a").iterdir()) == ["checkpoint_000002"]
    assert json.loads((tune / "trial_a" / "checkpoint_000002" / "trial_state.json").read_text())["step"] == 40
    # Ray writes b's next checkpoint into checkpoint_000001 without emptying it: the stale one is gone first
    assert sorted(p.name for p in (tune / "trial_b").iterdir()) == ["checkpoint_000000"]
    assert list((tune / "trial_c").iterdir()) == []
    assert saved_trial_statuses(str(tune)) == {"a": "RUNNING", "b": "RUNNING", "c": "TERMINATED", "d": "PENDING"}

    # a half-written newer checkpoint is not continued from
    _snapshot(tune, {"e": ("RUNNING", "checkpoint_000000")})
    _checkpoint(tune / "trial_e" / "checkpoint_000001", step=5)
    (tune / "trial_e" / "checkpoint_000001" / "trial_state.json").unlink()
    assert mend_missing_checkpoints(str(tune)) == []
    assert saved_trial_statuses(str(tmp_path / "nothing")) is None


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


def test_a_time_budget_that_ends_before_any_evaluation_is_named_as_the_cause():
    """A search whose --time-budget ran out before any trial's first round fails with a line saying that (and how
    to fix it), not as if its trials had failed; a trial's own error is still the reason when there is one."""
    from autotransfer.api import no_result_reason
    from autotransfer.budget import derive_budget

    def rec(tid, error=None, iterations=0):
        return TrialRecord(trial_id=tid, backbone="b", strategy="full", params={}, status=STOPPED,
                           iterations=iterations, epochs=0.0, best_metric=None, best_epoch=None, wall_time_s=1.0,
                           trainable_params=None, total_params=None, error=error)

    budget = derive_budget(42, 4, max_epochs=3, evals_per_epoch=2, grace_rounds=2, min_steps=300)
    line = no_result_reason([rec("a"), rec("b")], 240.0, budget)
    assert line.startswith("--time-budget 240 s ended before any trial's first evaluation")
    assert "50 steps at batch 4" in line and "--min-steps" in line
    assert no_result_reason([rec("a"), rec("b", error="CUDA out of memory")], 240.0, budget) \
        == "every trial failed (2); first reason: CUDA out of memory"
    assert "time-budget" not in no_result_reason([rec("a")], None, budget)


def test_a_search_hands_its_cached_gpu_blocks_back_when_it_ends_even_on_an_error(tmp_path, monkeypatch):
    """The calling process runs soup, export and test on the GPU: its cached blocks go back after the search,
    however it ends (here: bad input, refused at the door)."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append(1))
    _refused_search(tmp_path)
    assert calls == [1]


def _refused_search(tmp_path):
    """A search refused at the door (one class only): it ends at once, through the search's cleanup."""
    data = tmp_path / "one_class.csv"
    data.write_text("text,label\n" + "".join(f"sentence {i},pos\n" for i in range(20)))
    with pytest.raises(autotransfer.UserError, match="class"):
        autotransfer.search(task="text-cls", data=data, dashboard=False, output=tmp_path / "run")


def test_a_search_without_a_gpu_skips_the_closing_collection(tmp_path, monkeypatch):
    """Nothing is cached on a GPU, so there is nothing to hand back: no full garbage collection at the end
    (0.3 s of a CPU search's last second)."""
    import gc

    collections, emptied = [], []
    monkeypatch.setattr(gc, "collect", lambda *a: collections.append(1) or 0)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(1))
    _refused_search(tmp_path)
    assert collections == [] and emptied == []


class _EndedTrial(_Trial):
    def __init__(self, trial_id: str, iterations: int, status: str = "TERMINATED"):
        super().__init__(trial_id, iterations)
        self.status = status


def test_trials_the_time_budget_ended_are_shown_ended_and_a_ctrl_c_leaves_them_cut():
    """Ray Tune's time budget marks the running trials terminated without on_trial_complete: the terminal still
    prints each one's line (stopped, with its best so far) and counts it decided.  After a Ctrl-C the same
    trials stay undecided, for the resume to run on."""
    for interrupted in (False, True):
        out = io.StringIO()
        live = LiveLeaderboard("accuracy", max_iterations=4, num_samples=3, console=Console(file=out, width=200))
        for tid, acc in (("done", 0.7), ("cut", 0.8)):
            live.on_trial_result(0, [], _Trial(tid, 1), {"accuracy": acc, "epoch": 1.0, "training_iteration": 1})
        live.on_trial_complete(0, [], _Trial("done", 4))
        live.interrupted = interrupted
        live.on_experiment_end([_EndedTrial("done", 4), _EndedTrial("cut", 1), _EndedTrial("never-started", 0)])
        statuses = {r.trial_id: r.status for r in live.records(saved_only=False)}
        if interrupted:
            assert live.undecided() == {"cut"} and "cut" not in out.getvalue()
        else:
            assert live.undecided() == set() and statuses == {"done": COMPLETED, "cut": STOPPED}
            assert "[2/3] cut m full: stopped_early (the time budget ended it), best accuracy 0.8000; leader 0.8000" \
                in out.getvalue()
