"""Backbones scored before any trial: LogME and a k-NN accuracy on their frozen features.

**LogME** (You et al., ICML 2021, "LogME: Practical Assessment of Pre-trained Models for
Transfer Learning"): for each class, a Bayesian linear regression from the features ``F``
(n x d) to the class indicator ``y``, with prior precision ``alpha`` and noise precision
``beta`` set by evidence maximisation.  The log evidence of ``y`` is

    L(a, b) = d/2 log a + n/2 log b - n/2 log 2pi - b/2 |F m - y|^2 - a/2 |m|^2 - 1/2 log|A|,
    A = a I + b F'F,   m = b A^-1 F'y,

maximised by the paper's fixed-point iteration (Algorithm 1: ``gamma = sum s_i b / (a + b s_i)``
over the eigenvalues ``s_i`` of ``F'F``, ``a = gamma / |m|^2``, ``b = (n - gamma) / |F m - y|^2``);
LogME is the mean over classes of ``L / n``.  Higher: features a linear head can use.
No maintained package implements it, so it is written here from the paper.

**k-NN accuracy**: scikit-learn's ``KNeighborsClassifier`` (cosine distance), 5-fold
stratified cross-validation on the training split.

Both score the frozen features the linear probe fits on (:mod:`autotransfer.features`), except
where the task names better rows for judging a backbone (:meth:`Task.ranking_rows`): a text
encoder is scored on its token states averaged over the real tokens, not on its pooler's output
(the record's ``scored`` says which, per backbone).

Both are estimates: published comparisons find them unstable across data sets, so the
search reports after the fact how well they predicted the fine-tuned ranking
(:func:`spearman`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

import numpy as np

if TYPE_CHECKING:
    from autotransfer.results import TrialRecord
    from autotransfer.settings import SearchSettings
    from autotransfer.space import SearchSpace
    from autotransfer.tasks import BackboneInfo, Task


@dataclass
class Evidence:
    """One class's maximised log evidence per example, at its (alpha, beta)."""

    value: float
    alpha: float
    beta: float


def class_evidence(f: np.ndarray, y: np.ndarray, s: np.ndarray, v: np.ndarray, max_iter: int = 100,
                   tol: float = 1e-3) -> Evidence:
    """LogME's fixed point for one target ``y`` (n,), given ``F'F = v diag(s) v'`` (see the module)."""
    n, d = f.shape
    fty = v.T @ (f.T @ y)  # F'y in the eigenbasis
    alpha, beta = 1.0, 1.0
    for _ in range(max_iter):
        gamma = float(np.sum(beta * s / (alpha + beta * s)))
        m = v @ (beta * fty / (alpha + beta * s))
        m2 = float(m @ m)
        residual = float(np.sum((f @ m - y) ** 2))
        new_alpha = gamma / max(m2, 1e-12)
        new_beta = max(n - gamma, 1e-12) / max(residual, 1e-12)
        done = abs(new_alpha / new_beta - alpha / beta) <= tol * (alpha / beta)
        alpha, beta = new_alpha, new_beta
        if done:
            break
    m = v @ (beta * fty / (alpha + beta * s))
    m2 = float(m @ m)
    residual = float(np.sum((f @ m - y) ** 2))
    evidence = (d / 2 * math.log(alpha) + n / 2 * math.log(beta) - n / 2 * math.log(2 * math.pi)
                - beta / 2 * residual - alpha / 2 * m2 - 0.5 * float(np.sum(np.log(alpha + beta * s))))
    return Evidence(evidence / n, alpha, beta)


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME of ``features`` (n, d) for integer class ``labels`` (n,): the mean over classes of the log evidence
    per example."""
    f = np.asarray(features, dtype=np.float64)
    s, v = np.linalg.eigh(f.T @ f)
    s = np.clip(s, 0.0, None)
    classes = np.unique(labels)
    return float(np.mean([class_evidence(f, (labels == c).astype(np.float64), s, v).value for c in classes]))


def knn_accuracy(features: np.ndarray, labels: np.ndarray, seed: int = 0, k: int = 10) -> Optional[float]:
    """5-fold (fewer for rare classes) cross-validated accuracy of a k-NN classifier; None when a class has a
    single example."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    folds = min(5, int(np.bincount(np.unique(labels, return_inverse=True)[1]).min()))
    if folds < 2:
        return None
    n_train = len(labels) * (folds - 1) // folds
    clf = KNeighborsClassifier(n_neighbors=max(1, min(k, n_train - 1)), metric="cosine")
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return float(np.mean(cross_val_score(clf, features, labels, cv=cv)))


@dataclass
class BackboneScore:
    """A backbone's transferability estimates and what they cost."""

    logme: float
    knn_accuracy: Optional[float]
    seconds: float
    examples: int


def score_backbones(features: Mapping[str, tuple[np.ndarray, np.ndarray]], seed: int = 0,
                    max_rows: int = 10_000) -> dict[str, BackboneScore]:
    """LogME and k-NN accuracy of each backbone's features (a stratified sample of ``max_rows`` at most)."""
    out = {}
    for name, (x, y) in features.items():
        start = time.perf_counter()
        if len(y) > max_rows:
            from sklearn.model_selection import train_test_split

            x, _, y, _ = train_test_split(x, y, train_size=max_rows, stratify=y, random_state=seed)
        out[name] = BackboneScore(logme=logme(x, y), knn_accuracy=knn_accuracy(x, y, seed),
                                  seconds=time.perf_counter() - start, examples=len(y))
    return out


