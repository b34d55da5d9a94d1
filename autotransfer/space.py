"""Search spaces: YAML files in ``search_spaces/`` turned into Optuna define-by-run functions.

A space names backbones, the strategies to try with their own (conditional)
hyperparameters, and hyperparameters shared by all strategies::

    task: text-cls
    backbones: [distilbert-base-uncased, ./local/model-folder]
    params:                      # sampled for every trial
      batch_size: [16, 32]       # a list is a categorical choice
      weight_decay: {distribution: loguniform, low: 1.0e-4, high: 1.0e-1}
    strategies:                  # sampled only when that strategy is picked
      linear_probe:
        head_lr: {distribution: loguniform, low: 1.0e-4, high: 1.0e-2}
      freeze:
        freeze_depth: {distribution: int, low: 0, high: num_layers}
      lora:
        lora_r: [4, 8, 16]

Distributions: ``loguniform``, ``uniform``, ``int`` (``step``, ``log``),
``categorical`` (``choices``) or a plain constant.  ``num_layers`` as an int
bound means "the backbone's number of layer groups", so freeze depth spans
each backbone's own depth.  Backbones written as paths (``./``, ``../``, ``/``,
``~``) are resolved relative to the YAML file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import yaml

from autotransfer.errors import UserError
from autotransfer.recipes import Recipe
from autotransfer.strategies import get_strategy, list_strategies

#: hyperparameters of the training loop, shared by every strategy
TRAINING_PARAMS = {
    "batch_size": "examples per optimisation step",
    "weight_decay": "AdamW weight decay",
    "warmup_ratio": "share of steps with linear learning-rate warm-up",
    "label_smoothing": "cross-entropy label smoothing",
    "augment": "image augmentation strength: none, light or strong (image-cls)",
    "scheduler": "learning-rate schedule after the warm-up: linear, cosine or constant (transformers.get_scheduler)",
    "optimizer": "adamw, or sgd with momentum 0.9 (the classic vision recipe)",
    "batch_order": "training batches: random (shuffled), or length (grouped by length: less padding; text-cls)",
}
#: the values a categorical training parameter may take (checked when the space is read)
TRAINING_CHOICES = {"augment": ("none", "light", "strong"), "scheduler": ("linear", "cosine", "constant"),
                    "optimizer": ("adamw", "sgd"), "batch_order": ("random", "length")}
#: recommended values of the training parameters (used by warm-start trials when the space allows them)
TRAINING_DEFAULTS = {"batch_size": 32, "weight_decay": 0.01, "warmup_ratio": 0.06, "label_smoothing": 0.0,
                     "augment": "light", "scheduler": "linear", "optimizer": "adamw", "batch_order": "random"}
DISTRIBUTIONS = ("loguniform", "uniform", "int", "categorical")
LAYERS_SYMBOL = "num_layers"
_TOP_KEYS = {"task", "description", "backbones", "params", "strategies"}

Bound = Union[float, int, str]


@dataclass(frozen=True)
class Param:
    """One hyperparameter's distribution (or constant)."""

    name: str
    distribution: str  # one of DISTRIBUTIONS or "constant"
    low: Optional[Bound] = None
    high: Optional[Bound] = None
    step: Optional[Union[int, float]] = None
    log: bool = False
    choices: Optional[tuple[Any, ...]] = None
    value: Any = None

    def _bound(self, b: Bound, num_layers: Optional[int]) -> Union[int, float]:
        if b == LAYERS_SYMBOL:
            if num_layers is None:
                raise ValueError(f"{self.name}: '{LAYERS_SYMBOL}' needs a backbone")
            return num_layers
        return b  # type: ignore[return-value]

    def suggest(self, trial: Any, num_layers: Optional[int] = None) -> Any:
        """Sample this parameter on an Optuna trial (define-by-run)."""
        d = self.distribution
        if d == "constant":
            return self.value
        if d == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices or ()))
        low, high = self._bound(self.low, num_layers), self._bound(self.high, num_layers)
        if d == "int":
            return trial.suggest_int(self.name, int(low), int(high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, float(low), float(high), log=(d == "loguniform"), step=self.step)

    def describe(self) -> str:
        if self.distribution == "constant":
            return repr(self.value)
        if self.distribution == "categorical":
            return "one of " + ", ".join(map(str, self.choices or ()))
        return f"{self.distribution}[{self.low}, {self.high}]"


@dataclass
class SearchSpace:
    """A validated search space."""

    task: str
    backbones: list[str]
    strategies: dict[str, dict[str, Param]]
    params: dict[str, Param] = field(default_factory=dict)
    path: Optional[Path] = None
    description: str = ""

    def restrict(self, backbones: Optional[list[str]] = None, strategies: Optional[list[str]] = None) -> "SearchSpace":
        """A copy limited to the given backbones (replacing the space's) and strategies."""
        new = dataclasses.replace(self)
        if backbones:
            new.backbones = list(backbones)
        if strategies:
            unknown = [s for s in strategies if s not in list_strategies()]
            if unknown:
                raise UserError(f"--strategies: unknown strategy {unknown[0]!r}; choose from {', '.join(list_strategies())}")
            new.strategies = {s: self.strategies.get(s, {}) for s in strategies}
        return new

    def define_by_run(self, num_layers: Mapping[str, int],
                      recipes: Optional[list["RecipePoint"]] = None) -> "DefineByRun":
        """The Optuna define-by-run function: backbone, then strategy, then their conditional params.

        ``num_layers`` maps each backbone to its number of layer groups (for ``num_layers`` bounds);
        a trial proposed at one of ``recipes`` gets that recipe's name and fixed settings.
        """
        return DefineByRun(list(self.backbones), {k: dict(v) for k, v in self.strategies.items()},
                           dict(self.params), dict(num_layers), list(recipes or []))

    def max_batch_size(self) -> int:
        """The largest batch size a trial can get (the fewest optimizer steps per epoch)."""
        p = self.params.get("batch_size")
        if p is None:
            return int(TRAINING_DEFAULTS["batch_size"])
        if p.distribution == "constant":
            return int(p.value)
        if p.distribution == "categorical":
            return int(max(p.choices or (TRAINING_DEFAULTS["batch_size"],)))
        return int(float(p.high))  # type: ignore[arg-type]

    def recipe_points(self, recipes: list[Recipe]) -> list["RecipePoint"]:
        """Each recipe on each backbone, as points in this space (recipes of absent strategies skipped)."""
        points = []
        for recipe in recipes:
            if recipe.strategy not in self.strategies:
                continue
            for backbone in self.backbones:
                values: dict[str, Any] = {"backbone": backbone, "strategy": recipe.strategy}
                for p in list(self.params.values()) + list(self.strategies[recipe.strategy].values()):
                    value = _fit(p, recipe.params.get(p.name))
                    if value is not None:
                        values[p.name] = value
                points.append(RecipePoint(recipe.name, values, dict(recipe.fixed)))
        return points

    def enqueued(self, point: Mapping[str, Any]) -> dict[str, Any]:
        """A point as the sampler is given it (backbone and strategy only where there is a choice)."""
        drop = {k for k, options in (("backbone", self.backbones), ("strategy", self.strategies))
                if len(options) == 1}
        return {k: v for k, v in point.items() if k not in drop}

    def warm_start_points(self, limit: int, covered: Optional[list["RecipePoint"]] = None) -> list[dict[str, Any]]:
        """One starting point per strategy, backbones alternating, at most ``limit``.

        Each point uses the strategy's recommended hyperparameters (its ``defaults``, and
        :data:`TRAINING_DEFAULTS`) moved into the space's range; parameters without a
        default are left to the sampler.  Good defaults first, then search, is what a
        practitioner would do by hand, and it keeps an unlucky early draw from writing off a
        backbone or strategy.
        """
        points = []
        done = {(r.values["backbone"], r.values["strategy"]) for r in covered or []}
        for i, strategy in enumerate(self.strategies):
            backbone = self.backbones[i % len(self.backbones)]
            if (backbone, strategy) in done:
                continue  # a recipe already starts this strategy on this backbone
            point: dict[str, Any] = {}
            if len(self.strategies) > 1:
                point["strategy"] = strategy
            if len(self.backbones) > 1:
                point["backbone"] = backbone
            defaults = {**TRAINING_DEFAULTS, **get_strategy(strategy).defaults}
            for p in list(self.params.values()) + list(self.strategies[strategy].values()):
                value = _fit(p, defaults.get(p.name))
                if value is not None:
                    point[p.name] = value
            if point:
                points.append(point)
        return points[:limit]

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "path": str(self.path) if self.path else None,
            "backbones": list(self.backbones),
            "params": {k: p.describe() for k, p in self.params.items()},
            "strategies": {s: {k: p.describe() for k, p in ps.items()} for s, ps in self.strategies.items()},
        }


