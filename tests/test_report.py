"""The HTML report, built from a saved results folder: figures, ranking, escaping, rebuild."""

from __future__ import annotations

import json
import re

import pytest

from autotransfer.report import (confusion_matrix, cost_vs_quality, importance, learning_curves, leaderboard_frame,
                                 parallel_coordinates, pareto_front, strategy_backbone_grid, write_report)
from autotransfer.results import TrialRecord, load_results, rank, save_results

XSS = "<script>alert(1)</script>"


def _record(i, strategy, backbone, score, status="completed", **params):
    history = [[e, score - 0.1 / e] for e in (1.0, 2.0, 3.0)][: 1 if status == "stopped_early" else 3]
    return TrialRecord(trial_id=f"t{i}", backbone=backbone, strategy=strategy, params=params, status=status,
                       iterations=len(history), epochs=history[-1][0] if history else 0.0,
                       best_metric=None if status == "failed" else max(v for _, v in history),
                       best_epoch=1.0, wall_time_s=10.0 * (i + 1), trainable_params=1000 * (i + 1),
                       total_params=100_000, error="TrialFailed: loss became NaN" if status == "failed" else None,
                       history=[] if status == "failed" else history, checkpoint_bytes=2048 * (i + 1))


@pytest.fixture()
def run_dir(tmp_path):
    records = rank([
        _record(0, "full", "/models/bert", 0.91, lr=3e-5, batch_size=16, weight_decay=0.01),
        _record(1, "lora", "/models/bert", 0.89, lr=5e-4, batch_size=32, weight_decay=0.001, lora_r=8),
        _record(2, "linear_probe", f"/models/{XSS}", 0.70, status="stopped_early", head_lr=1e-3, batch_size=16,
                weight_decay=0.02),
        _record(3, "freeze", "/models/distil", 0.85, lr=1e-4, batch_size=32, weight_decay=0.005, freeze_depth=2),
        _record(4, "full", "/models/distil", 0.0, status="failed", lr=1e-2, batch_size=16, weight_decay=0.1),
        _record(5, "lora", "/models/distil", 0.86, lr=1e-3, batch_size=16, weight_decay=0.003, lora_r=4),
    ])
    meta = {
        "run_name": "demo", "task": "text-cls", "metric": "accuracy", "command": f"autotransfer search --data {XSS}",
        "data": {"data": "reviews.csv", "label_names": ["neg", XSS],
                 "splits": {"train": {"rows": 100, "class_counts": {"neg": 50, XSS: 50}}}},
        "engine": {"sampler": "tpe", "seed": 0, "num_samples": 6, "grace_period_epochs": 1, "reduction_factor": 2,
                   "max_epochs": 3, "evals_per_epoch": 1},
        "environment": {"cpus": 2, "gpu": None, "platform": "Linux", "versions": {"torch": "2"}},
        "test": {"test_metrics": {"accuracy": 0.9, "f1_macro": 0.89}, "confusion_matrix": [[9, 1], [1, 9]],
                 "per_class": {"neg": {"precision": 0.9, "recall": 0.9, "f1-score": 0.9},
                               XSS: {"precision": 0.9, "recall": 0.9, "f1-score": 0.9}}},
        "wall_time_s": 60.0, "trial_hours": 0.02, "dashboard": "127.0.0.1:8265",
    }
    save_results(tmp_path, records, "accuracy", meta)
    return tmp_path


def test_figures_are_built_from_saved_results(run_dir):
    records, meta = load_results(run_dir)
    curves = learning_curves(records, "accuracy")
    stopped_marks = [t for t in curves.data if t.marker.symbol == "x"]
    assert len(stopped_marks) == 1  # the early-stopped trial is visibly cut off
    grid = strategy_backbone_grid(records, "accuracy")
    assert grid.data[0].z.shape == (4, 3)
    assert len(cost_vs_quality(records, "accuracy").data) >= 4
    assert parallel_coordinates(records, "accuracy") is not None
    imp = importance(records, "accuracy")
    assert imp is not None and abs(sum(imp.data[0].x) - 1.0) < 1e-6
    cm = confusion_matrix(meta["test"], meta["data"]["label_names"])
    assert cm.data[0].z == ((9, 1), (1, 9)) or list(map(list, cm.data[0].z)) == [[9, 1], [1, 9]]


def test_pareto_front():
    costs, scores = [1, 2, 3, 4, 5], [0.5, 0.7, 0.6, 0.9, 0.8]
    assert pareto_front(costs, scores) == [0, 1, 3]


def test_table_is_ranked_with_statuses_and_test_metric_for_the_best(run_dir):
    records, _ = load_results(run_dir)
    df = leaderboard_frame(records, "accuracy", {"accuracy": 0.9})
    assert df["rank"].tolist() == [1, 2, 3, 4, 5, 6]
    assert df["val accuracy"].dropna().is_monotonic_decreasing
    assert df["test accuracy"].iloc[0] == 0.9 and df["test accuracy"].iloc[1:].isna().all()
    assert "stopped early by ASHA at rung 1" in df["status"].tolist()
    assert df["status"].iloc[-1] == "failed: TrialFailed: loss became NaN"


