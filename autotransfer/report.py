"""The HTML leaderboard: one self-contained page (plotly.js embedded once, no CDN).

Built only from the saved results (``results.json``: trial records plus run
metadata), so ``autotransfer report`` can rebuild it at any time, including for
an interrupted run, and the search rewrites it while trials finish.

Safety: Jinja2 autoescapes the page, pandas escapes the table, plotly's embedded
JSON escapes ``<``, and every user string placed in a figure (labels, backbone
names, paths) is HTML-escaped first because plotly renders a subset of HTML in text.
"""

from __future__ import annotations

import html
import math
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from jinja2 import Environment, PackageLoader, select_autoescape
from plotly.subplots import make_subplots

from autotransfer.backbones import display_name
from autotransfer.results import FAILED, RECIPE, STOPPED, TrialRecord, short_node
from autotransfer.settings import GALLERY_DIR

REPORT_FILE = "leaderboard.html"
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
_LAYOUT = dict(template="plotly_white", margin=dict(l=60, r=30, t=60, b=50))


def _txt(value: Any) -> str:
    """A user string made safe for plotly text (which renders some HTML)."""
    return html.escape(str(value), quote=True)


def _colors(records: list[TrialRecord]) -> dict[str, str]:
    names = sorted({r.strategy for r in records})
    return {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(names)}


def _ok(records: list[TrialRecord]) -> list[TrialRecord]:
    return [r for r in records if r.ok]


# ----------------------------------------------------------------------------- figures
def learning_curves(records: list[TrialRecord], metric: str) -> go.Figure:
    """Validation metric vs epoch for every trial, coloured by strategy; early stops end in an x."""
    fig = go.Figure()
    colors = _colors(records)
    shown: set[str] = set()
    for r in records:
        if not r.history:
            continue
        xs, ys = zip(*r.history)
        name = _txt(r.strategy)
        fig.add_trace(go.Scatter(
            x=xs, y=ys, mode="lines+markers", line={"color": colors[r.strategy], "width": 1.5},
            marker={"size": 5}, name=name, legendgroup=name, showlegend=r.strategy not in shown,
            hovertemplate=f"#{r.rank} {_txt(r.trial_id)}<br>{_txt(display_name(r.backbone))}<br>{name}"
                          "<br>epoch %{x}<br>" + metric + " %{y:.4f}<extra></extra>"))
        shown.add(r.strategy)
        if r.status == STOPPED:
            fig.add_trace(go.Scatter(x=[xs[-1]], y=[ys[-1]], mode="markers", showlegend=False,
                                     marker={"symbol": "x", "size": 11, "color": colors[r.strategy]},
                                     hovertemplate=f"{_txt(r.trial_id)} stopped by ASHA at rung {r.iterations}"
                                                   "<extra></extra>"))
    fig.update_layout(title=f"Learning curves: validation {metric} (x = stopped early by ASHA)",
                      xaxis_title="epoch", yaxis_title=metric, height=430, **_LAYOUT)
    return fig


def strategy_backbone_grid(records: list[TrialRecord], metric: str) -> Optional[go.Figure]:
    """Best score in each strategy x backbone cell."""
    ok = _ok(records)
    if not ok:
        return None
    df = pd.DataFrame({"strategy": [r.strategy for r in ok], "backbone": [display_name(r.backbone) for r in ok],
                       "score": [r.best_metric for r in ok]})
    grid = df.pivot_table(index="strategy", columns="backbone", values="score", aggfunc="max")
    text = [[("" if pd.isna(v) else f"{v:.3f}") for v in row] for row in grid.values]
    fig = go.Figure(go.Heatmap(
        z=grid.values, x=[_txt(c) for c in grid.columns], y=[_txt(i) for i in grid.index], text=text,
        texttemplate="%{text}", colorscale="Viridis", colorbar={"title": metric},
        hovertemplate="%{y} on %{x}: %{z:.4f}<extra></extra>"))
    fig.update_layout(title=f"Best validation {metric}: strategy x backbone", height=120 + 60 * len(grid.index),
                      **_LAYOUT)
    return fig