@dataclass(frozen=True)
class RecipePoint:
    """A standard recipe on one backbone: its values in the space, and settings outside it."""

    name: str
    values: dict[str, Any]
    fixed: dict[str, Any] = field(default_factory=dict)


@dataclass
class DefineByRun:
    """A picklable define-by-run function (Ray checkpoints the searcher for resume).

    Returns constants (single-valued parameters) so they reach the trial's config too.
    """

    backbones: list[str]
    strategies: dict[str, dict[str, Param]]
    shared: dict[str, Param]
    num_layers: dict[str, int]
    recipes: list[RecipePoint] = field(default_factory=list)

    def __call__(self, trial: Any) -> dict[str, Any]:
        constants: dict[str, Any] = {}
        backbone = _choose(trial, "backbone", self.backbones, constants)
        strategy = _choose(trial, "strategy", list(self.strategies), constants)
        for p in list(self.shared.values()) + list(self.strategies[strategy].values()):
            value = p.suggest(trial, self.num_layers.get(backbone))
            if p.distribution == "constant":
                constants[p.name] = value
        # a recipe's point is enqueued exactly; a sampled float never equals it
        values = {**trial.params, **constants}
        for r in self.recipes:
            if all(values.get(k) == v for k, v in r.values.items()):
                constants.update(r.fixed, recipe=r.name)
                break
        return constants