def test_page_is_self_contained_and_escapes_user_strings(run_dir):
    records, meta = load_results(run_dir)
    page = write_report(run_dir, records, meta).read_text()
    assert XSS not in page  # never raw, anywhere: table, header, figure JSON
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("<script") == page.count("</script>")
    assert not re.search(r"<script[^>]*\ssrc=", page) and not re.search(r"<link[^>]*\shref=", page)  # nothing fetched
    assert len(re.findall(r"Plotly\.newPlot", page)) >= 5
    assert page.count("plotly.js v") == 1  # plotly.js embedded once
    assert 'id="leaderboard"' in page and "127.0.0.1:8265" in page


def test_the_page_shows_the_pre_rank_and_the_soup_while_running_and_after(run_dir):
    records, meta = load_results(run_dir)
    scores = {"/models/bert": {"logme": -0.5, "knn_accuracy": 0.8}, "/models/distil": {"logme": -0.7,
                                                                                        "knn_accuracy": None}}
    meta["prerank"] = {"scores": scores, "order": ["/models/bert", "/models/distil"], "kept": ["/models/bert"],
                       "asked": 1, "seconds": 1.5}  # as drawn while the search runs: no outcome yet
    page = write_report(run_dir, records, {**meta, "live": True}).read_text()
    assert "backbone pre-rank" in page and "-0.500 / 0.800" in page and "not searched: --prerank 1" in page
    assert "<th>test accuracy</th>" in page  # the exported model is the best trial's: its row shows its test score
    meta["prerank"].update(best_validation={"/models/bert": 0.91}, spearman_logme=None)
    meta["soup"] = {"ingredients": ["t0", "t1"], "validation_metric": 0.93, "best_single_validation_metric": 0.91,
                    "exported": True, "tried": [{"trial_id": "t1", "validation_metric": 0.93, "kept": True}]}
    page = write_report(run_dir, records, meta).read_text()
    assert "best validation 0.9100" in page and "2 trials averaged" in page and "(the soup)" in page
    # the test score belongs to the exported soup, not to the best trial's row
    assert "<th>test accuracy</th>" not in page


def test_report_command_rebuilds_the_page(run_dir):
    from autotransfer.cli import main

    (run_dir / "leaderboard.html").unlink(missing_ok=True)
    assert main(["report", str(run_dir)]) == 0
    page = (run_dir / "leaderboard.html").read_text()
    assert page.count("plotly.js v") == 1 and 'id="leaderboard"' in page  # the whole page, plotly embedded
    assert page.count("<tr") - 1 == 6  # one row per saved trial (plus the header)


def test_table_shows_nodes_and_lost_attempts_of_a_cluster_run():
    a, b = "a1b2c3d4" + "0" * 48, "ffee0011" + "1" * 48
    moved = _record(0, "full", "/models/bert", 0.9, lr=1e-4)
    moved.nodes, moved.lost_attempts = [b, a], [{"node": b, "epoch": 1.5, "error": "ActorDiedError: node died"}]
    stayed = _record(1, "lora", "/models/bert", 0.8, lr=1e-3)
    stayed.nodes = [a]
    df = leaderboard_frame(rank([moved, stayed]), "accuracy")
    assert df["node"].tolist() == ["ffee0011 > a1b2c3d4", "a1b2c3d4"]
    assert df["status"].iloc[0] == ("completed (after 1 lost attempt: node ffee0011 at epoch 1.50: "
                                    "ActorDiedError: node died)")
    assert df["status"].iloc[1] == "completed"
    one_node = _record(2, "full", "/models/bert", 0.7)
    one_node.nodes = [a]
    assert "node" not in leaderboard_frame(rank([one_node, stayed]), "accuracy").columns


def test_table_shows_peak_gpu_memory_only_for_gpu_runs():
    gpu = _record(0, "full", "/models/bert", 0.9, lr=1e-4)
    gpu.last_metrics = {"gpu_memory_peak_mb": 435.4, "accuracy": 0.9}
    lora = _record(1, "lora", "/models/bert", 0.8, lr=1e-3)
    lora.last_metrics = {"gpu_memory_peak_mb": 212.5}
    df = leaderboard_frame(rank([gpu, lora]), "accuracy")
    assert df["peak GPU memory (MiB)"].tolist() == [435, 212]
    cpu = _record(2, "full", "/models/bert", 0.7)
    assert "peak GPU memory (MiB)" not in leaderboard_frame(rank([cpu]), "accuracy").columns


