"""Command line: ``autotransfer search | predict | report``.

Bad input ends with one line on stderr and exit code 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from autotransfer.budget import DEFAULT_MIN_STEPS
from autotransfer.errors import UserError
from autotransfer.settings import PRECISIONS, SAMPLERS, SCHEDULERS
from autotransfer.strategies import list_strategies
from autotransfer.tasks import TaskOption, declared_specs, task_names, task_spec

SEARCH_EXAMPLES = """\
examples:
  # the shipped example: SST-2 sentences, all-MiniLM-L6-v2 from a pip package (offline)
  autotransfer search --task text-cls --data examples/sst2-mini \\
      --space search_spaces/text-cls-example.yaml --num-samples 8

  # your own CSV; backbones from the hub (or local folders)
  autotransfer search --task text-cls --data reviews.csv --text-col review --label-col stars \\
      --backbones distilbert-base-uncased,roberta-base --num-samples 20 --gpus-per-trial 0.5

  # photos in class folders (or train/val/test/<class>/), local timm backbones
  autotransfer search --task image-cls --data ../shared/data/hymenoptera \\
      --space search_spaces/image-cls-local.yaml --num-samples 8

  # named entities: CoNLL files (token<TAB>tag, IOB2) in a train/dev/test folder, ranked on entity F1
  autotransfer search --task token-cls --data conll/ --space search_spaces/token-cls-local.yaml

  # NLI first, then sentiment: each backbone fine-tuned on the source task, the search picks with or without
  autotransfer search --task text-cls --data reviews.csv --source-data nli.csv

  # traffic signs (the shipped 64-image example): boxes in a COCO file, torchvision detectors on local
  # timm backbones, ranked on mAP; a CPU shows the workflow, a useful detector needs a GPU
  autotransfer search --task detection --data examples/signs-mini/coco.json \\
      --space search_spaces/detection-local.yaml --num-samples 4 --min-steps 100

  # only LoRA and full fine-tuning, 30 minutes at most
  autotransfer search --task text-cls --data data/ --strategies lora,full --time-budget 1800

  # on an existing Ray cluster (ray start --head ...), results and checkpoints on shared storage
  autotransfer search --task text-cls --data reviews.csv --address auto --storage /mnt/shared/runs

The best model lands in <output>/best: transformers.pipeline("text-classification", model=<output>/best).
"""


#: argparse keeps the tasks' options apart from the engine's under this prefix
OPTION_PREFIX = "task_option:"
#: ... and the same options for the source data (``--source-text-col``) under this one
SOURCE_PREFIX = "source_option:"


def task_options(argv: Sequence[str] = ()) -> dict[TaskOption, list[str]]:
    """Each task data option (``--text-col``...) -> the tasks that read it: every declared task's, and a plugin
    task's named by ``--task`` in ``argv`` (its implementation is imported for them)."""
    specs = declared_specs()
    chosen = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--task"), None)
    if chosen in task_names() and all(s.name != chosen for s in specs):
        specs.append(task_spec(chosen))
    out: dict[TaskOption, list[str]] = {}
    first: dict[str, TaskOption] = {}  # an option two tasks declare is one flag, with the first one's help
    for spec in specs:
        for option in spec.options:
            out.setdefault(first.setdefault(option.name, option), []).append(spec.name)
    return out