def pareto_front(costs: list[float], scores: list[float]) -> list[int]:
    """Indices of points no other point beats on both lower cost and higher score, by cost."""
    order = sorted(range(len(costs)), key=lambda i: (costs[i], -scores[i]))
    front, best = [], -math.inf
    for i in order:
        if scores[i] > best:
            front.append(i)
            best = scores[i]
    return front


def cost_vs_quality(records: list[TrialRecord], metric: str) -> Optional[go.Figure]:
    """Best metric against wall time and against trainable parameters, Pareto fronts marked."""
    ok = [r for r in _ok(records) if r.trainable_params]
    if not ok:
        return None
    colors = _colors(ok)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("vs wall time (s)", "vs trainable parameters"))
    for col, cost_of in ((1, lambda r: r.wall_time_s), (2, lambda r: float(r.trainable_params))):
        costs, scores = [cost_of(r) for r in ok], [r.best_metric for r in ok]
        for strategy in sorted({r.strategy for r in ok}):
            idx = [i for i, r in enumerate(ok) if r.strategy == strategy]
            fig.add_trace(go.Scatter(
                x=[costs[i] for i in idx], y=[scores[i] for i in idx], mode="markers", name=_txt(strategy),
                legendgroup=_txt(strategy), showlegend=col == 1, marker={"color": colors[strategy], "size": 9},
                text=[f"#{ok[i].rank} {_txt(ok[i].trial_id)} {_txt(display_name(ok[i].backbone))}" for i in idx],
                hovertemplate="%{text}<br>cost %{x:.3g}<br>" + metric + " %{y:.4f}<extra></extra>"), row=1, col=col)
        front = pareto_front(costs, scores)
        fig.add_trace(go.Scatter(x=[costs[i] for i in front], y=[scores[i] for i in front], mode="lines",
                                 line={"dash": "dot", "color": "#444"}, name="Pareto front", showlegend=col == 1,
                                 legendgroup="pareto", hoverinfo="skip"), row=1, col=col)
    fig.update_xaxes(type="log", row=1, col=2)
    fig.update_yaxes(title_text=metric, row=1, col=1)
    fig.update_layout(title=f"Cost vs quality (best validation {metric})", height=430, **_LAYOUT)
    return fig


def _param_table(records: list[TrialRecord]) -> pd.DataFrame:
    rows = [{"backbone": display_name(r.backbone), "strategy": r.strategy,
             **{k: v for k, v in r.params.items() if k != RECIPE}, "_score": r.best_metric}
            for r in _ok(records)]
    return pd.DataFrame(rows)


def parallel_coordinates(records: list[TrialRecord], metric: str) -> Optional[go.Figure]:
    """Every searched hyperparameter as an axis, lines coloured by the metric."""
    df = _param_table(records)
    if len(df) < 2:
        return None
    dims = []
    for col in df.columns:
        if col == "_score":
            continue
        values = df[col]
        if values.nunique(dropna=True) < 2:
            continue
        if pd.api.types.is_numeric_dtype(values):
            numeric = values.astype(float)
            log = numeric.min() > 0 and numeric.max() / max(numeric.min(), 1e-12) > 50
            shown = np.log10(numeric) if log else numeric
            dims.append(dict(label=_txt(f"log10 {col}" if log else col), values=shown.fillna(shown.min() - 1)))
        else:
            text = values.map(lambda v: "-" if pd.isna(v) else str(v))  # "-": not used by that trial
            cats = sorted(text.unique())
            codes = text.map({c: i for i, c in enumerate(cats)})
            dims.append(dict(label=_txt(col), values=codes, tickvals=list(range(len(cats))),
                             ticktext=[_txt(c) for c in cats]))
    if not dims:
        return None
    dims.append(dict(label=metric, values=df["_score"]))
    fig = go.Figure(go.Parcoords(line=dict(color=df["_score"], colorscale="Viridis", showscale=True), dimensions=dims))
    fig.update_layout(title="Hyperparameters of finished trials (blank = not used by that strategy)", height=450,
                      **_LAYOUT)
    return fig


