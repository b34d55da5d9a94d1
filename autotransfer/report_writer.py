"""Keep ``results.json`` and the leaderboard page current while a search runs."""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from autotransfer.results import TrialRecord, save_results
from autotransfer.run_info import RunInfo


@dataclass
class ReportWriter:
    """Rewrites results.json and the page as trials finish (picklable: Ray stores it for restore).

    ``results.json`` is written at once; the page (plotly, the slow part) is drawn on a
    background thread so Ray Tune's loop does not wait for it, latest state first: a page
    asked for while one is being drawn replaces any older request.  :meth:`close` waits.
    """

    out: Path
    metric: str
    meta: RunInfo
    started: float
    _queued: Optional[tuple[list[TrialRecord], dict[str, Any]]] = field(default=None, init=False, repr=False)
    _drawer: Optional[threading.Thread] = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        return {"out": self.out, "metric": self.metric, "meta": self.meta, "started": self.started}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    def __call__(self, live: Any) -> None:
        try:
            interim = live.records()
            partial = self.meta.interim(wall_time_s=time.time() - self.started,
                                        trial_hours=sum(r.wall_time_s for r in interim) / 3600).to_dict()
            save_results(self.out, interim, self.metric, partial)
        except Exception as exc:  # a report glitch must never stop the search
            print(f"(could not refresh the results: {exc})", file=sys.stderr)
            return
        with self._lock:
            self._queued = (interim, partial)
            if self._drawer is None:
                self._drawer = threading.Thread(target=self._draw, name="autotransfer-report", daemon=True)
                self._drawer.start()

    def _draw(self) -> None:
        from autotransfer.report import write_report

        while True:
            with self._lock:
                job, self._queued = self._queued, None
                if job is None:
                    self._drawer = None
                    return
            try:
                write_report(self.out, *job)
            except Exception as exc:  # noqa: BLE001 - a report glitch must never stop the search
                print(f"(could not refresh the report: {exc})", file=sys.stderr)

    def close(self) -> None:
        """Wait for the page being drawn (the final one is written next, by the driver)."""
        with self._lock:
            drawer = self._drawer
        if drawer is not None:
            drawer.join()
