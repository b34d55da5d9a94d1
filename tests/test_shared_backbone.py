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
    # pretrained features carry sentiment: well above the 0.5 of a balanced coin
    assert result.test_metrics["accuracy"] > 0.65
