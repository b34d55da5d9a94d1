"""Scale out: a real two-node Ray cluster on loopback, driven by `autotransfer search --address`.

Each test starts a head and a worker node as separate `ray start --block` processes (each
with one CPU, in its own process group, with a token of its own), runs the CLI as a separate
driver process, and kills both process groups at the end.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
#: Ray's CLI from this interpreter (the `ray` script may not be on PATH, e.g. in a virtualenv not activated)
RAY = [sys.executable, "-m", "ray.scripts.scripts"]
pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalCluster:
    address: str
    dashboard: str
    env: dict
    head: subprocess.Popen
    worker: subprocess.Popen
    logs: Path

    def nodes(self) -> list[dict]:
        out = subprocess.run([*RAY, "list", "nodes", "--format", "json", "--address", self.dashboard],
                             env=self.env, capture_output=True, text=True, timeout=60)
        return json.loads(out.stdout) if out.returncode == 0 and out.stdout.strip().startswith("[") else []

    def alive(self) -> list[dict]:
        return [n for n in self.nodes() if n.get("state") == "ALIVE"]

    def kill_worker(self) -> None:
        _kill_group(self.worker)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:  # pragma: no cover
        pass


@pytest.fixture
def ray_cluster(tmp_path):
    """A head and a worker node, 1 CPU each, token-authenticated, on this machine."""
    port, dash = _free_port(), _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    logs = tmp_path / "ray-logs"
    logs.mkdir()
    head = subprocess.Popen(
        # --node-ip-address: all test traffic on loopback (Ray otherwise picks the machine's network address)
        [*RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=1",
         "--num-gpus=0",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         f"--dashboard-agent-listen-port={_free_port()}", f"--ray-client-server-port={_free_port()}",
         "--disable-usage-stats"],
        env=env, stdout=open(logs / "head.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    worker = None
    try:
        cluster = LocalCluster(address=f"127.0.0.1:{port}", dashboard=f"http://127.0.0.1:{dash}", env=env,
                               head=head, worker=head, logs=logs)
        deadline = time.time() + 120
        while time.time() < deadline and not cluster.alive():
            assert head.poll() is None, (logs / "head.log").read_text()[-3000:]
            time.sleep(1)
        worker = subprocess.Popen(
            [*RAY, "start", "--block", "--node-ip-address=127.0.0.1", f"--address=127.0.0.1:{port}", "--num-cpus=1",
             "--num-gpus=0",
             f"--dashboard-agent-listen-port={_free_port()}"],
            env=env, stdout=open(logs / "worker.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
        cluster.worker = worker
        while time.time() < deadline and len(cluster.alive()) < 2:
            assert worker.poll() is None, (logs / "worker.log").read_text()[-3000:]
            time.sleep(1)
        assert len(cluster.alive()) == 2, "the two-node cluster did not come up"
        yield cluster
    finally:
        if worker is not None:
            _kill_group(worker)
        _kill_group(head)


def _search(cluster: LocalCluster, data: Path, space: Path, storage: Path, run_name: str, *extra: str,
            wait: bool = True):
    args = [sys.executable, "-m", "autotransfer", "search", "--task", "text-cls", "--data", str(data),
            "--space", str(space), "--address", cluster.address, "--storage", str(storage),
            "--run-name", run_name, "--seed", "1", "--min-steps", "0", *extra]  # epochs as given: no step floor
    if wait:
        return subprocess.run(args, cwd=REPO, env=cluster.env, capture_output=True, text=True, timeout=900)
    return subprocess.Popen(args, cwd=REPO, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def test_search_on_a_two_node_cluster_spreads_trials_and_writes_to_storage(ray_cluster, sentiment_dir, tiny_space,
                                                                             tmp_path):
    storage = tmp_path / "shared-storage"
    # trials long enough (a few seconds) that the worker node's trial process is up before the head's
    # process, reused by Ray Tune for the next trial, has run them all (it did at 2 epochs: 0.6 s a trial)
    done = _search(ray_cluster, sentiment_dir, tiny_space, storage, "on-cluster", "--num-samples", "4",
                   "--max-epochs", "12", "--scheduler", "fifo")
    assert done.returncode == 0, done.stderr[-4000:]
    # the start says where it runs: the cluster's nodes and resources, its dashboard, the model folders' case
    assert f"Ray cluster at {ray_cluster.address}: 2 node(s), 2 CPUs" in done.stderr
    assert ray_cluster.dashboard.replace("http://", "") in done.stderr
    assert "found on all 2 node(s), used in place" in done.stderr

    run = storage / "on-cluster"
    results = json.loads((run / "results.json").read_text())
    trials = results["trials"]
    assert len(trials) == 4 and all(t["status"] == "completed" for t in trials)
    alive = {n["node_id"] for n in ray_cluster.alive()}
    used = {n for t in trials for n in t["nodes"]}
    assert len(used) == 2 and used <= alive  # trials ran on both nodes
    assert len(results["cluster"]["nodes"]) == 2
    # results, report, checkpoints and the export all live in the storage folder
    for name in ("leaderboard.html", "results.csv", "test_metrics.json", "settings.json", "best/model.safetensors"):
        assert (run / name).exists(), name
    assert list((run / "tune").glob("trial_*/checkpoint_*"))
    best = json.loads((run / "best" / "autotransfer.json").read_text())
    assert best["trial_id"] == trials[0]["trial_id"]
    html = (run / "leaderboard.html").read_text()
    assert "2 node(s)" in html


LOSE_NODE_EPOCHS = 20


def test_losing_a_worker_node_mid_search_retries_its_trial_and_completes(ray_cluster, sentiment_dir, tiny_space,
                                                                         tmp_path):
    storage = tmp_path / "shared-storage"
    worker_id = next(n["node_id"] for n in ray_cluster.alive() if not n.get("is_head_node"))
    # trials of 20 epochs (several seconds): the worker's trial must still have epochs left when the kill lands,
    # although the driver writes result.json a moment after the worker reported (at 6 epochs, under load, the
    # worker's trial had written its final checkpoint before the kill, and its retry had nothing left to do)
    proc = _search(ray_cluster, sentiment_dir, tiny_space, storage, "lose-a-node", "--num-samples", "3",
                   "--max-epochs", str(LOSE_NODE_EPOCHS), "--scheduler", "fifo", "--strategies", "full", wait=False)
    tune_dir = storage / "lose-a-node" / "tune"
    try:
        # wait until a trial on the worker node has reported (and so checkpointed) at least once
        deadline = time.time() + 300
        seen = False
        while time.time() < deadline and not seen and proc.poll() is None:
            for f in tune_dir.glob("trial_*/result.json"):
                lines = [json.loads(ln) for ln in f.read_text().splitlines() if ln.strip()]
                seen = seen or any(r.get("node_id") == worker_id for r in lines)
            time.sleep(0.5)
        assert seen, "no trial reported from the worker node"
        ray_cluster.kill_worker()
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out[-4000:]
    assert "retrying it from its last checkpoint" in out

    run = storage / "lose-a-node"
    trials = json.loads((run / "results.json").read_text())["trials"]
    assert len(trials) == 3 and all(t["status"] == "completed" for t in trials)
    lost = [t for t in trials if t["lost_attempts"]]
    assert lost, "the trial on the dead node shows no lost attempt"
    t = lost[0]
    assert t["lost_attempts"][0]["node"] == worker_id
    assert t["nodes"][0] == worker_id and t["nodes"][-1] != worker_id  # finished on the surviving node
    # it went on from its checkpoint on the surviving node instead of starting over
    reports = [json.loads(ln) for f in tune_dir.glob(f"*{t['trial_id']}*/result.json")
               for ln in f.read_text().splitlines() if ln.strip()]
    after = [r["epoch"] for r in reports if r.get("node_id") != worker_id and "epoch" in r]
    assert after and min(after) > min(r["epoch"] for r in reports if "epoch" in r)
    assert max(after) == LOSE_NODE_EPOCHS
    assert (run / "best" / "model.safetensors").exists()
    html = (run / "leaderboard.html").read_text()
    assert "lost attempt" in html


def test_search_submitted_as_a_ray_job_runs_its_driver_on_the_cluster(ray_cluster, sentiment_dir, tiny_space, tmp_path):
    """The README's advice for a driver outside the cluster: `ray job submit -- autotransfer search --address auto`."""
    storage = tmp_path / "shared-storage"
    job = subprocess.run(
        [*RAY, "job", "submit", "--address", ray_cluster.dashboard, "--",
         sys.executable, "-m", "autotransfer", "search", "--task", "text-cls", "--data", str(sentiment_dir),
         "--space", str(tiny_space), "--address", "auto", "--storage", str(storage), "--run-name", "as-a-job",
         "--num-samples", "2", "--max-epochs", "1", "--strategies", "linear_probe"],
        cwd=tmp_path, env=ray_cluster.env, capture_output=True, text=True, timeout=600)
    assert job.returncode == 0, (job.stdout + job.stderr)[-4000:]
    assert "succeeded" in (job.stdout + job.stderr).lower()
    run = storage / "as-a-job"
    trials = json.loads((run / "results.json").read_text())["trials"]
    assert len(trials) == 2 and (run / "best" / "model.safetensors").exists()
