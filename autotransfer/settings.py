"""One validated settings object for a search.

The CLI and :func:`autotransfer.search` both build a :class:`SearchSettings`;
everything downstream reads it and never re-validates.  Validation happens in
``__post_init__`` and raises :class:`~autotransfer.errors.UserError` with a
message that names the offending option.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from autotransfer.budget import DEFAULT_MIN_STEPS
from autotransfer.errors import UserError

SAMPLERS = ("tpe", "random", "gp", "qmc")
SCHEDULERS = ("asha", "fifo")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: Ray Tune's experiment folder inside a run (its trial state and checkpoints; what a resume restores)
TUNE_DIR = "tune"
#: the Optuna study of a run (a journal file in the run folder; ``optuna-dashboard`` opens it)
STUDY_FILE = "optuna_study.log"
#: the run folder's gallery of drawn validation examples (autotransfer.gallery)
GALLERY_DIR = "gallery"

_SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"


def default_space_path(task: str) -> Path:
    """The search space shipped for ``task`` (``search_spaces/<task>.yaml``)."""
    return _SPACES_DIR / f"{task}.yaml"


def _split_list(value: Any) -> Optional[list[str]]:
    if value is None:
        return None
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
    else:
        items = [str(v).strip() for v in value]
    items = [v for v in items if v]
    return items or None


@dataclass
class SearchSettings:
    """Everything one search needs, validated once.

    Paths are resolved to absolute paths so that Ray workers (which run in
    their own working directories) see the same files.
    """

    task: str
    data: Path
    space: Optional[Path] = None
    backbones: Optional[list[str]] = None
    strategies: Optional[list[str]] = None
    # data
    #: the task's own data options (``{"text_col": "review"}``), as its TaskSpec declares them
    options: dict[str, Any] = field(default_factory=dict)
    #: validation share carved out when there is no validation file; None: 10%, or up to 25% of small
    #: data so that validation holds 300 examples (:func:`autotransfer.data.auto_val_frac`)
    val_frac: Optional[float] = None
    test_frac: float = 0.1
    max_length: Optional[int] = None
    #: a source task's data: each backbone is fine-tuned on it first, and the search chooses between
    #: ``<backbone>`` and ``<backbone>+source`` (:mod:`autotransfer.source_stage`)
    source_data: Optional[Path] = None
    #: the task's data options for the source data (``{"text_pair_col": "hypothesis"}``; ``--source-text-pair-col``)
    source_options: dict[str, Any] = field(default_factory=dict)
    # search engine
    num_samples: int = 8
    max_concurrent: Optional[int] = None
    time_budget_s: Optional[float] = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    #: the validation metric to maximise; ``None``: the task's default (``Task.objective``)
    metric: Optional[str] = None
    sampler: str = "tpe"
    #: asha stops weak trials early; fifo runs every trial to the end
    scheduler: str = "asha"
    seed: int = 0
    max_epochs: int = 3
    evals_per_epoch: int = 2
    #: a full trial trains at least this many optimizer steps: evaluation rounds are stretched on small data
    #: (see autotransfer.budget); 0 turns the floor off
    min_steps: int = DEFAULT_MIN_STEPS
    grace_period: float = 1.0
    reduction_factor: float = 2.0
    precision: str = "auto"
    #: first trials try each strategy once (backbones alternating); the sampler fills in the rest
    warm_start: bool = True
    #: the task's standard recipes run first, one per backbone, and ASHA never stops them
    baseline: bool = True
    #: retrain the chosen configuration on train + validation before export (the test split stays unseen)
    refit: bool = False
    #: average the best trials of the winning backbone into a greedy model soup; export it if it wins on validation
    soup: bool = True
    #: keep only the K backbones with the best LogME on their frozen features (autotransfer.prerank); None: all
    prerank: Optional[int] = None
    #: trials reuse what a frozen part of the backbone computes: a head-fitting trial fits on the frozen features
    #: computed once per backbone (autotransfer.features), a ``freeze`` trial replays its frozen bottom's outputs
    #: (autotransfer.prefix_cache); off: every trial runs its own forward passes (same trials, slower)
    feature_cache: bool = True
    # cluster / output
    address: Optional[str] = None
    dashboard: bool = True
    #: where results and checkpoints live: a (shared) folder, or a URI (s3://, gs://, file://...) for Ray Tune
    storage: Optional[str] = None
    #: retries of a trial whose worker died (node lost, process killed); its own errors are not retried
    max_failures: int = 2
    output: Optional[Path] = None
    run_name: Optional[str] = None
    overwrite: bool = False
    #: continue the interrupted run in ``output`` (Ray Tune restore)
    resume: bool = False
    keep_checkpoints: bool = False
    trust_remote_code: bool = False
    verbose: bool = False
    #: the command line that produced these settings, for the report
    command: Optional[str] = None

    def __post_init__(self) -> None:
        """Validate by concern, each check cheap (nothing here reads a model or the data's contents): the task
        and its options, the data's location, the search engine, the cluster request, the output."""
        self._check_task()
        self._check_data()
        self._check_engine()
        self._check_cluster()
        self._check_output()

    def _check_task(self) -> None:
        from autotransfer.tasks import task_names

        if self.task not in task_names():
            raise UserError(f"--task: unknown task {self.task!r}; choose one of {', '.join(task_names())}")
        self._check_options()
        self._check_metric()
        self.space = Path(self.space).expanduser().resolve() if self.space else default_space_path(self.task)
        if not self.space.is_file():
            raise UserError(f"--space: search space file {self.space} does not exist")
        self.backbones = _split_list(self.backbones)
        self.strategies = _split_list(self.strategies)

    def _check_data(self) -> None:
        self.data = Path(self.data).expanduser().resolve()
        if not self.data.exists():
            raise UserError(f"--data: {self.data} does not exist")
        for name in ("val_frac", "test_frac"):
            v = getattr(self, name)
            if v is not None and not (0.0 <= v < 0.9):
                raise UserError(f"--{name.replace('_', '-')}: must be in [0, 0.9), got {v}")
        if (self.val_frac if self.val_frac is not None else 0.25) + self.test_frac >= 0.9:
            raise UserError("--val-frac plus --test-frac must leave at least 10% of the data for training")
        if self.max_length is not None and self.max_length < 4:
            raise UserError(f"--max-length: must be at least 4, got {self.max_length}")
        self._check_source()

    def _check_source(self) -> None:
        from autotransfer.tasks import task_spec

        self.source_options = {k: v for k, v in dict(self.source_options or {}).items() if v is not None}
        if self.source_data is None:
            if self.source_options:
                raise UserError(f"--source-{next(iter(self.source_options)).replace('_', '-')}: only with --source-data")
            return
        spec = task_spec(self.task)
        if not spec.sequential:
            raise UserError(f"--source-data: {self.task} has no source stage (text-cls has)")
        self.source_data = Path(self.source_data).expanduser().resolve()
        if not self.source_data.exists():
            raise UserError(f"--source-data: {self.source_data} does not exist")
        if self.source_data == self.data:
            raise UserError("--source-data: it is the --data itself; a source task is other, related data")
        for name, value in self.source_options.items():
            if spec.option(name) is None:
                raise UserError(f"--source-{name.replace('_', '-')}: {self.task} has no such option"
                                + (f"; its options: {', '.join('--source-' + o.flag[2:] for o in spec.options)}"
                                   if spec.options else ""))
            if not isinstance(value, str) or not value.strip():
                raise UserError(f"--source-{name.replace('_', '-')}: give a column name, got {value!r}")

    def _check_engine(self) -> None:
        self._positive_int("num_samples")
        self._positive_int("max_epochs")
        self._positive_int("evals_per_epoch")
        if self.prerank is not None:
            self._positive_int("prerank")
        if not isinstance(self.min_steps, int) or isinstance(self.min_steps, bool) or self.min_steps < 0:
            raise UserError(f"--min-steps: must be a whole number of at least 0, got {self.min_steps!r}")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise UserError(f"--time-budget: must be a positive number of seconds, got {self.time_budget_s}")
        if self.sampler not in SAMPLERS:
            raise UserError(f"--sampler: unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if self.scheduler not in SCHEDULERS:
            raise UserError(f"--scheduler: choose one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}")
        if self.precision not in PRECISIONS:
            raise UserError(f"--precision: choose one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not self.grace_period > 0:
            raise UserError(f"--grace-period: must be positive (in epochs), got {self.grace_period}")
        if self.grace_period > self.max_epochs:
            raise UserError(f"--grace-period ({self.grace_period}) is longer than --max-epochs ({self.max_epochs})")
        if not self.reduction_factor > 1:
            raise UserError(f"--reduction-factor: must be greater than 1, got {self.reduction_factor}")

    def _check_cluster(self) -> None:
        """The request's own consistency; whether the machine or cluster holds it is checked before Ray starts
        (:func:`autotransfer.cluster.concurrency`)."""
        if self.max_concurrent is not None:
            self._positive_int("max_concurrent")
        if not (self.cpus_per_trial > 0):
            raise UserError(f"--cpus-per-trial: must be positive, got {self.cpus_per_trial}")
        if self.gpus_per_trial < 0:
            raise UserError(f"--gpus-per-trial: must be zero or positive, got {self.gpus_per_trial}")
        if self.gpus_per_trial > 1 and self.gpus_per_trial != int(self.gpus_per_trial):
            raise UserError("--gpus-per-trial: above 1 it must be a whole number of GPUs")
        if not isinstance(self.max_failures, int) or isinstance(self.max_failures, bool) or self.max_failures < 0:
            raise UserError(f"--max-failures: must be a whole number of at least 0, got {self.max_failures!r}")
        if self.address is not None and str(self.address).startswith("ray://"):
            raise UserError(f"--address {self.address}: Ray Client cannot carry a whole search (Ray Tune would run its "
                            "loop on the head, where your files are not); submit it as a Ray job instead: ray job "
                            "submit --address http://HEAD:8265 -- autotransfer search --address auto ...")

    def _check_output(self) -> None:
        """Names and paths only; whether the folder may be written is probed before any work
        (:func:`autotransfer.api.check_output`)."""
        if self.run_name is None:
            self.run_name = f"{self.task}-{time.strftime('%Y%m%d-%H%M%S')}"
        if self.storage is not None:
            self._check_storage()
        if self.output is None:
            self.output = (Path(self.storage) if self.storage and not self.storage_is_uri else Path("reports")) \
                / self.run_name
        self.output = Path(self.output).expanduser().resolve()

    def _check_storage(self) -> None:
        storage = str(self.storage).strip()
        if not storage:
            raise UserError("--storage: give a folder or a URI such as s3://bucket/runs")
        if "/" in str(self.run_name) or str(self.run_name) in (".", ".."):
            raise UserError(f"--run-name: {self.run_name!r} must be a plain name (it names a folder in --storage)")
        if is_uri(storage):
            self.storage = storage.rstrip("/")
            return
        if self.output is not None and not self.resume:
            raise UserError("--storage FOLDER already sets the run folder (<storage>/<run-name>); "
                            "drop --output, or use --output alone")
        self.storage = str(Path(storage).expanduser().resolve())

    def _check_options(self) -> None:
        """Only the options the task declares, each a non-empty string (a column name)."""
        from autotransfer.tasks import declared_specs, task_spec

        spec = task_spec(self.task)
        self.options = {k: v for k, v in dict(self.options or {}).items() if v is not None}
        for name, value in self.options.items():
            flag = "--" + name.replace("_", "-")
            if spec.option(name) is None:
                users = [d.name for d in declared_specs() if d.option(name)]
                raise UserError(f"{flag}: {self.task} has no such option"
                                + (f" (it is {' and '.join(users)}'s)" if users else "")
                                + (f"; its options: {', '.join(o.flag for o in spec.options)}" if spec.options
                                   else ""))
            if not isinstance(value, str) or not value.strip():
                raise UserError(f"{flag}: give a column name, got {value!r}")

    def _check_metric(self) -> None:
        """The metric is the task's to offer: each task's objective lists its own."""
        from autotransfer.tasks import task_spec

        objective = task_spec(self.task).objective
        if self.metric is None:
            self.metric = objective.default_metric
        elif self.metric not in objective.metrics:
            raise UserError(f"--metric: {self.task} has no metric {self.metric!r}; choose one of "
                            f"{', '.join(objective.metrics)}")

    def _positive_int(self, name: str) -> None:
        v = getattr(self, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise UserError(f"--{name.replace('_', '-')}: must be a whole number of at least 1, got {v!r}")

    # ------------------------------------------------------------------ derived
    @property
    def storage_is_uri(self) -> bool:
        """``--storage`` is a URI (results staged in ``output`` and uploaded), not a folder."""
        return self.storage is not None and is_uri(self.storage)

    @property
    def tune_storage(self) -> str:
        """Ray Tune's ``storage_path``: the run folder, or ``<storage URI>/<run-name>``."""
        if self.storage_is_uri:
            return f"{self.storage}/{self.run_name}"
        return str(self.output)

    @property
    def study_file(self) -> Path:
        """The run's Optuna study: a journal file in the run folder (the driver's; staged when storage is a URI)."""
        return Path(self.output) / STUDY_FILE  # type: ignore[arg-type]

    @property
    def tune_experiment(self) -> str:
        """Ray Tune's experiment folder: ``<tune_storage>/tune`` (trial state, checkpoints)."""
        return f"{self.tune_storage}/{TUNE_DIR}"

    @property
    def max_iterations(self) -> int:
        """Evaluation rounds of a trial that runs to the end (ASHA's ``max_t``)."""
        return self.max_epochs * self.evals_per_epoch

    @property
    def grace_iterations(self) -> int:
        """ASHA's grace period in evaluation rounds."""
        return max(1, math.ceil(self.grace_period * self.evals_per_epoch))

    @property
    def torch_threads(self) -> int:
        """Threads each trial's torch may use: its CPU share, at least one."""
        return max(1, int(self.cpus_per_trial))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for k, v in out.items():
            if isinstance(v, Path):
                out[k] = str(v)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SearchSettings":
        """Settings saved by :meth:`to_dict` (runs saved before task options existed kept the columns at the
        top level: they become options)."""
        from autotransfer.tasks import declared_specs

        names = {f.name for f in dataclasses.fields(cls)}
        legacy = {o.name: data[o.name] for spec in declared_specs() for o in spec.options
                  if data.get(o.name) is not None}
        fields = {k: v for k, v in data.items() if k in names}
        return cls(**{**fields, "options": {**legacy, **(fields.get("options") or {})}})

    @classmethod
    def build(cls, **kwargs: Any) -> "SearchSettings":
        """Settings from keyword arguments as the CLI names them: the task's options (``text_col=...``)
        may sit beside the fields, as on the command line."""
        names = {f.name for f in dataclasses.fields(cls)}
        source = {**(kwargs.pop("source_options", None) or {}),
                  **{k[len("source_"):]: kwargs.pop(k) for k in list(kwargs)
                     if k.startswith("source_") and k not in names}}
        options = {**(kwargs.pop("options", None) or {}),
                   **{k: kwargs.pop(k) for k in list(kwargs) if k not in names}}
        return cls(**kwargs, options=options, source_options=source)


def is_uri(value: str) -> bool:
    """``s3://...``, ``gs://...``, ``file://...``: storage Ray Tune reaches through pyarrow."""
    scheme, sep, _ = str(value).partition("://")
    return bool(sep) and scheme.isascii() and scheme.replace("+", "").isalnum() and len(scheme) > 1


def local_cpu_count() -> int:
    """CPUs this process may use (respects affinity masks, e.g. in containers)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1
