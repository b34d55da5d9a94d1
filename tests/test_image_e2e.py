"""A real image search on local Ray with timm's tiny test models and all four strategies."""

from __future__ import annotations

import json

import pytest
import torch

import autotransfer
from autotransfer.results import COMPLETED, STOPPED

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def run(ray_session, shapes_dir, tiny_image_space, tmp_path_factory):
    return autotransfer.search(
        task="image-cls", data=shapes_dir, space=tiny_image_space, num_samples=6, max_epochs=4, evals_per_epoch=1,
        grace_period=1, reduction_factor=2, max_concurrent=2, seed=0, dashboard=False,
        # the engine's mechanics on images: epochs as given, no recipe trials (the text e2e covers those)
        min_steps=0, baseline=False, output=tmp_path_factory.mktemp("image-runs") / "shapes",
    )


def test_all_strategies_ran_and_asha_stopped_some(run):
    assert len(run.records) == 6
    assert {r.strategy for r in run.records} == {"linear_probe", "freeze", "full", "lora"}
    assert all(r.status in (COMPLETED, STOPPED) for r in run.records), [r.error for r in run.records]
    assert any(r.status == STOPPED for r in run.records)
    lora = [r for r in run.records if r.strategy == "lora"]
    assert all(r.trainable_params < r.total_params / 2 for r in lora)


def test_best_folder_loads_with_timm_and_predicts(run, shapes_dir):
    import timm
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    config = json.loads((run.best_dir / "config.json").read_text())
    assert config["num_classes"] == 2 and config["label_names"] == ["blue", "red"]
    model = timm.create_model(f"local-dir:{run.best_dir}", pretrained=True).eval()
    transform = create_transform(**resolve_data_config({}, model=model), is_training=False)
    x = torch.stack([transform(Image.open(p).convert("RGB")) for p in sorted((shapes_dir / "test" / "red").iterdir())[:4]])
    assert model(x).shape == (4, 2)


def test_the_exported_model_reproduces_the_winning_validation_score(run, shapes_dir):
    """Loaded as a user would (``autotransfer predict``: timm's own eval transform), the exported model scores on
    the validation images what the choice was made on: the best trial's score, or the soup's."""
    from pathlib import Path

    from autotransfer.predict import predict_rows

    soup = json.loads((run.output / "results.json").read_text()).get("soup") or {}
    winning = soup["validation_metric"] if soup.get("exported") else run.best.best_metric
    rows = list(predict_rows(run.best_dir, shapes_dir / "val"))
    accuracy = sum(r["prediction"] == Path(r["path"]).parent.name for r in rows) / len(rows)
    assert len(rows) == 24 and accuracy == pytest.approx(winning)
    json_test = json.loads((run.output / "test_metrics.json").read_text())
    assert json_test == run.test_metrics and run.test_metrics["accuracy"] > 0.5  # red vs blue: above chance


def test_predict_on_an_image_folder(run, shapes_dir):
    from autotransfer.predict import predict_rows

    rows = list(predict_rows(run.best_dir, shapes_dir / "test"))
    assert len(rows) == 24 and {r["prediction"] for r in rows} <= {"blue", "red"}
