"""The local Ray a search starts (autotransfer.runner.start_ray)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

#: starts Ray the way a search does, waits for the raylet to prestart what it would, and counts the idle workers
#: in this process's tree (psutil: a dependency of peft); a fresh process, so no Ray of the test session interferes
_COUNT_IDLE = textwrap.dedent("""
    import time, types
    import psutil, ray
    from autotransfer.runner import start_ray

    start_ray(types.SimpleNamespace(address=None, dashboard=False, verbose=False))
    time.sleep(4)
    names = []
    for p in psutil.Process().children(recursive=True):
        try:
            names.append(" ".join(p.cmdline()))
        except psutil.Error:  # ended between the listing and the read
            pass
    print("idle", sum(1 for n in names if "ray::IDLE" in n), "processes", len(names))
    ray.shutdown()
""")


def test_a_local_ray_starts_no_idle_workers_that_no_trial_could_use():
    """Ray Tune's trial actors carry their own runtime env, so workers Ray prestarts for the driver are never
    used by a trial, only started and later killed: the search's local Ray does not start them."""
    done = subprocess.run([sys.executable, "-c", _COUNT_IDLE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    line = done.stdout.strip().splitlines()[-1].split()
    assert int(line[3]) >= 4, done.stdout  # the count looked at Ray's processes (gcs, raylet, agents...)
    assert line[1] == "0", f"idle workers were started: {done.stdout}"
