"""The HTML leaderboard: one self-contained file (plotly.js embedded once, no CDN).

Built only from the saved results (``results.json``), so ``autotransfer report``
can rebuild it at any time.  Every string from the user's data or config is
escaped: Jinja2 autoescapes the page, pandas escapes the table, and plotly
renders labels as text.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Optional

import plotly.graph_objects as go
from jinja2 import Environment, PackageLoader, select_autoescape

from autotransfer.results import TrialRecord, to_frame

REPORT_FILE = "leaderboard.html"


def _env() -> Environment:
    return Environment(loader=PackageLoader("autotransfer", "templates"), autoescape=select_autoescape(["j2", "html"]))


def learning_curves(records: list[TrialRecord], metric: str) -> go.Figure:
    """Validation metric vs epoch for every trial, coloured by strategy."""
    fig = go.Figure()
    colors = {}
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
    for r in records:
        if not r.history:
            continue
        color = colors.setdefault(r.strategy, palette[len(colors) % len(palette)])
        xs, ys = zip(*r.history)
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", line={"color": color},
                                 name=f"{r.trial_id} ({r.strategy})", legendgroup=r.strategy,
                                 hovertext=f"{r.backbone} / {r.strategy} / {r.status}"))
    fig.update_layout(title=f"Validation {metric} by epoch", xaxis_title="epoch", yaxis_title=metric,
                      template="plotly_white", height=420)
    return fig


def ranking_chart(records: list[TrialRecord], metric: str) -> go.Figure:
    """Best validation metric per trial, best first."""
    ok = [r for r in records if r.ok]
    fig = go.Figure(go.Bar(x=[f"#{r.rank} {r.trial_id}" for r in ok], y=[r.best_metric for r in ok],
                           text=[f"{r.strategy}" for r in ok], hovertext=[r.backbone for r in ok]))
    fig.update_layout(title=f"Best validation {metric} per trial", yaxis_title=metric, template="plotly_white",
                      height=380)
    return fig


def write_report(out: Path, records: list[TrialRecord], meta: dict[str, Any]) -> Path:
    """Render ``leaderboard.html`` into ``out`` and return its path."""
    metric = meta.get("metric", "accuracy")
    best = next((r for r in records if r.ok), None)
    frame = to_frame(records, metric).drop(columns=["error"], errors="ignore")
    figures = []
    for i, fig in enumerate([ranking_chart(records, metric), learning_curves(records, metric)]):
        figures.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0), default_height=fig.layout.height))
    wall = meta.get("wall_time_s")
    summary = {k: v for k, v in {
        "data": meta.get("data", {}).get("data"),
        "stopped early": sum(1 for r in records if r.status == "stopped_early"),
        "failed": sum(1 for r in records if r.status == "failed"),
        "dashboard": meta.get("dashboard"),
    }.items() if v is not None}
    html = _env().get_template("leaderboard.html.j2").render(
        title=meta.get("run_name", "search"), task=meta.get("task", "?"), metric=metric,
        n_trials=len(records), wall=f"{wall:.0f}s wall time" if isinstance(wall, (int, float)) else "",
        command=meta.get("command"), best=best, test_metrics=meta.get("test", {}).get("test_metrics"),
        summary=summary, table_html=frame.to_html(index=False, escape=True, classes="leaderboard", na_rep=""),
        figures=figures, generated=time.strftime("%Y-%m-%d %H:%M:%S"),
    )
    path = out / REPORT_FILE
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(path)
    return path