def ranked(scores: Mapping[str, BackboneScore]) -> list[str]:
    """Backbone names by LogME, best first."""
    return sorted(scores, key=lambda n: -scores[n].logme)


def spearman(predicted: Mapping[str, float], actual: Mapping[str, float]) -> Optional[float]:
    """Spearman's rank correlation over the backbones both hold (None with fewer than 3, or no spread)."""
    from scipy.stats import spearmanr

    common = [n for n in predicted if n in actual and actual[n] is not None]
    if len(common) < 3:
        return None
    rho = spearmanr([predicted[n] for n in common], [actual[n] for n in common]).statistic
    return None if rho is None or not math.isfinite(float(rho)) else float(rho)


def to_dict(scores: Mapping[str, BackboneScore]) -> dict[str, dict]:
    return {n: asdict(s) for n, s in scores.items()}


def _fmt(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def prerank_backbones(task: "Task", space: "SearchSpace", backbones: Mapping[str, "BackboneInfo"],
                      prepared: Mapping[str, Any], label_names: list[str], settings: "SearchSettings",
                      log: Callable[[str], None]) -> tuple[dict[str, Any], Optional[dict[str, Any]]]:
    """The search's step before any trial: each backbone's frozen features, computed once for the head-fitting
    strategies (:mod:`autotransfer.features`), and their LogME / k-NN scores.  Returns (backbone -> features,
    the pre-rank record: scores, LogME order -- the recipes and warm starts follow it -- and the ``--prerank`` K
    kept), or ({}, None) when no strategy fits a head on features and no pre-rank was asked for."""
    from autotransfer.backbones import display_name
    from autotransfer.features import cache_features
    from autotransfer.strategies import get_strategy

    s = settings
    fitting = [n for n in space.strategies if get_strategy(n).fits_head_on_features or get_strategy(n).fits_head_first]
    if not fitting and not s.prerank:
        return {}, None
    started = time.perf_counter()
    found, left = cache_features(task, backbones, prepared, label_names, s.seed, s.trust_remote_code, s.precision,
                                 s.gpus_per_trial > 0)
    for line in left:
        log(f"frozen features not cached for {line}: its trials compute their own")
    if not found:
        if s.prerank:
            log("--prerank: no backbone's features could be computed; searching all backbones")
        return {}, None
    scores = score_backbones({n: (f.ranking_rows, f.y) for n, f in found.items()}, seed=s.seed)
    scored = {n: "classifier input" if f.rank_x is None else task.ranking_description for n, f in found.items()}
    found = {n: dataclasses.replace(f, rank_x=None) for n, f in found.items()}  # the trials need only the head's
    order = ranked(scores) + [n for n in space.backbones if n not in scores]
    kept = order[:s.prerank] if s.prerank else order
    seconds = time.perf_counter() - started
    log(f"frozen features of {len(found)} backbone(s) computed once ({seconds:.1f}s, "
        f"{sum(f.nbytes for f in found.values()) / 2**20:.1f} MiB), "
        + ("shared by the trials that fit a head on them; " if s.feature_cache else
           "for the pre-rank only (--no-feature-cache: the trials compute their own); ")
        + "pre-rank (LogME / k-NN accuracy): " + "; ".join(
            f"{display_name(n)} {scores[n].logme:.3f} / {_fmt(scores[n].knn_accuracy)}" for n in order if n in scores)
        + (f"; searching the best {len(kept)}: {', '.join(map(display_name, kept))}" if len(kept) < len(order) else ""))
    record = {"scores": to_dict(scores), "order": order, "kept": kept, "asked": s.prerank,
              "features_seconds": {n: round(f.seconds, 2) for n, f in found.items()}, "seconds": round(seconds, 2),
              "scored": scored}
    return {n: f for n, f in found.items() if n in kept}, record


def report_held(prerank: dict[str, Any], records: list["TrialRecord"], metric: str,
                log: Callable[[str], None]) -> None:
    """How well the pre-rank predicted the search: each backbone's best validation metric and the Spearman
    correlation with its scores, into ``prerank``; one line (two with 3+ backbones)."""
    best: dict[str, float] = {}
    for r in records:
        if r.ok and r.best_metric is not None:
            best[r.backbone] = max(best.get(r.backbone, float("-inf")), r.best_metric)
    scores = prerank["scores"]
    prerank["best_validation"] = best
    for key in ("logme", "knn_accuracy"):
        prerank[f"spearman_{key}"] = spearman({n: v[key] for n, v in scores.items() if v[key] is not None}, best)
    top = max(best, key=best.__getitem__) if best else None
    log(f"pre-rank vs the search: the best backbone was LogME's #{prerank['order'].index(top) + 1} of "
        f"{len(prerank['order'])}" if top in prerank["order"] else "pre-rank vs the search: no backbone finished")
    rho = prerank["spearman_logme"]
    if rho is not None:
        log(f"  Spearman(LogME, best validation {metric}) over {len(best)} backbones: {rho:+.2f}")