def _add_search(sub: argparse._SubParsersAction, argv: Sequence[str]) -> None:
    p = sub.add_parser("search", help="search backbone x strategy x hyperparameters",
                       usage="autotransfer search --task TASK --data PATH [options]  (--help: all options, examples)",
                       description="Search backbone x transfer strategy x hyperparameters with Optuna + ASHA "
                                   "on Ray Tune, then export the best model and a leaderboard.",
                       epilog=SEARCH_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("what to search")
    g.add_argument("--task", required=True, metavar="{" + ",".join(task_names()) + "}",
                   help="the task (an unknown name lists the choices)")
    g.add_argument("--data", required=True, type=Path,
                   help="a CSV/TSV/JSONL file (token-cls: CoNLL or JSONL of tokens and tags; detection: a COCO "
                        "JSON file, a Pascal VOC folder or a YOLO images/+labels/ tree), or a folder with "
                        "train/validation(dev)/test files")
    g.add_argument("--space", type=Path, help="search space YAML (default: search_spaces/<task>.yaml)")
    g.add_argument("--backbones", help="comma-separated backbones replacing the space's (hub ids or folders)")
    g.add_argument("--strategies", help=f"comma-separated subset: {','.join(list_strategies())}")
    g.add_argument("--metric", help="validation metric to maximise (default: the task's, accuracy for text-cls and "
                                    "image-cls; an unknown name lists the task's metrics)")
    d = p.add_argument_group("data")
    for option, tasks in task_options(argv).items():
        d.add_argument(option.flag, dest=OPTION_PREFIX + option.name, metavar="COLUMN",
                       help=f"{', '.join(tasks)}: {option.help}")
    d.add_argument("--val-frac", type=float,
                   help="validation share when no validation file (default: 10%%, up to 25%% of small data so that "
                        "validation holds 300 examples)")
    d.add_argument("--test-frac", type=float, default=0.1, help="test share when no test file")
    d.add_argument("--max-length", type=int, help="token limit (default: 99th percentile of the data)")
    src = p.add_argument_group("source task (sequential transfer)")
    src.add_argument("--source-data", type=Path, metavar="PATH",
                     help="text-cls: a related labelled data set (e.g. NLI pairs); each backbone is fine-tuned on it "
                          "first with the task's recipe, and the search chooses between <backbone> and "
                          "<backbone>+source")
    for option, tasks in task_options(argv).items():
        if not any(task_spec(t).sequential for t in tasks):
            continue
        src.add_argument("--source-" + option.flag[2:], dest=SOURCE_PREFIX + option.name, metavar="COLUMN",
                         help=f"--source-data's {option.help.split(' (')[0].split(',')[0]}")
    e = p.add_argument_group("search engine")
    e.add_argument("--num-samples", type=int, default=8, help="trials to run (default 8)")
    e.add_argument("--max-concurrent", type=int, help="trials at once (default: what the resources hold)")
    e.add_argument("--time-budget", type=float, dest="time_budget_s", metavar="SECONDS",
                   help="end the search this long after its trials start: trials still running are stopped then "
                        "and keep their best evaluation so far")
    e.add_argument("--cpus-per-trial", type=float, default=1.0)
    e.add_argument("--gpus-per-trial", type=float, default=0.0, help="fractions share a GPU, e.g. 0.25")
    e.add_argument("--sampler", default="tpe", choices=SAMPLERS)
    e.add_argument("--scheduler", default="asha", choices=SCHEDULERS,
                   help="asha stops weak trials early (default); fifo runs every trial to the end")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--max-epochs", type=int, default=3,
                   help="epochs of a full trial, or more on small data (see --min-steps)")
    e.add_argument("--min-steps", type=int, default=DEFAULT_MIN_STEPS,
                   help=f"a full trial trains at least this many optimizer steps at the largest batch size; "
                        f"evaluation rounds are stretched to fit (default {DEFAULT_MIN_STEPS}; 0: off)")
    e.add_argument("--evals-per-epoch", type=int, default=2, help="validation rounds per epoch (ASHA rungs)")
    e.add_argument("--grace-period", type=float, default=1.0, help="epochs before ASHA may stop a trial")
    e.add_argument("--reduction-factor", type=float, default=2.0, help="ASHA keeps 1/N of trials per rung")
    e.add_argument("--no-warm-start", dest="warm_start", action="store_false",
                   help="don't start with one trial per strategy; let the sampler pick from the first trial")
    e.add_argument("--no-baseline", dest="baseline", action="store_false",
                   help="don't run the task's standard recipes (text: full fine-tuning at lr 2e-5) as protected "
                        "first trials, one per backbone")
    e.add_argument("--refit", action="store_true",
                   help="retrain the best configuration on train + validation (for as many epochs as its best "
                        "checkpoint) and export that model; the test split stays unseen")
    e.add_argument("--prerank", type=int, metavar="K",
                   help="score every backbone on its frozen features first (LogME, k-NN) and search only the K "
                        "best; the scores always order the first trials when features are computed")
    e.add_argument("--no-soup", dest="soup", action="store_false",
                   help="don't try a greedy model soup (the best trials of the winning backbone averaged, each "
                        "kept only if validation improves; exported only if it beats the best trial on validation)")
    e.add_argument("--no-feature-cache", dest="feature_cache", action="store_false",
                   help="trials don't reuse frozen features computed once (head fits) or a frozen bottom's "
                        "outputs (freeze depth): each runs its own forward passes; the same trials, slower")
    e.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="auto = bf16/fp16 autocast on GPU, fp32 on CPU")
    o = p.add_argument_group("cluster and output")
    o.add_argument("--address", help="existing Ray cluster (auto, HOST:PORT); default: start a local Ray. "
                                     "From outside the cluster, submit the command as a Ray job")
    o.add_argument("--storage", help="results and checkpoints: a folder every node sees (the run goes to "
                                     "<storage>/<run-name>) or a URI (s3://..., gs://...) Ray Tune writes to")
    o.add_argument("--max-failures", type=int, default=2,
                   help="retries of a trial whose worker or node died, from its last checkpoint (default 2)")
    o.add_argument("--no-dashboard", dest="dashboard", action="store_false", help="don't start the Ray dashboard")
    o.add_argument("--output", type=Path, help="run folder (default: reports/<run-name>; with a --storage URI: "
                                               "the local copy of results, report and best/)")
    o.add_argument("--run-name")
    o.add_argument("--overwrite", action="store_true", help="replace a run already in --output")
    o.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in --output (same as `autotransfer resume DIR`)")
    o.add_argument("--keep-checkpoints", action="store_true", help="keep every trial's best checkpoint")
    o.add_argument("--trust-remote-code", action="store_true", help="allow model code from the hub (off by default)")
    o.add_argument("--verbose", action="store_true", help="show Ray's and the trials' logs")


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="predict labels with an exported model",
                       epilog="example:\n  autotransfer predict --model reports/<run>/best --data new.csv "
                              "--output predictions.csv\n  autotransfer predict --model reports/<detection-run>/best "
                              "--data photos/ --output detections.json --draw drawn/", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=Path, help="a folder exported by `search` (<run>/best)")
    p.add_argument("--data", required=True, type=Path,
                   help="text: CSV/TSV/JSONL with a text column; images: a folder, or a CSV of image paths; "
                        "token-cls: words one per line (CoNLL) or {\"tokens\": [...]} lines, or a table of texts")
    p.add_argument("--text-col", help="text column (default: detected)")
    p.add_argument("--image-col", help="image path column of a CSV (default: detected)")
    p.add_argument("--output", type=Path, help="where to write predictions: a .json file gets a JSON list (detection: "
                                               "COCO results format), anything else CSV (default: stdout as CSV)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--draw", type=Path, metavar="DIR", help="detection: also save each image with its boxes in DIR")
    p.add_argument("--score-threshold", type=float, default=0.05,
                   help="detection: keep detections scoring at least this (default 0.05, as COCO evaluation)")


