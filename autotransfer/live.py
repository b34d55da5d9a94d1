"""The live leaderboard in the terminal: a Ray Tune callback drawing a rich table.

On a terminal the table refreshes in place as trials report; elsewhere (CI, logs)
one line is printed per finished trial.  The ranking rule is the same as in the
saved results and the HTML report.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from typing import Any, Callable, Optional

from ray.tune import Callback
from rich.console import Console
from rich.live import Live
from rich.table import Table

from autotransfer.backbones import display_name
from autotransfer.results import (FAILED, NODE_ID, RECIPE, RUNNING, TRIAL_ERROR, TrialRecord, finish_status, one_line,
                                  rank)


class LiveLeaderboard(Callback):
    """Tracks every trial's best validation metric and shows the ranking."""

    #: how often (seconds) Ray Tune's saved state is read while a finished trial waits to be saved
    check_every_s = 0.25

    def __init__(self, metric: str, max_iterations: int, num_samples: int, console: Optional[Console] = None,
                 on_trial_end: Optional[Callable[["LiveLeaderboard"], None]] = None, rows: int = 15,
                 saved_statuses: Optional[Callable[[], Optional[dict[str, str]]]] = None):
        self.metric, self.max_iterations, self.num_samples = metric, max_iterations, num_samples
        self.console = console or Console(stderr=True)
        self.rows = rows
        self.trials: dict[str, dict[str, Any]] = {}
        self.on_trial_end = on_trial_end
        self._live: Optional[Live] = None
        self._start = time.monotonic()
        self.first_result_s: Optional[float] = None
        #: trial ids that had not finished when the experiment ended (Ctrl-C)
        self.unfinished: set[str] = set()
        #: whether the user pressed Ctrl-C during the search
        self.interrupted = False
        #: trials Tune finished itself (completed, stopped by the scheduler, or failed)
        self.decided: set[str] = set()
        #: attempts lost to a dead worker/node and retried by Ray Tune: trial id -> [{"error", "node", "epoch"}]
        self.lost_attempts: dict[str, list[dict[str, Any]]] = {}
        #: Ray Tune's saved trial statuses (what a resume would start from); None: do not wait for them
        self.saved_statuses = saved_statuses
        #: finished trials not yet in Ray's saved state: shown at once, but on_trial_end waits for them
        self.unsaved: set[str] = set()
        self._last_check = 0.0

    # Ray pickles the run config (callbacks included) for Tuner.restore: drop the terminal handles
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(console=None, _live=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.console is None:
            self.console = Console(stderr=True)

    # ----------------------------------------------------------------- state
    def _entry(self, trial: Any) -> dict[str, Any]:
        entry = self.trials.get(trial.trial_id)
        if entry is None:
            cfg = trial.config or {}
            entry = {"id": trial.trial_id, "backbone": display_name(str(cfg.get("backbone", "?"))),
                     "backbone_full": str(cfg.get("backbone", "?")), "strategy": str(cfg.get("strategy", "?")),
                     "params": {k: v for k, v in cfg.items() if k not in ("backbone", "strategy")},
                     "best": -math.inf, "epoch": 0.0, "status": RUNNING, "error": None, "history": [],
                     "iterations": 0, "last": {}, "nodes": []}
            self.trials[trial.trial_id] = entry
        return entry

    def undecided(self) -> set[str]:
        """Trials seen running that no callback has seen end (at a Ctrl-C: cut short by the user)."""
        return set(self.trials) - self.decided

    # --------------------------------------------------------- tune callbacks
    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if self.first_result_s is None:
            self.first_result_s = time.monotonic() - self._start
        e = self._entry(trial)
        value = result.get(self.metric)
        if value is not None and not math.isfinite(value):
            value = None  # a failure report (see training.run_trial)
        if value is not None and value > e["best"]:
            e["best"] = float(value)
        e["epoch"] = float(result.get("epoch", e["epoch"]))
        e["iterations"] = int(result.get("training_iteration", 0))
        e["last"] = dict(result)
        node = result.get(NODE_ID)
        if node and (not e["nodes"] or e["nodes"][-1] != node):
            e["nodes"].append(node)
        if value is not None:
            e["history"].append([e["epoch"], float(value)])
        self._refresh()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        e = self._entry(trial)
        last = trial.last_result or {}
        if last.get(TRIAL_ERROR):
            e["status"], e["error"] = FAILED, str(last[TRIAL_ERROR])
        else:
            e["status"] = finish_status(last, self.max_iterations)
        self._finished(e)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """A worker or node died under the trial; Ray Tune retries it from its last checkpoint."""
        e = self._entry(trial)
        last = trial.last_result or {}
        try:
            error = one_line(trial.get_error() or "worker lost")
        except Exception:  # noqa: BLE001 - the reason is informative only
            error = "worker lost"
        attempt = {"error": error, "node": last.get(NODE_ID), "epoch": last.get("epoch")}
        self.lost_attempts.setdefault(trial.trial_id, []).append(attempt)
        self.console.print(f"trial {e['id']} lost its worker ({error}); retrying it from its last checkpoint",
                           highlight=False, markup=False, soft_wrap=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        e = self._entry(trial)
        e["status"] = FAILED
        err = getattr(trial, "error_file", None)
        e["error"] = one_line(open(err).read()) if err else "error"
        self._finished(e)

    def _finished(self, e: dict[str, Any], why: Optional[str] = None) -> None:
        self.decided.add(e["id"])
        if not self.console.is_terminal:
            best = "-" if e["best"] == -math.inf else f"{e['best']:.4f}"
            done = len(self.decided)
            leader = self.records(saved_only=False)[0]
            lead = "-" if leader.best_metric is None else f"{leader.best_metric:.4f}"
            extra = f" ({e['error'] or why})" if e["error"] or why else ""
            self.console.print(f"[{done}/{self.num_samples}] {e['id']} {e['backbone']} {e['strategy']}: "
                               f"{e['status']}{extra}, best {self.metric} {best}; leader {lead}",
                               highlight=False, markup=False, soft_wrap=True)
        self._refresh()
        if self.saved_statuses is None:
            self._ended()
        else:
            self.unsaved.add(e["id"])
            self._last_check = 0.0

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        """Pass finished trials on once Ray Tune has saved them as finished (it does so every second).

        Until then a crash would make a resume run them again, so ``results.json`` must not
        call them finished yet.
        """
        if not self.unsaved or time.monotonic() - self._last_check < self.check_every_s:
            return
        self._last_check = time.monotonic()
        statuses = self.saved_statuses()  # type: ignore[misc]  # set: only then are trials held in unsaved
        before = len(self.unsaved)
        if statuses is None:
            self.unsaved.clear()  # no saved state to wait for
        else:
            self.unsaved = {t for t in self.unsaved if statuses.get(t) not in ("TERMINATED", "ERROR")}
        if len(self.unsaved) < before:
            self._ended()

    def _ended(self) -> None:
        if self.on_trial_end is not None:
            self.on_trial_end(self)

    def setup(self, **info: Any) -> None:
        """Note a Ctrl-C: Ray installs its own SIGINT handler just before this; wrap it, don't replace it."""
        self.interrupted = False
        if threading.current_thread() is not threading.main_thread():
            return
        ray_handler = signal.getsignal(signal.SIGINT)

        def on_sigint(signum: int, frame: Any) -> None:
            self.interrupted = True
            if callable(ray_handler):
                ray_handler(signum, frame)
            else:  # pragma: no cover - no handler of Ray's: behave like Python's default
                raise KeyboardInterrupt

        signal.signal(signal.SIGINT, on_sigint)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.unfinished = {t.trial_id for t in trials if t.status not in ("TERMINATED", "ERROR")}
        if not self.interrupted:
            # Ray Tune's time budget ends the trials still running without on_trial_complete (it
            # only marks them terminated): they end here, stopped with their best evaluation so far
            for t in trials:
                if t.status == "TERMINATED" and t.trial_id in self.trials and t.trial_id not in self.decided:
                    e = self._entry(t)
                    e["status"] = finish_status(t.last_result or {}, self.max_iterations)
                    self._finished(e, why="the time budget ended it")
        self.unsaved.clear()  # Ray saves its state as the experiment ends; the driver writes the results next

    def records(self, saved_only: bool = True) -> list[TrialRecord]:
        """Interim trial records, ranked (for the report rewritten while the search runs, and the terminal).

        With ``saved_only`` a trial Ray Tune has not yet saved as finished is still running: a resume
        would run it on.  The terminal shows it finished at once.
        """
        out = []
        for e in self.trials.values():
            last = e["last"]
            best = max(e["history"], key=lambda ev: ev[1]) if e["history"] else None
            out.append(TrialRecord(
                trial_id=e["id"], backbone=e["backbone_full"], strategy=e["strategy"], params=e["params"],
                status=RUNNING if saved_only and e["id"] in self.unsaved else e["status"],
                iterations=e["iterations"], epochs=e["epoch"],
                best_metric=best[1] if best else None, best_epoch=best[0] if best else None,
                wall_time_s=float(last.get("time_total_s", 0.0)), trainable_params=last.get("trainable_params"),
                total_params=last.get("total_params"), error=e["error"], history=list(e["history"]),
                nodes=list(e["nodes"]), lost_attempts=list(self.lost_attempts.get(e["id"], []))))
        return rank(out)

    # ---------------------------------------------------------------- drawing
    def table(self) -> Table:
        """The leaderboard as :func:`autotransfer.results.rank` orders it (the view only renders)."""
        t = Table(title=f"autotransfer leaderboard - {len(self.decided)}/{self.num_samples} trials done, "
                        f"{time.monotonic() - self._start:.0f}s", title_justify="left")
        for col in ("#", "trial", "backbone", "strategy", f"best {self.metric}", "epoch", "status"):
            t.add_column(col, overflow="fold")
        for r in self.records(saved_only=False)[: self.rows]:
            best = "-" if r.best_metric is None else f"{r.best_metric:.4f}"
            status = r.status if r.status != FAILED else f"failed: {r.error or ''}"[:60]
            strategy = r.strategy + (" (recipe)" if r.params.get(RECIPE) else "")
            t.add_row(str(r.rank), r.trial_id, display_name(r.backbone), strategy, best, f"{r.epochs:.2f}", status)
        return t

    def start(self) -> None:
        if self.console.is_terminal:
            self._live = Live(self.table(), console=self.console, refresh_per_second=2, transient=False)
            self._live.start()

    def stop(self) -> None:
        if self._live is not None:
            self._live.update(self.table())
            self._live.stop()
            self._live = None

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self.table())
