"""The linear probe is a converged logistic regression on the frozen features (issue: never worse than the recipe)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autotransfer.strategies import get_strategy
from conftest import SHARED
from autotransfer.training import train


@pytest.mark.parametrize("classes", [2, 3])
def test_fitted_layer_computes_scikit_learns_probabilities(classes):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(classes)
    y = rng.integers(0, classes, 300)
    X = rng.normal(size=(300, 12)) * rng.uniform(0.1, 50, size=12) + y[:, None] * rng.normal(size=12)
    weight, bias = get_strategy("linear_probe").fit_head(X, y, classes, {"C": 0.5})
    probs = torch.softmax(torch.as_tensor(X @ weight.T + bias), -1).numpy()
    reference = LogisticRegression(C=0.5, max_iter=1000).fit(X, y)
    assert weight.shape == (classes, 12)
    np.testing.assert_allclose(probs, reference.predict_proba(X), atol=1e-6)


def _pooled_features(model_dir, texts):
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    with torch.inference_mode():
        return model(**tok(texts, padding=True, return_tensors="pt")).pooler_output.numpy()


MINILM = SHARED / "models" / "text" / "all-MiniLM-L6-v2"
SST2 = SHARED / "data" / "sst2"


@pytest.mark.skipif(not (MINILM.is_dir() and SST2.is_dir()), reason="needs ../shared (MiniLM-L6, SST-2)")
def test_linear_probe_trial_reaches_a_logistic_regression_on_the_pooled_features(tmp_path):
    """A real encoder; the reference's features are taken by another path (the pooler output, no hooks)."""
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    from autotransfer.tables import load_text_splits
    from autotransfer.tasks import get_task
    from autotransfer.training import TrialContext

    train_rows = pd.read_csv(SST2 / "train.tsv", sep="\t").sample(400, random_state=0)
    dev_rows = pd.read_csv(SST2 / "dev.tsv", sep="\t").sample(200, random_state=0)
    train_rows.to_csv(tmp_path / "train.tsv", sep="\t", index=False)
    dev_rows.to_csv(tmp_path / "dev.tsv", sep="\t", index=False)
    dev_rows.to_csv(tmp_path / "test.tsv", sep="\t", index=False)

    class Settings:
        trust_remote_code, max_length = False, None

    task = get_task("text-cls")
    splits = load_text_splits(tmp_path)
    info = task.describe_backbone(str(MINILM), Settings())
    prepared, _ = task.prepare([info], splits, Settings())
    ctx = TrialContext(task="text-cls", backbones={info.name: info}, prepared=prepared,
                       label_names=splits.label_names, threads=2)
    reports = []
    last = train({"backbone": info.name, "strategy": "linear_probe", "C": 1.0, "batch_size": 32}, ctx,
                 lambda m, c: reports.append(m))
    assert len(reports) == 1 and last["trial_finished"] and last["epoch"] == 1.0  # one pass, one fit

    lr = LogisticRegression(max_iter=5000).fit(_pooled_features(MINILM, splits.train.inputs), splits.train.labels)
    reference = lr.score(_pooled_features(MINILM, splits.validation.inputs), splits.validation.labels)
    assert reference > 0.6  # the pooled features carry sentiment (majority rate ~0.5)
    # within noise of the converged reference (200 sentences: one standard error is ~0.03)
    assert last["accuracy"] >= reference - 0.03, (last["accuracy"], reference)


def test_image_linear_probe_matches_logistic_regression_on_timm_pooled_features(shapes_dir, tiny_resnet):
    from sklearn.linear_model import LogisticRegression

    from autotransfer.images import load_image_splits
    from autotransfer.tasks import get_task
    from autotransfer.training import TrialContext

    class Settings:
        data, cpus_per_trial = shapes_dir, 1

    task = get_task("image-cls")
    splits = load_image_splits(shapes_dir)
    info = task.describe_backbone(f"local-dir:{tiny_resnet}", Settings())
    prepared, _ = task.prepare([info], splits, Settings())
    ctx = TrialContext(task="image-cls", backbones={info.name: info}, prepared=prepared,
                       label_names=splits.label_names)
    last = train({"backbone": info.name, "strategy": "linear_probe", "C": 1.0, "batch_size": 16}, ctx,
                 lambda m, c: None)

    import timm

    model = timm.create_model(info.source, pretrained=True, num_classes=0).eval()  # pooled features
    data = prepared[info.name]

    def features(split):
        xs, ys = [], []
        with torch.inference_mode():
            for inputs, y in task.batches(data, split, 32, train=False):
                xs.append(model(inputs["x"]).numpy())
                ys.append(y.numpy())
        return np.concatenate(xs), np.concatenate(ys)

    reference = LogisticRegression(max_iter=5000).fit(*features("train")).score(*features("validation"))
    assert last["accuracy"] >= reference - 0.08, (last["accuracy"], reference)  # 24 images: one SE is ~0.1