def test_trial_records_keep_the_gpu_memory_a_trial_reported():
    from autotransfer.results import record_from_result

    class Result:
        config = {"backbone": "/models/bert", "strategy": "full", "lr": 1e-4}
        metrics = {"accuracy": 0.9, "epoch": 1.0, "training_iteration": 2, "trial_id": "t1", "time_total_s": 3.0,
                   "gpu_memory_peak_mb": 435.4, "gpu_memory_at_start_mb": 65.0, "batch_size_used": 16, "done": True}
        metrics_dataframe = None
        error = None
        checkpoint = None
        best_checkpoints = []
        path = "/runs/tune/trial_t1"

    r = record_from_result(Result(), "accuracy", 2)
    assert r.trial_id == "t1"
    assert r.last_metrics["gpu_memory_peak_mb"] == 435.4
    assert r.last_metrics["gpu_memory_at_start_mb"] == 65.0 and r.last_metrics["batch_size_used"] == 16


def test_a_record_never_takes_another_trials_identity_or_history():
    """A failed actor reuse left the previous trial's last result on the new one: the leaderboard showed
    one trial twice and lost the real one."""
    import pandas as pd

    from autotransfer.results import FAILED, record_from_result

    class Result:
        config = {"backbone": "/models/bert", "strategy": "lora", "lr": 1e-3}
        metrics = {"accuracy": 0.9, "epoch": 2.0, "training_iteration": 4, "trial_id": "previous"}
        metrics_dataframe = pd.DataFrame({"epoch": [1.0, 2.0], "accuracy": [0.8, 0.9]})
        error = RuntimeError("Trainable runner reuse requires reset_config() to be implemented and return True.")
        checkpoint = None
        best_checkpoints = []
        path = "/runs/tune/trial_this"

    r = record_from_result(Result(), "accuracy", 4)
    assert r.trial_id == "this" and r.strategy == "lora"
    assert r.status == FAILED and "reset_config" in r.error
    assert r.history == [] and r.best_metric is None


def test_the_live_report_writes_results_at_once_and_draws_the_latest_page_off_the_loop(tmp_path, monkeypatch):
    import pickle
    import threading

    import autotransfer.report
    from autotransfer.report_writer import ReportWriter

    drawing, release, drawn = threading.Event(), threading.Event(), []

    def slow_page(out, records, meta):  # stands in for plotly: blocks until released
        drawn.append([r.trial_id for r in records])
        drawing.set()
        release.wait(30)

    monkeypatch.setattr(autotransfer.report, "write_report", slow_page)

    class Live:
        def __init__(self, n):
            self.n = n

        def records(self):
            return rank([_record(i, "full", "/models/bert", 0.8 + i / 100) for i in range(self.n)])

    from autotransfer.run_info import RunInfo

    info = RunInfo(run_name="demo", task="text-cls", metric="accuracy", command=None, data={}, space={},
                   dashboard=None, cluster={}, preparation={}, environment={}, engine={}, budget={})
    writer = ReportWriter(tmp_path, "accuracy", info, 0.0)
    writer(Live(1))
    assert drawing.wait(30)  # the first page is being drawn, and Ray Tune's loop is not held by it:
    writer(Live(2))
    writer(Live(3))
    assert len(load_results(tmp_path)[0]) == 3  # results.json is current without waiting for the page
    release.set()
    writer.close()
    assert drawn == [["t0"], ["t2", "t1", "t0"]]  # the stale middle request was skipped, the latest drawn
    # Ray pickles it with the run config for Tuner.restore
    copy = pickle.loads(pickle.dumps(writer))
    assert (copy.out, copy.metric, copy.meta) == (tmp_path, "accuracy", info)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["run_name"] == "demo" and saved["live"] is True and "test" not in saved  # an interim page


def test_the_tasks_objective_chooses_the_test_figures(run_dir):
    records, meta = load_results(run_dir)
    page = write_report(run_dir, records, meta).read_text()
    assert "confusion matrix (rows: true, columns: predicted)" in page  # classification's figure
    other = write_report(run_dir, records, {**meta, "task": "no-such-task"}).read_text()
    assert "confusion matrix" not in other and "leaderboard" in other  # unknown task: the generic page still renders


def test_the_page_says_when_intervals_covered_only_the_best_trials(run_dir):
    records, meta = load_results(run_dir)
    page = write_report(run_dir, records, {**meta, "intervals": {"trials": 6, "of": 6, "resamples": 1000,
                                                                 "metric_s": 0.0001, "budget_s": 60.0}}).read_text()
    assert "1000 paired bootstrap resamples" in page and "only" not in page.split("95% intervals")[1][:300]
    page = write_report(run_dir, records, {**meta, "intervals": {"trials": 2, "of": 6, "resamples": 30,
                                                                 "metric_s": 0.43, "budget_s": 60.0}}).read_text()
    assert "for the best 2 of 6 trials only" in page and "takes 0.43 s" in page