def importance(records: list[TrialRecord], metric: str) -> Optional[go.Figure]:
    """Optuna's hyperparameter importance (fANOVA) over the parameters every finished trial shares."""
    import optuna

    ok = _ok(records)
    if len(ok) < 3:
        return None
    params = [{"backbone": r.backbone, "strategy": r.strategy, **r.params} for r in ok]
    shared = set.intersection(*(set(p) for p in params))
    dists: dict[str, Any] = {}
    for name in sorted(shared):
        values = [p[name] for p in params]
        if len({repr(v) for v in values}) < 2:
            continue
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            lo, hi = min(values), max(values)
            dists[name] = (optuna.distributions.IntDistribution(int(lo), int(hi)) if all(isinstance(v, int) for v in values)
                           else optuna.distributions.FloatDistribution(float(lo), float(hi), log=lo > 0 and hi / lo > 50))
        else:
            dists[name] = optuna.distributions.CategoricalDistribution(sorted({str(v) for v in values}))
    if not dists:
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for p, r in zip(params, ok):
        values = {k: (str(p[k]) if isinstance(d, optuna.distributions.CategoricalDistribution) else p[k])
                  for k, d in dists.items()}
        study.add_trial(optuna.trial.create_trial(params=values, distributions=dists, value=r.best_metric))
    try:
        imp = optuna.importance.get_param_importances(study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except (RuntimeError, ValueError):
        return None
    names = list(imp)[::-1]
    fig = go.Figure(go.Bar(x=[imp[n] for n in names], y=[_txt(n) for n in names], orientation="h"))
    fig.update_layout(title=f"Hyperparameter importance for {metric} (Optuna fANOVA, {len(ok)} trials)",
                      xaxis_title="importance", height=120 + 40 * len(names), **_LAYOUT)
    return fig


def confusion_matrix(test: dict[str, Any], label_names: list[str]) -> Optional[go.Figure]:
    """The best model's confusion matrix and per-class precision/recall/F1 on the test split."""
    cm = test.get("confusion_matrix") if test else None
    if not cm:
        return None
    per_class = test.get("per_class", {})
    names = [_txt(n) for n in label_names]
    fig = make_subplots(rows=1, cols=2, column_widths=[0.5, 0.5],
                        subplot_titles=("confusion matrix (rows: true, columns: predicted)", "per-class scores"))
    fig.add_trace(go.Heatmap(z=cm, x=names, y=names, colorscale="Blues", showscale=False, texttemplate="%{z}",
                             hovertemplate="true %{y}<br>predicted %{x}<br>%{z}<extra></extra>"), row=1, col=1)
    fig.update_yaxes(autorange="reversed", row=1, col=1)
    for i, score in enumerate(("precision", "recall", "f1-score")):
        fig.add_trace(go.Bar(x=names, y=[per_class.get(n, {}).get(score, 0.0) for n in label_names], name=score,
                             marker_color=PALETTE[i]), row=1, col=2)
    fig.update_layout(title="Best model on the test split", height=430, barmode="group", **_LAYOUT)
    return fig


def entity_type_scores(test: dict[str, Any]) -> Optional[go.Figure]:
    """The best tagger's precision/recall/F1 per entity type on the test split (bars), support in the labels."""
    per_type = test.get("per_entity_type") if test else None
    if not per_type:
        return None
    types = sorted(per_type)
    names = [f"{_txt(t)} ({per_type[t].get('support', 0)})" for t in types]
    fig = go.Figure([go.Bar(x=names, y=[per_type[t].get(score, 0.0) for t in types], name=score,
                            marker_color=PALETTE[i]) for i, score in enumerate(("precision", "recall", "f1-score"))])
    fig.update_layout(title="Best model on the test split, per entity type (gold entities in brackets)",
                      yaxis_title="score (strict IOB2 spans)", yaxis_range=[0, 1], height=400, barmode="group",
                      **_LAYOUT)
    return fig


def class_ap(test: dict[str, Any]) -> Optional[go.Figure]:
    """The best detector's COCO AP@[.5:.95] per class on the test split (bars)."""
    per_class = test.get("ap_per_class") if test else None
    if not per_class:
        return None
    names = list(per_class)
    fig = go.Figure([go.Bar(x=[_txt(n) for n in names], y=[max(0.0, per_class[n] or 0.0) for n in names],
                            marker_color=PALETTE[0])])
    fig.update_layout(title="Best model on the test split, AP@[.5:.95] per class (COCO, torchmetrics)",
                      yaxis_title="average precision", yaxis_range=[0, 1], height=380, **_LAYOUT)
    return fig


# ----------------------------------------------------------------------------- page
def _status(r: TrialRecord) -> str:
    if r.status == STOPPED:
        text = f"stopped early by ASHA at rung {r.iterations}"
    elif r.status == FAILED:
        text = f"failed: {r.error or 'unknown error'}"
    else:
        text = r.status
    if r.lost_attempts:
        lost = "; ".join(f"node {short_node(a.get('node') or '?')}"
                         + (f" at epoch {a['epoch']:.2f}" if isinstance(a.get("epoch"), (int, float)) else "")
                         + f": {a.get('error') or 'worker lost'}" for a in r.lost_attempts)
        text += f" (after {len(r.lost_attempts)} lost attempt{'s' if len(r.lost_attempts) > 1 else ''}: {lost})"
    return text


def _size(n: Optional[float]) -> str:
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return ""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def leaderboard_frame(records: list[TrialRecord], metric: str, test: Optional[dict[str, float]] = None) -> pd.DataFrame:
    """The table shown in the page, best first."""
    keys = sorted({k for r in records for k in r.params})
    several_nodes = len({n for r in records for n in r.nodes}) > 1
    on_gpu = any(r.last_metrics.get("gpu_memory_peak_mb") for r in records)
    rows = []
    for r in records:
        row = {"rank": r.rank, "trial": r.trial_id, "backbone": display_name(r.backbone), "strategy": r.strategy,
               f"val {metric}": None if r.best_metric is None else round(r.best_metric, 4),
               "95% interval": "" if not r.interval else f"{r.interval[0]:.3f} to {r.interval[1]:.3f}",
               "tied with best": {True: "tied" if r.rank != 1 else "best", False: "", None: ""}[r.tied_with_best],
               "recipe": r.params.get("recipe") or ""}
        if test is not None:
            row[f"test {metric}"] = round(test[metric], 4) if r.rank == 1 and r.ok else None
        row.update({"epochs": r.epochs, "status": _status(r), "wall time (s)": round(r.wall_time_s, 1),
                    "trainable params": r.trainable_params, "total params": r.total_params,
                    "checkpoint": _size(r.checkpoint_bytes)})
        if on_gpu:  # what sizing --gpus-per-trial fractions needs
            peak = r.last_metrics.get("gpu_memory_peak_mb")
            row["peak GPU memory (MiB)"] = None if peak is None else round(peak)
        if several_nodes:
            row["node"] = " > ".join(short_node(n) for n in r.nodes)
        for k in keys:
            v = r.params.get(k)
            row[k] = f"{v:.3g}" if isinstance(v, float) else v
        rows.append(row)
    return pd.DataFrame(rows)


def _task_figures(task: Optional[str], test: dict[str, Any], label_names: list[str]) -> list[go.Figure]:
    """The task's own figures of the best model's test results (a confusion matrix for classification)."""
    from autotransfer.tasks import task_names, task_spec

    if task not in task_names():  # a run saved by a task this installation lacks: the generic figures only
        return []
    return task_spec(task).objective.figures(test, label_names)


def _gallery(out: Path, items: list[dict[str, str]]) -> list[dict[str, str]]:
    """The gallery's pictures as data URIs (the page stays one self-contained file); files gone are skipped."""
    import base64

    shown = []
    for item in items or []:
        path = out / str(item.get("file", ""))
        if path.suffix == ".jpg" and path.resolve().parent == (out / GALLERY_DIR).resolve() and path.is_file():
            shown.append({"src": "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode("ascii"),
                          "caption": str(item.get("caption", ""))})
    return shown


def write_report(out: Path, records: list[TrialRecord], meta: dict[str, Any]) -> Path:
    """Render ``leaderboard.html`` into ``out`` and return its path."""
    metric = meta.get("metric", "accuracy")
    best = next((r for r in records if r.ok), None)
    test = meta.get("test") or {}
    label_names = (meta.get("data") or {}).get("label_names") or []
    figures = [f for f in (
        learning_curves(records, metric), strategy_backbone_grid(records, metric), cost_vs_quality(records, metric),
        parallel_coordinates(records, metric), importance(records, metric),
    ) if f is not None] + (_task_figures(meta.get("task"), test, label_names) if test else [])
    fig_html = [f.to_html(full_html=False, include_plotlyjs=(i == 0), default_height=f"{f.layout.height}px",
                          config={"displaylogo": False}) for i, f in enumerate(figures)]
    soup = meta.get("soup") or {}
    # the test score is the best row's only when the exported model is that trial's (not a soup, not a refit)
    own = not (soup.get("exported") or meta.get("refit"))
    table = leaderboard_frame(records, metric, test.get("test_metrics") if own else None)
    table_html = table.to_html(index=False, escape=True, classes="leaderboard", na_rep="", table_id="leaderboard",
                               border=0)
    wall = meta.get("wall_time_s")
    html_text = Environment(loader=PackageLoader("autotransfer", "templates"),
                            autoescape=select_autoescape(["j2", "html"])).get_template("leaderboard.html.j2").render(
        title=meta.get("run_name", "search"), meta=meta, metric=metric, records=records, best=best,
        best_backbone=display_name(best.backbone) if best else None, test_metrics=test.get("test_metrics"),
        n_trials=len(records), counts={s: sum(1 for r in records if r.status == s)
                                       for s in ("completed", "stopped_early", "failed", "running")},
        wall=f"{wall:.0f} s" if isinstance(wall, (int, float)) else "in progress",
        table_html=table_html, figures=fig_html, generated=time.strftime("%Y-%m-%d %H:%M:%S"),
        live=bool(meta.get("live")), soup=soup, gallery=_gallery(out, meta.get("gallery") or []),
    )
    path = out / REPORT_FILE
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(html_text, encoding="utf-8")
    tmp.replace(path)
    return path


def screenshot(page: Path, png: Path, width: int = 1400) -> Path:
    """Render the page in headless Chromium (needs ``playwright`` and a chromium binary) to a PNG."""
    import shutil

    from autotransfer.errors import UserError

    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise UserError("--screenshot needs the playwright package (pip install playwright)") from None
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    with sync_playwright() as p:
        kwargs = {"executable_path": chromium} if chromium else {}
        browser = p.chromium.launch(args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                          "--disable-component-update", "--no-first-run"], **kwargs)
        try:
            tab = browser.new_page(viewport={"width": width, "height": 1000})
            tab.goto(page.resolve().as_uri())
            tab.wait_for_function("document.querySelectorAll('.js-plotly-plot .main-svg').length >= 1",
                                  timeout=30_000)
            tab.screenshot(path=str(png), full_page=True)
        finally:
            browser.close()
    return png