def _fit(p: Param, value: Any) -> Any:
    """``value`` moved into ``p``'s range (None if it has no place there)."""
    if value is None or p.distribution == "constant":
        return None
    if p.distribution == "categorical":
        return value if value in (p.choices or ()) else None
    if LAYERS_SYMBOL in (p.low, p.high) or isinstance(value, (str, bool)):
        return None
    low, high = float(p.low), float(p.high)  # type: ignore[arg-type]
    fitted = min(max(float(value), low), high)
    return int(round(fitted)) if p.distribution == "int" else fitted


def _choose(trial: Any, name: str, options: list[str], constants: dict[str, Any]) -> str:
    if len(options) == 1:
        constants[name] = options[0]
        return options[0]
    return trial.suggest_categorical(name, options)


def load_space(path: Path) -> SearchSpace:
    """Load and validate a search space YAML file (``yaml.safe_load``)."""
    where = str(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise UserError(f"{where}: malformed YAML{at}: {problem}") from None
    except UnicodeDecodeError:
        raise UserError(f"{where}: not UTF-8 text") from None
    if not isinstance(raw, dict):
        raise UserError(f"{where}: a search space must be a mapping with 'backbones' and 'strategies'")
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise UserError(f"{where}: unknown key {sorted(unknown)[0]!r} (allowed: {', '.join(sorted(_TOP_KEYS))})")
    task = raw.get("task")
    backbones = raw.get("backbones")
    if not isinstance(backbones, list) or not backbones or not all(isinstance(b, str) and b.strip() for b in backbones):
        raise UserError(f"{where}: 'backbones' must be a non-empty list of model names or folders")
    backbones = [_resolve_backbone_path(b.strip(), path.parent) for b in backbones]
    if len(set(backbones)) != len(backbones):
        raise UserError(f"{where}: 'backbones' lists the same backbone twice")
    strategies_raw = raw.get("strategies")
    if isinstance(strategies_raw, list):
        strategies_raw = {s: {} for s in strategies_raw}
    if not isinstance(strategies_raw, dict) or not strategies_raw:
        raise UserError(f"{where}: 'strategies' must map strategy names to their parameters")
    seen: dict[str, Param] = {}
    shared = _parse_params(raw.get("params") or {}, "params", set(TRAINING_PARAMS) | set(_task_params(task)), where,
                           seen)
    strategies: dict[str, dict[str, Param]] = {}
    for name, params in strategies_raw.items():
        if name not in list_strategies():
            raise UserError(f"{where}: strategies.{name}: unknown strategy (known: {', '.join(list_strategies())})")
        allowed = set(get_strategy(name).hyperparameters)
        strategies[name] = _parse_params(params or {}, f"strategies.{name}", allowed, where, seen)
        overlap = set(strategies[name]) & set(shared)
        if overlap:
            raise UserError(f"{where}: strategies.{name}.{sorted(overlap)[0]} is also in 'params'; keep one")
    return SearchSpace(task=str(task) if task else "", backbones=backbones, strategies=strategies,
                       params=shared, path=path, description=str(raw.get("description") or ""))


def _task_params(task: Any) -> tuple[str, ...]:
    """The shared parameters a task adds (a detector's ``architecture``...), when the space names its task."""
    from autotransfer.tasks import declared_spec

    spec = declared_spec(str(task)) if task else None
    return spec.params if spec is not None else ()


def _resolve_backbone_path(name: str, base: Path) -> str:
    prefix = "local-dir:"
    if name.startswith(prefix):
        return prefix + _resolve_backbone_path(name[len(prefix):], base)
    if name.startswith(("./", "../", "/", "~")):
        return str((base / Path(name).expanduser()).resolve())
    return name


def _parse_params(raw: Any, prefix: str, allowed: set[str], where: str, seen: dict[str, Param]) -> dict[str, Param]:
    if not isinstance(raw, dict):
        raise UserError(f"{where}: {prefix} must be a mapping of parameter names to distributions")
    out = {}
    for name, spec in raw.items():
        key = f"{prefix}.{name}"
        if name not in allowed:
            raise UserError(f"{where}: {key}: unknown parameter (allowed here: {', '.join(sorted(allowed)) or 'none'})")
        p = _parse_param(str(name), spec, key, where)
        unknown = [v for v in (p.choices if p.distribution == "categorical" else (p.value,)) or ()
                   if name in TRAINING_CHOICES and v not in TRAINING_CHOICES[name]]
        if unknown:
            raise UserError(f"{where}: {key}: unknown value {unknown[0]!r} (choose from "
                            f"{', '.join(TRAINING_CHOICES[name])})")
        prev = seen.get(p.name)
        if prev is not None and (_kind(prev) != _kind(p)):
            raise UserError(f"{where}: {key}: '{name}' is used elsewhere with another kind of distribution; "
                            "Optuna needs one kind per parameter name")
        seen[p.name] = p
        out[p.name] = p
    return out


def _kind(p: Param) -> tuple[str, Any]:
    if p.distribution == "categorical":
        return ("categorical", p.choices)
    return (p.distribution, None)


def _num(v: Any, key: str, where: str, what: str) -> Bound:
    if v == LAYERS_SYMBOL:
        return v
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        try:
            return float(v)
        except (TypeError, ValueError):
            raise UserError(f"{where}: {key}: '{what}' must be a number, got {v!r}") from None
    return v


def _parse_param(name: str, spec: Any, key: str, where: str) -> Param:
    if isinstance(spec, list):
        spec = {"distribution": "categorical", "choices": spec}
    if not isinstance(spec, dict):
        return Param(name, "constant", value=spec)
    spec = dict(spec)
    dist = spec.pop("distribution", spec.pop("type", None))
    if dist not in DISTRIBUTIONS:
        raise UserError(f"{where}: {key}: unknown distribution {dist!r} (use one of {', '.join(DISTRIBUTIONS)})")
    if dist == "categorical":
        choices = spec.pop("choices", None)
        if not isinstance(choices, list) or not choices:
            raise UserError(f"{where}: {key}: categorical needs a non-empty 'choices' list")
        if spec:
            raise UserError(f"{where}: {key}: unexpected key {sorted(spec)[0]!r} for a categorical")
        return Param(name, "categorical", choices=tuple(choices))
    if "low" not in spec or "high" not in spec:
        raise UserError(f"{where}: {key}: {dist} needs 'low' and 'high'")
    low, high = _num(spec.pop("low"), key, where, "low"), _num(spec.pop("high"), key, where, "high")
    step = spec.pop("step", None)
    log = bool(spec.pop("log", dist == "loguniform"))
    if spec:
        raise UserError(f"{where}: {key}: unexpected key {sorted(spec)[0]!r}")
    if LAYERS_SYMBOL in (low, high) and dist != "int":
        raise UserError(f"{where}: {key}: '{LAYERS_SYMBOL}' is only allowed as a bound of an int distribution")
    if LAYERS_SYMBOL not in (low, high) and low > high:  # type: ignore[operator]
        raise UserError(f"{where}: {key}: low ({low}) is greater than high ({high})")
    if log and LAYERS_SYMBOL not in (low,) and low <= 0:  # type: ignore[operator]
        raise UserError(f"{where}: {key}: a log-scale distribution needs low > 0, got {low}")
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0):
        raise UserError(f"{where}: {key}: 'step' must be a positive number")
    if dist == "int":
        for b in (low, high):
            if b != LAYERS_SYMBOL and float(b) != int(b):  # type: ignore[arg-type]
                raise UserError(f"{where}: {key}: int bounds must be whole numbers, got {b}")
        low = low if low == LAYERS_SYMBOL else int(low)  # type: ignore[arg-type]
        high = high if high == LAYERS_SYMBOL else int(high)  # type: ignore[arg-type]
    else:
        low, high = float(low), float(high)  # type: ignore[arg-type]
    return Param(name, dist, low=low, high=high, step=step, log=log)
