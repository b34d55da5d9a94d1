"""One end-to-end run on a real pretrained backbone from ../shared/models (skipped if absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

import autotransfer

REPO = Path(__file__).resolve().parent.parent
MINILM = REPO.parent / "shared" / "models" / "text" / "paraphrase-MiniLM-L3-v2"

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not MINILM.is_dir(), reason="../shared/models not present")]


def test_real_minilm_beats_chance_on_the_shipped_example(ray_session, tmp_path):
    result = autotransfer.search(
        task="text-cls", data=REPO / "examples" / "sst2-mini", space=REPO / "search_spaces" / "text-cls-local.yaml",
        backbones=[str(MINILM)], strategies=["linear_probe", "lora"], num_samples=2, max_epochs=1,
        dashboard=False, output=tmp_path / "run",
        # the real backbone's path is under test here, not the small-data budget: no protected full fine-tuning
        # recipe trial and a lower step floor keep this one test from taking a quarter of the suite
        baseline=False, min_steps=100,
    )
    assert {r.strategy for r in result.records} == {"linear_probe", "lora"}
    assert result.best.backbone == str(MINILM)
    # the quality floor: pretrained features carry sentiment, so the model beats always answering the test split's
    # most common label by a clear margin (15 points: ~5 standard errors on its 300 rows)
    labels = [line.rsplit("\t", 1)[1] for line in (REPO / "examples" / "sst2-mini" / "test.tsv").read_text().splitlines()[1:]]
    majority = max(labels.count(v) for v in set(labels)) / len(labels)
    assert result.test_metrics["accuracy"] > majority + 0.15, (result.test_metrics, majority)
