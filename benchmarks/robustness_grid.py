"""The robustness grid so far: every case ``robustness.py`` measured, its latest run, and the totals.

``robustness.py`` writes one JSON per run (a run takes 15-80 minutes a case on 2 CPU cores, so the grid
of issue #13 was measured over many runs and commits). This script reads them all, keeps the run of
each case on the newest commit (git history order; a case measured with ``--refit`` counts with its
selected trial's own test score, which that run records beside the refit model's: the model the default
search exports), and prints the table the README quotes:
per case the search's and the recipe's test accuracy, the difference against the test set's 95%
interval, the verdict, and the commit it was measured on; then the win / tie / loss counts, the mean
difference, and which cases of the issue's grid (SST-2, SUBJ, SST-5 x 300 / 1,000 / 3,000 rows x
seeds 0-2; ants vs bees x seeds 0-2) are still missing.

Cases run with ``robustness.py --score-trials`` hold every finished trial's test score; for them the
script also compares selection rules on the same trials (paired: the same test rows): the search's rule
(the best validation score), the protected recipe trial when the validation set cannot tell it from the
leader (a prior for the standard recipe), a random pick among the trials tied with the leader (their mean),
and the best trial on test (an oracle, the ceiling no rule can pass). Nothing is re-measured or hand-entered here:
it is a view of the committed JSON, written with its own provenance.

    python benchmarks/robustness_grid.py                # prints the table, writes robustness_grid.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import provenance  # noqa: E402

HERE = Path(__file__).resolve().parent
#: the grid issue #13 asks for: the text sets at three sizes, the image set whole, three seeds each
GRID = [f"{d}:{n}:{s}" for d in ("sst2", "subj", "sst5") for n in (300, 1000, 3000) for s in (0, 1, 2)] + [
    f"hymenoptera:all:{s}" for s in (0, 1, 2)]


def normal(spec: str) -> str:
    """``sst2:300`` and ``sst2:300:0`` name the same case (the seed defaults to 0)."""
    parts = spec.split(":")
    return ":".join(parts if len(parts) == 3 else [*parts, "0"])


def commit_depth(commit: str) -> int:
    """How far along the history a commit is (its ancestor count): newer measurements win; -1 if unknown."""
    out = subprocess.run(["git", "rev-list", "--count", commit], cwd=HERE, capture_output=True, text=True)
    return int(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else -1


def collect(files: list[Path]) -> tuple[dict[str, dict], list[dict]]:
    """The newest run of every case (by commit, then by file date), and every run seen."""
    seen: list[dict] = []
    for f in files:
        d = json.loads(f.read_text())
        if d.get("benchmark") != "robustness":
            continue
        for c in d["cases"]:
            commit = c.get("git", {}).get("commit") or d.get("git", {}).get("commit", "")
            seen.append({"case": normal(c["case"]), "file": f.name, "commit": commit[:7],
                         "order": (commit_depth(commit), d.get("date", "")), "raw": c})
    latest: dict[str, dict] = {}
    for r in seen:
        if r["case"] not in latest or r["order"] > latest[r["case"]]["order"]:
            latest[r["case"]] = r
    return latest, seen


def row(r: dict) -> dict:
    c = r["raw"]
    best = c["search"]["best"]
    recipe = max(x["test_accuracy"] for x in c["recipe"]["runs"])
    half = c["test_interval_half_width"]
    refit = c["search"].get("refit")
    # a --refit run exported the refit model; the default search exports the selected trial's own
    search = refit["selected_trial_test_accuracy"] if refit else c["search"]["test_accuracy"]
    diff = search - recipe
    verdict = "win" if diff > half else ("loss" if diff < -half else "tie")
    return {"case": r["case"], "search_test": search, "recipe_test": recipe, "difference": diff,
            "interval_half_width": half, "verdict": verdict, "winner": f"{best['strategy']} on {best['backbone']}",
            "search_wall_s": round(c["search"]["wall_s"]), "commit": r["commit"], "file": r["file"],
            "from_refit_run": bool(refit), "selection": selection_rules(c["search"].get("trials_scored") or [])}


def selection_rules(scored: list[dict]) -> dict | None:
    """Test accuracy each selection rule would have exported from one search's scored trials."""
    if not scored:
        return None
    leader = min(scored, key=lambda t: t["rank"] if t["rank"] is not None else 1 << 30)
    tied = [t for t in scored if t["tied_with_best"]] or [leader]
    recipes = [t for t in tied if t["recipe"]]
    prefer = max(recipes, key=lambda t: t["validation_accuracy"]) if recipes else leader
    return {"best_validation": leader["test_accuracy"], "recipe_when_tied": prefer["test_accuracy"],
            "random_tied": sum(t["test_accuracy"] for t in tied) / len(tied),
            "oracle": max(t["test_accuracy"] for t in scored), "trials": len(scored), "tied": len(tied),
            "recipe_chosen_instead": prefer is not leader}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=HERE / "robustness_grid.json")
    args = ap.parse_args()
    files = sorted(p for p in HERE.glob("robustness*.json") if p.resolve() != args.out.resolve())
    latest, seen = collect(files)
    rows = [row(latest[k]) for k in sorted(latest, key=lambda k: (GRID.index(k) if k in GRID else len(GRID), k))]
    counts = {v: sum(r["verdict"] == v for r in rows) for v in ("win", "tie", "loss")}
    mean = sum(r["difference"] for r in rows) / max(1, len(rows))
    missing = [k for k in GRID if k not in latest]
    print("| case | search | recipe | difference | verdict | winner | search wall | commit |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['search_test']:.3f} | {r['recipe_test']:.3f} | "
              f"{100 * r['difference']:+.1f} +-{100 * r['interval_half_width']:.1f} | {r['verdict']} | "
              f"{r['winner']} | {r['search_wall_s']} s | {r['commit']} |")
    print(f"\n{counts['win']} wins, {counts['tie']} ties, {counts['loss']} losses over {len(rows)} cases; "
          f"mean difference {100 * mean:+.1f} points; {len(GRID) - len(missing)} of the {len(GRID)} grid cases "
          f"measured; missing: {', '.join(missing) or 'none'}")
    rules = [r["selection"] for r in rows if r["selection"]]
    selection = None
    if rules:
        names = ("best_validation", "recipe_when_tied", "random_tied", "oracle")
        selection = {"cases": len(rules), **{n: sum(x[n] for x in rules) / len(rules) for n in names},
                     "recipe_chosen_instead": sum(x["recipe_chosen_instead"] for x in rules)}
        print(f"\nselection rules on the same trials ({len(rules)} cases with every trial scored on test), mean "
              "test accuracy: " + ", ".join(f"{n} {selection[n]:.4f}" for n in names)
              + f"; the recipe rule chose another trial than the leader in {selection['recipe_chosen_instead']}")
        for r in rows:
            if r["selection"]:
                x = r["selection"]
                print(f"  {r['case']}: " + ", ".join(f"{n} {x[n]:.3f}" for n in names)
                      + f" ({x['tied']} of {x['trials']} trials tied with the leader)")
    out = {"benchmark": "robustness_grid", **provenance(()), "sources": [f.name for f in files],
           "runs_seen": len(seen), "cases": rows,
           "summary": {**counts, "cases": len(rows), "mean_difference": mean, "grid": len(GRID),
                       "missing": missing, "selection": selection}}
    args.out.write_text(json.dumps(out, indent=2))
    print("->", args.out)


if __name__ == "__main__":
    main()
