"""Benchmark: what the backbone pre-rank should score for a text encoder -- the classifier's input (the pooler
output a BERT-style head reads) or the token states averaged over the real tokens.

For each case (a shared data set, a training size, a seed; the rows ``robustness.py`` samples for the same case,
and the search's own validation carve) and each shared MiniLM encoder, the frozen features are taken by the
search's own code path (:func:`autotransfer.training.head_features`, eval mode, the search's seed), both kinds in
one forward pass, and scored by the pre-rank's LogME and k-NN accuracy (:mod:`autotransfer.prerank`).  Beside
them, a scikit-learn ``LogisticRegression`` fitted on each kind is scored on the carved validation rows and on
the case's test rows: what a linear probe on that kind of feature can reach.

The reference a pre-rank must predict is the fine-tuned ranking of the backbones: each backbone's protected
recipe trial (full fine-tuning, lr 2e-5, at the step floor) from the search that ``robustness.py`` ran on the
same case, read from the committed ``robustness*.json`` files (the file and commit are recorded).  A score
"agrees" on a case when its top backbone is the one whose fine-tuned validation accuracy was higher.  Cases
without a robustness run record the scores only.

    python benchmarks/prerank.py                          # the robustness cases and the 1,000-row grid, ~10 min
    python benchmarks/prerank.py --cases sst2:300,subj:1000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import provenance  # noqa: E402
from robustness import make_case, parse_case  # noqa: E402
from text_cls import BACKBONES  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_CASES = ("sst2:300,sst2:300:1,subj:300,subj:300:1,subj:300:2,sst5:300,sst2:1000,sst2:3000,"
                 "subj:1000,sst5:1000")
KINDS = ("classifier_input", "averaged_tokens")


def fine_tuned_reference() -> dict[str, dict]:
    """case -> {backbone: the protected recipe trial's validation accuracy, "file", "commit"} from robustness*.json."""
    found: dict[str, dict] = {}
    for path in sorted(HERE.glob("robustness*.json")):
        for case in json.loads(path.read_text())["cases"]:
            trials = case["search"].get("recipe_trials") or []
            if not trials or case["data"] == "hymenoptera":
                continue
            key = case["case"] if case["case"].count(":") == 2 else f"{case['case']}:0"
            found[key] = {**{t["backbone"]: t["validation_accuracy"] for t in trials},
                          "file": path.name, "commit": case["git"]["commit"]}
    return found


def features_of(backbone: Path, search_data: Path, seed: int) -> dict:
    """Both kinds of frozen features over train / validation / test, by the search's own path."""
    import torch

    from autotransfer.tables import load_text_splits
    from autotransfer.tasks import get_task
    from autotransfer.training import build_trial_model, head_features

    class Settings:
        trust_remote_code, max_length = False, None

    task = get_task("text-cls")
    splits = load_text_splits(search_data, seed=seed)  # the search's default validation carve at this seed
    info = task.describe_backbone(str(backbone), Settings())
    prepared, _ = task.prepare([info], splits, Settings())
    torch.manual_seed(seed)  # as the search builds the model for its features (a missing pooler drawn alike)
    _, adapted = build_trial_model(task, info, splits.label_names, {"backbone": info.name,
                                                                    "strategy": "linear_probe"})
    out: dict = {"label_names": splits.label_names}
    start = time.perf_counter()
    for split in ("train", "validation", "test"):
        ranking: list[np.ndarray] = []
        x, y = head_features(adapted.model, adapted.classifier, task, prepared[info.name], split, 64,
                             torch.device("cpu"), None, ranking=ranking)
        out[split] = {"classifier_input": x, "averaged_tokens": ranking[0], "y": y}
    out["seconds"] = time.perf_counter() - start
    return out


def score(feats: dict, seed: int) -> dict:
    from sklearn.linear_model import LogisticRegression

    from autotransfer.prerank import score_backbones

    result = {}
    for kind in KINDS:
        x, y = feats["train"][kind], feats["train"]["y"]
        s = score_backbones({"b": (x, y)}, seed=seed)["b"]
        lr = LogisticRegression(max_iter=5000).fit(x, y)
        result[kind] = {"logme": s.logme, "knn_accuracy": s.knn_accuracy,
                        "probe_validation": float(lr.score(feats["validation"][kind], feats["validation"]["y"])),
                        "probe_test": float(lr.score(feats["test"][kind], feats["test"]["y"]))}
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=DEFAULT_CASES, help="comma-separated data:rows[:seed] (sst2, subj, sst5)")
    ap.add_argument("--test-rows", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    args = ap.parse_args()
    import torch
    import transformers

    transformers.utils.logging.set_verbosity_error()
    torch.set_num_threads(2)
    reference = fine_tuned_reference()
    tmp = Path(tempfile.mkdtemp(prefix="autotransfer-prerank-"))
    cases = []
    for spec in args.cases.split(","):
        source, rows, seed = parse_case(spec)
        key = f"{source}:{rows}:{seed}"
        search_data, _ = make_case(tmp / key.replace(":", "-"), source, int(rows), args.test_rows, seed)
        per_backbone = {}
        for backbone in BACKBONES:
            feats = features_of(backbone, search_data, seed)
            per_backbone[backbone.name] = {**score(feats, seed), "features_seconds": feats["seconds"],
                                           "train_rows": int(len(feats["train"]["y"])),
                                           "validation_rows": int(len(feats["validation"]["y"]))}
        ref = reference.get(key)
        case = {"case": key, "data": source, "rows": int(rows), "seed": seed, "backbones": per_backbone,
                "fine_tuned": ref}
        if ref is not None:
            names = list(per_backbone)
            tuned = [ref.get(n) for n in names]
            if None not in tuned and tuned[0] != tuned[1]:
                best = names[int(np.argmax(tuned))]
                case["agrees"] = {f"{kind}/{s}": max(names, key=lambda n: per_backbone[n][kind][s]) == best
                                  for kind in KINDS for s in ("logme", "knn_accuracy")}
        cases.append(case)
        line = "; ".join(f"{n}: LogME {v['classifier_input']['logme']:.3f} -> {v['averaged_tokens']['logme']:.3f}, "
                         f"probe test {v['classifier_input']['probe_test']:.3f} -> "
                         f"{v['averaged_tokens']['probe_test']:.3f}" for n, v in per_backbone.items())
        print(f"{key}: {line}; agrees {case.get('agrees')}", flush=True)
        write(args.out, cases)


def write(path: Path, cases: list[dict]) -> None:
    judged = [c for c in cases if "agrees" in c]
    gains = [v["averaged_tokens"]["probe_test"] - v["classifier_input"]["probe_test"]
             for c in cases for v in c["backbones"].values()]
    best_gain = [max(v["averaged_tokens"]["probe_test"] for v in c["backbones"].values())
                 - max(v["classifier_input"]["probe_test"] for v in c["backbones"].values()) for c in cases]
    summary = {"cases": len(cases), "cases_with_fine_tuned_reference": len(judged),
               "top_backbone_agrees": {k: sum(c["agrees"][k] for c in judged) for k in (judged[0]["agrees"] if judged else {})},
               "probe_test_gain_averaged_over_classifier_input": {
                   "per_backbone_mean": float(np.mean(gains)), "per_backbone_min": float(np.min(gains)),
                   "better": int(sum(g > 0 for g in gains)), "of": len(gains),
                   "best_backbone_mean": float(np.mean(best_gain)), "best_backbone_min": float(np.min(best_gain))}}
    out = {"benchmark": "prerank", **provenance(("torch", "transformers", "scikit-learn")), "cases": cases,
           "summary": summary}
    path.write_text(json.dumps(out, indent=2, default=str))
    print(json.dumps(summary), "->", path, flush=True)


if __name__ == "__main__":
    main()
