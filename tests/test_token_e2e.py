"""A real token-classification search on local Ray: the tagger it exports reproduces its validation score."""

from __future__ import annotations

import json

import pytest

import autotransfer
from autotransfer.entities import entity_scores
from autotransfer.predict import predict_rows
from autotransfer.results import COMPLETED, STOPPED

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def run(ray_session, ner_dir, tiny_token_space, tmp_path_factory):
    return autotransfer.search(task="token-cls", data=ner_dir, space=tiny_token_space, num_samples=4, max_epochs=2,
                               evals_per_epoch=1, max_concurrent=2, seed=0, dashboard=False, min_steps=0,
                               output=tmp_path_factory.mktemp("runs") / "ner")


def test_every_strategy_ran_and_the_ranking_is_on_entity_f1(run):
    assert {r.strategy for r in run.records} == {"linear_probe", "full", "lora"}
    assert all(r.status in (COMPLETED, STOPPED) for r in run.records), [r.error for r in run.records]
    scores = [r.best_metric for r in run.records]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0.5
    meta = json.loads((run.output / "results.json").read_text())
    assert meta["metric"] == "entity_f1" and meta["data"]["label_names"][0] == "O"
    assert set(meta["test"]["per_entity_type"]) == {"LOC", "PER"}
    assert run.best.interval is not None  # sentences resampled for the validation interval
    assert "per entity type" in (run.output / "leaderboard.html").read_text()


def test_the_exported_tagger_reproduces_the_winning_validation_score(run, ner_dir):
    """The exported model is the best trial's, or the model soup when it beat that trial on validation."""
    rows = list(predict_rows(run.best_dir, ner_dir / "dev.tsv"))
    predicted = [row["tags"].split() for row in rows]
    gold = [[line.split("\t")[1] for line in block.splitlines()]
            for block in (ner_dir / "dev.tsv").read_text().strip().split("\n\n")]
    soup = json.loads((run.output / "results.json").read_text()).get("soup") or {}
    winning = soup["validation_metric"] if soup.get("exported") else run.best.best_metric
    assert soup.get("exported") or soup.get("validation_metric", winning) == winning  # a losing soup: the trial's
    assert entity_scores(gold, predicted)["entity_f1"] == pytest.approx(winning, abs=1e-9)
    sidecar = json.loads((run.best_dir / "autotransfer.json").read_text())
    assert sidecar["validation_metric"] == pytest.approx(winning) and ("soup" in sidecar) == bool(soup.get("exported"))


def test_the_exported_folder_is_a_transformers_tagger(run, ner_dir, tmp_path):
    from transformers import pipeline

    tagger = pipeline("token-classification", model=str(run.best_dir), aggregation_strategy="simple", device=-1)
    found = tagger("anna berg visited new york yesterday")
    assert {e["entity_group"] for e in found} <= {"PER", "LOC"} and found
    table = tmp_path / "new.csv"
    table.write_text("text\nmaria lopez left paris again\n")
    [row] = predict_rows(run.best_dir, table)
    rows = list(predict_rows(run.best_dir, ner_dir / "test.tsv"))
    entities = json.loads(row["entities"])
    assert any(e["type"] == "PER" and e["text"] == "maria lopez" for e in entities), entities
    first = rows[0]
    found = json.loads(first["entities"])
    assert all(" ".join(first["text"].split()[e["start"]:e["end"]]) == e["text"] for e in found)
    assert [e["type"] for e in found] == [t[2:] for t in first["tags"].split() if t.startswith("B-")]
