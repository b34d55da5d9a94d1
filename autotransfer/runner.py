"""The Ray Tune runner: Optuna proposes, ASHA stops, Ray schedules.

Local Ray is started on demand (dashboard on 127.0.0.1); ``--address`` joins an
existing cluster instead.  Prepared data reaches the trials once, through the
object store (``tune.with_parameters``), never through the config dict.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any, Mapping, Optional

from autotransfer.cluster import Cluster, running_cluster
from autotransfer.errors import UserError
from autotransfer.settings import TUNE_DIR, SearchSettings, local_cpu_count
from autotransfer.space import RecipePoint, SearchSpace
from autotransfer.training import TrialContext, run_trial
from autotransfer.tune_state import trial_dirname

MODE = "max"


def start_ray(settings: SearchSettings) -> Cluster:
    """Connect to ``settings.address`` or start a local Ray; reuse one already running in this process."""
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # the live leaderboard is the progress display: no Ray Tune banners or status tables
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # num_to_keep forces a (small) experiment snapshot per checkpoint; that is intended, not a warning
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # snapshot the experiment state (small here) every second rather than every 10+: a killed search
    # then loses at most a second of bookkeeping, and finished trials are not run again on resume
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
    if not settings.verbose:
        # failed trials are reported in the leaderboard and results.json, with their reasons; Ray's own
        # summaries of them ("Trials did not complete", "Failed to fetch metrics") would scroll past it
        for name in ("ray.tune.tune", "ray.tune.analysis.experiment_analysis"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
        # "The `process_trial_result` operation took 0.53 s, which may be a performance bottleneck": Ray Tune's
        # hints for its own developers, printed whenever a loaded machine slows the driver for half a second
        logging.getLogger("ray.tune.utils.util").setLevel(logging.ERROR)
    if not ray.is_initialized():
        kwargs: dict[str, Any] = dict(
            # no --address: always a fresh local Ray, even if `ray start` left a cluster (or a stale record
            # of one) on this machine; joining a cluster is what --address is for
            address=settings.address or "local",
            include_dashboard=settings.dashboard,
            dashboard_host="127.0.0.1",
            logging_level=logging.INFO if settings.verbose else logging.WARNING,
            log_to_driver=settings.verbose,
            configure_logging=True,
        )
        if settings.address is None:
            kwargs["num_cpus"] = local_cpu_count()
            # Ray starts one idle worker per CPU for the first driver, but Ray Tune starts every trial actor with a
            # runtime env of its own (environment variables), so none of them could ever run a trial: the first
            # trial started a fresh process and Ray killed the idle ones. Not starting them: ray.init 3.9 s
            # instead of 4.4 s and ~1 CPU-second less on 2 cores (three runs each; read by the raylet we start)
            os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
        elif "RAY_JOB_CONFIG_JSON_ENV_VAR" not in os.environ:  # inside a Ray job, the job's runtime env rules
            # the cluster's nodes run this driver's autotransfer code, whatever version they have installed
            kwargs["runtime_env"] = {"py_modules": [str(Path(__file__).resolve().parent)],
                                     "excludes": ["__pycache__", "*.pyc"]}
        try:
            ctx = ray.init(**kwargs)
        except (ConnectionError, TimeoutError) as exc:
            raise UserError(f"--address {settings.address}: cannot connect to a Ray cluster "
                            f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
        except ValueError as exc:
            raise UserError(f"--address {settings.address}: {str(exc).splitlines()[0]}") from None
        dashboard = getattr(ctx, "dashboard_url", None) or None
    else:
        dashboard = None  # a Ray started by the caller: its dashboard is theirs to report
    show_dashboard = settings.dashboard or settings.address is not None
    return running_cluster(settings.address, dashboard if show_dashboard else None)


def make_sampler(name: str, seed: int, num_samples: int) -> Any:
    """The Optuna sampler behind ``--sampler`` (seeded)."""
    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # a failed trial is reported with a NaN metric: Optuna records it as failed; its warning adds nothing
    warnings.filterwarnings("ignore", message=r"The value nan is not acceptable")
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=min(10, max(2, num_samples // 3)))
    # TPE: grouped multivariate TPE models conditional spaces (lora_r only with lora) properly;
    # constant_liar keeps parallel trials from proposing the same point
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True,
                                      n_startup_trials=min(10, max(2, num_samples // 3)))


def first_points(settings: SearchSettings, space: SearchSpace, recipes: list[RecipePoint]) -> list[dict[str, Any]]:
    """What the sampler is given first: the recipes (one per backbone), then one warm start per strategy."""
    points = [space.enqueued(r.values) for r in recipes]
    if settings.warm_start:
        points += space.warm_start_points(settings.num_samples, covered=recipes)
    return points[:settings.num_samples]


def run_tune(settings: SearchSettings, space: SearchSpace, ctx: TrialContext, num_layers: Mapping[str, int],
             max_concurrent: int, callbacks: list[Any], recipes: Optional[list[RecipePoint]] = None) -> Any:
    """Run the search (``max_concurrent`` from :func:`concurrency`) and return Ray Tune's ``ResultGrid``.

    ``recipes`` run first and ASHA never stops them (see :mod:`autotransfer.scheduler`).
    """
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    from autotransfer.scheduler import NoiseAwareASHA
    from autotransfer.searcher import FidelitySearch, study_storage

    recipes = list(recipes or [])
    # a define-by-run space makes OptunaSearch ignore TuneConfig's metric: give it (and ASHA) their own
    searcher = FidelitySearch(space=space.define_by_run(num_layers, recipes), metric=settings.metric, mode=MODE,
                              points_to_evaluate=first_points(settings, space, recipes) or None,
                              sampler=make_sampler(settings.sampler, settings.seed, settings.num_samples),
                              storage=study_storage(settings.study_file), study_name=settings.run_name or "search")
    if settings.scheduler == "fifo":
        scheduler: Any = FIFOScheduler()
    else:
        scheduler = NoiseAwareASHA(time_attr="training_iteration", max_t=settings.max_iterations,
                                   metric=settings.metric, mode=MODE,
                                   grace_period=min(settings.grace_iterations, settings.max_iterations),
                                   reduction_factor=settings.reduction_factor)
    resources = {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial}
    trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), resources)
    if settings.resume:
        tuner = tune.Tuner.restore(settings.tune_experiment, trainable=trainable, resume_unfinished=True,
                                   resume_errored=False)
        # Ray restores the callbacks pickled with the run; this process's live view replaces them
        tuner._local_tuner.get_run_config().callbacks = callbacks
        return tuner.fit()
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=scheduler,
            num_samples=settings.num_samples, max_concurrent_trials=max_concurrent,
            time_budget_s=settings.time_budget_s, reuse_actors=True, trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=TUNE_DIR,
            storage_path=settings.tune_storage,
            # a trial checkpoints at every evaluation, its best weights inside (autotransfer.checkpoints):
            # the latest one is all a resume or the export needs
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            # only lost workers/nodes raise here (a trial's own errors are reported, see run_trial): retry those
            # from the trial's last checkpoint
            failure_config=tune.FailureConfig(max_failures=settings.max_failures),
            verbose=0,
            callbacks=callbacks,
        ),
    )
    return tuner.fit()
