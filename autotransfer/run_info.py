"""What a run's ``results.json`` says besides its trials: one typed object, filled as the run goes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional


@dataclass
class RunInfo:
    """The run's metadata.  Built once the inputs are valid; the outcome fields are set as it ends.

    :meth:`to_dict` is the ``results.json`` layout the report and ``autotransfer report`` read.
    """

    run_name: Optional[str]
    task: str
    metric: str
    command: Optional[str]
    #: the splits' sizes and class counts (``LabeledSplits.summary``)
    data: dict[str, Any]
    space: dict[str, Any]
    dashboard: Optional[str]
    cluster: dict[str, Any]
    preparation: dict[str, Any]
    environment: dict[str, Any]
    #: the sampler, scheduler and budget options the search ran with
    engine: dict[str, Any]
    #: the derived budget in optimizer steps (``autotransfer.budget``)
    budget: dict[str, Any]
    #: each backbone searched: where it loads from, its layer groups, what the task found (e.g. the earlier
    #: run an already fine-tuned backbone comes from)
    backbones: Optional[dict[str, Any]] = None
    wall_time_s: Optional[float] = None
    first_result_s: Optional[float] = None
    trial_hours: Optional[float] = None
    #: only while the search runs: the page is an interim one
    live: Optional[bool] = None
    #: how the exported model was refit on train + validation (``--refit``)
    refit: Optional[dict[str, Any]] = None
    #: how far the validation intervals went (``autotransfer.uncertainty.Coverage``): trials, resamples, cost
    intervals: Optional[dict[str, Any]] = None
    #: the greedy model soup tried after the search (``autotransfer.soup``)
    soup: Optional[dict[str, Any]] = None
    #: the backbones' LogME / k-NN scores before the search, and how well they predicted its ranking
    prerank: Optional[dict[str, Any]] = None
    #: the source stage (``--source-data``): each backbone's source result, and per backbone the best target
    #: validation metric with and without it
    source_stage: Optional[dict[str, Any]] = None
    #: the exported model's test metrics and the task's detailed test results
    test: Optional[dict[str, Any]] = None
    best_trial: Optional[str] = None
    #: validation examples drawn with the selected trial's predictions (``autotransfer.gallery``): file and caption
    gallery: Optional[list[dict[str, str]]] = None

    _OPTIONAL = ("live", "intervals", "refit", "soup", "prerank", "source_stage", "test", "best_trial", "backbones",
                 "gallery")

    def to_dict(self) -> dict[str, Any]:
        """The ``results.json`` layout; outcome fields that were never set are left out."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {k: v for k, v in out.items() if not (k in self._OPTIONAL and v is None)}

    def interim(self, wall_time_s: float, trial_hours: float) -> "RunInfo":
        """A copy for the page drawn while the search runs."""
        return dataclasses.replace(self, live=True, wall_time_s=wall_time_s, trial_hours=trial_hours)