def _add_resume(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("resume", help="continue an interrupted search",
                       description="Continue the search in a run folder after Ctrl-C, a killed process or a reboot: "
                                   "finished trials are kept, unfinished ones restart from their last checkpoint.",
                       epilog="example:\n  autotransfer resume reports/<run>",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path)


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="rebuild leaderboard.html from a run's saved results",
                       epilog="example:\n  autotransfer report reports/<run>",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path)
    p.add_argument("--screenshot", type=Path, help="also save a full-page PNG (needs playwright and chromium)")


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autotransfer",
        description="Turn a pretrained model into a good classifier for your data: search backbone x transfer "
                    "strategy (linear probe, freeze depth, full, LoRA) x hyperparameters.",
        epilog="run `autotransfer search --help` for examples",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_search(sub, argv)
    _add_resume(sub)
    _add_predict(sub)
    _add_report(sub)
    return parser


def _cmd_search(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from autotransfer.api import resume, search
    from autotransfer.settings import SearchSettings

    fields = {k: v for k, v in vars(args).items()
              if k not in ("command", "debug") and not k.startswith((OPTION_PREFIX, SOURCE_PREFIX))}
    for prefix, name in ((OPTION_PREFIX, "options"), (SOURCE_PREFIX, "source_options")):
        fields[name] = {k[len(prefix):]: v for k, v in vars(args).items() if k.startswith(prefix) and v is not None}
    if args.resume:
        if args.output is None:
            raise UserError("--resume needs --output pointing at the run to continue")
        return _report_result(resume(args.output))
    settings = SearchSettings(**fields, command="autotransfer " + shlex.join(argv))
    return _report_result(search(settings))


def _report_result(result: Any) -> int:
    metric = json.loads((result.output / "settings.json").read_text()).get("metric", "accuracy")
    best = result.best
    assert best is not None
    interval = f" (95% interval {best.interval[0]:.3f} to {best.interval[1]:.3f})" if best.interval else ""
    soup = json.loads((result.output / "results.json").read_text()).get("soup") or {}
    if soup.get("exported"):  # the exported model is the soup: its scores, then the trial it started from
        print(f"\nexported: a soup of {len(soup['ingredients'])} trials  validation {metric} "
              f"{soup['validation_metric']:.4f}  test {metric} {result.test_metrics[metric]:.4f}")
        print(f"best trial: {best.backbone} / {best.strategy}  validation {metric} {best.best_metric:.4f}{interval}  "
              f"test {metric} {soup['selected_trial_test_metrics'][metric]:.4f}")
    else:
        print(f"\nbest: {best.backbone} / {best.strategy}  validation {metric} {best.best_metric:.4f}{interval}  "
              f"test {metric} {result.test_metrics[metric]:.4f}")
    print(f"config: {best.config}")
    print(f"model:  {result.best_dir}")
    print(f"report: {result.report}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    import csv

    from autotransfer.predict import predict_rows

    rows = predict_rows(args.model, args.data, text_col=args.text_col, image_col=args.image_col,
                        batch_size=args.batch_size, draw=args.draw, score_threshold=args.score_threshold)
    if args.output is not None and args.output.suffix.lower() == ".json":
        found = list(rows)
        args.output.write_text(json.dumps(found, indent=1))
        print(f"{len(found)} predictions written to {args.output}", file=sys.stderr)
        return 0
    out = open(args.output, "w", newline="", encoding="utf-8") if args.output else sys.stdout
    try:
        writer = None
        for row in rows:
            if writer is None:
                writer = csv.DictWriter(out, fieldnames=list(row))
                writer.writeheader()
            writer.writerow(row)
    finally:
        if args.output:
            out.close()
    if args.output:
        print(f"predictions written to {args.output}", file=sys.stderr)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from autotransfer.report import write_report
    from autotransfer.results import load_results

    if not (args.run / "results.json").is_file():
        raise UserError(f"{args.run}: no results.json here; is it a run folder?")
    records, meta = load_results(args.run)
    page = write_report(args.run, records, meta)
    print(page)
    if args.screenshot:
        from autotransfer.report import screenshot

        print(screenshot(page, args.screenshot))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    try:
        if args.command == "search":
            return _cmd_search(args, argv)
        if args.command == "resume":
            from autotransfer.api import resume

            return _report_result(resume(args.run))
        if args.command == "predict":
            return _cmd_predict(args)
        return _cmd_report(args)
    except UserError as exc:
        if args.debug:
            raise
        print(f"autotransfer: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("autotransfer: interrupted", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        from autotransfer.api import SearchInterrupted

        if not isinstance(exc, SearchInterrupted):
            return _unexpected(exc, args.debug)
        print(f"autotransfer: {exc}", file=sys.stderr)
        return 130
    except Exception as exc:  # SearchFailed and unexpected errors: one line, exit 1
        return _unexpected(exc, args.debug)


def run() -> None:
    """The ``autotransfer`` command (and ``python -m autotransfer``): :func:`main`, then the exit.

    After a search this process holds torch, transformers and Ray: hundreds of thousands of objects that the
    interpreter's shutdown would walk with its garbage collector once more, only to free memory the process is
    about to hand back (1.75 s after a one-trial search, against 0.37 s with the walk skipped).
    ``gc.freeze()`` leaves them out of it; atexit handlers (Ray's shutdown, temporary folders) still run.
    """
    import gc

    code = main()
    gc.freeze()
    sys.exit(code)


def _unexpected(exc: BaseException, debug: bool) -> int:
    if debug:
        raise exc
    from autotransfer.results import one_line

    print(f"autotransfer: {type(exc).__name__}: {one_line(exc)} (run with --debug for a traceback)", file=sys.stderr)
    return 1


if __name__ == "__main__":  # pragma: no cover
    run()
