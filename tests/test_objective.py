"""The task owns its objective: the engine trains, scores and validates through ``Task.objective``."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import numpy as np
import pytest
import torch

import autotransfer.tasks as tasks
from autotransfer.errors import UserError
from autotransfer.metrics import _METRICS
from autotransfer.objective import SingleLabel
from autotransfer.settings import SearchSettings
from autotransfer.tasks import get_task, register_task, task_names


def test_single_label_offers_every_classification_metric_and_scores_them():
    objective = SingleLabel()
    assert set(objective.metrics) == set(_METRICS) and objective.default_metric == "accuracy"
    scores = objective.score(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0]))
    assert scores["accuracy"] == 0.75 and set(scores) == set(objective.metrics)
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    pred, true = objective.decode(logits, torch.tensor([0, 0]))
    assert pred.tolist() == [0, 1] and true.tolist() == [0, 0]
    assert float(objective.loss(logits, torch.tensor([0, 1]), reduction="sum")) == pytest.approx(
        float(torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1]), reduction="sum")))


class _Counting(SingleLabel):
    """A task's own objective: its own metric (share of class 0 predicted) and a loss that counts its calls."""

    metrics = ("accuracy", "zeros")
    default_metric = "zeros"
    calls = 0

    def loss(self, logits, labels, **kw):
        type(self).calls += 1
        return super().loss(logits, labels, **kw)

    def metric_function(self, name):
        return (lambda y, p: float(np.mean(p == 0))) if name == "zeros" else super().metric_function(name)


@pytest.fixture
def custom_task():
    from autotransfer.tasks.text_cls import TextClassification

    @register_task
    class Custom(TextClassification):
        name = "text-cls-custom-objective"
        objective = _Counting()

    yield Custom
    tasks._REGISTRY.pop(Custom.name)


def test_a_registered_task_brings_its_metrics_to_the_settings(custom_task, tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("text,label\na,0\n")
    assert custom_task.name in task_names()
    space = tmp_path / "space.yaml"
    space.write_text("task: text-cls-custom-objective\nbackbones: [x]\n")
    s = SearchSettings(task=custom_task.name, data=data, space=space, output=tmp_path / "out")
    assert s.metric == "zeros"  # the task's default, not text-cls's
    with pytest.raises(UserError, match="--metric: text-cls has no metric 'zeros'; choose one of accuracy"):
        SearchSettings(task="text-cls", data=data, metric="zeros", output=tmp_path / "out")


def test_the_training_loop_uses_the_tasks_loss_and_metrics(custom_task, text_ctx):
    import dataclasses

    from autotransfer.training import train

    ctx = dataclasses.replace(text_ctx, task=custom_task.name, metric="zeros", max_epochs=1, evals_per_epoch=1)
    reports = []
    _Counting.calls = 0
    train({"backbone": next(iter(ctx.backbones)), "strategy": "full", "lr": 1e-3, "batch_size": 16}, ctx,
          lambda metrics, checkpoint_dir: reports.append(metrics))
    assert _Counting.calls > 0  # the task's loss, not a built-in cross-entropy
    assert reports and all(0.0 <= r["zeros"] <= 1.0 for r in reports)  # the task's metric, reported to Ray


def test_an_installed_plugin_task_is_listed_and_imported_on_first_use(tmp_path, monkeypatch):
    (tmp_path / "my_plugin_task.py").write_text(
        "from autotransfer.tasks import register_task\n"
        "from autotransfer.tasks.text_cls import TextClassification\n"
        "@register_task\n"
        "class Plugin(TextClassification):\n"
        "    name = 'plugin-task'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    points = [EntryPoint(name="plugin-task", value="my_plugin_task", group=tasks.ENTRY_POINT_GROUP),
              EntryPoint(name="text-cls", value="my_plugin_task", group=tasks.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(tasks, "entry_points", lambda group: points if group == tasks.ENTRY_POINT_GROUP else [])
    try:
        assert "plugin-task" in task_names() and task_names().count("text-cls") == 1
        assert type(get_task("plugin-task")).__name__ == "Plugin"
        assert type(get_task("text-cls")).__name__ == "TextClassification"  # a plugin cannot shadow a built-in
    finally:
        tasks._REGISTRY.pop("plugin-task", None)


def test_a_plugin_spec_is_read_without_importing_its_implementation(tmp_path, monkeypatch):
    """``name = "module:SPEC"``: the door learns the plugin's metrics, options and reader from its TaskSpec alone;
    the implementation module loads only when a model is needed."""
    import sys

    (tmp_path / "light_plugin_spec.py").write_text(
        "from autotransfer.objective import SingleLabel\n"
        "from autotransfer.tasks import TaskOption, TaskSpec\n"
        "SPEC = TaskSpec('light-plugin', 'light_plugin_impl', SingleLabel(), 'autotransfer.tables:read_text_task',\n"
        "                (TaskOption('text_col', 'the text'), TaskOption('label_col', 'the label')))\n")
    (tmp_path / "light_plugin_impl.py").write_text(
        "from autotransfer.tasks import register_task\n"
        "from autotransfer.tasks.text_cls import TextClassification\n"
        "@register_task\n"
        "class LightPlugin(TextClassification):\n"
        "    name = 'light-plugin'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    points = [EntryPoint(name="light-plugin", value="light_plugin_spec:SPEC", group=tasks.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(tasks, "entry_points", lambda group: points if group == tasks.ENTRY_POINT_GROUP else [])
    data = tmp_path / "d.tsv"
    data.write_text("review\tstars\n" + "".join(f"words {i}\t{i % 2}\n" for i in range(40)))
    space = tmp_path / "space.yaml"
    space.write_text("backbones: [x]\n")
    try:
        settings = SearchSettings.build(task="light-plugin", data=data, space=space, output=tmp_path / "out",
                                        text_col="review", label_col="stars")
        splits = tasks.task_spec("light-plugin").load_data(settings)
        assert settings.metric == "accuracy" and len(splits.train) + len(splits.validation) + len(splits.test) == 40
        assert "light_plugin_impl" not in sys.modules
        with pytest.raises(UserError, match="--image-col: light-plugin has no such option"):
            SearchSettings.build(task="light-plugin", data=data, space=space, image_col="path")
        assert type(get_task("light-plugin")).__name__ == "LightPlugin"  # imported now, on first use
        assert get_task("light-plugin").objective is tasks.task_spec("light-plugin").objective
    finally:
        tasks._REGISTRY.pop("light-plugin", None)
        sys.modules.pop("light_plugin_impl", None)


class _Structured(SingleLabel):
    """Labels as a dict of tensors, as a token-classification task carries tags and sentence ids."""

    def loss(self, logits, labels, **kw):
        assert isinstance(labels, dict) and labels["y"].device == logits.device
        return super().loss(logits, labels["y"], **kw)

    def count(self, labels):
        return super().count(labels["y"])

    def decode(self, logits, labels):
        return super().decode(logits, labels["y"])


def test_a_task_may_carry_structured_labels_through_training_and_evaluation(text_ctx):
    import dataclasses

    from autotransfer.tasks.text_cls import TextClassification
    from autotransfer.training import train

    @register_task
    class Structured(TextClassification):
        name = "text-cls-structured-labels"
        objective = _Structured()

        def batches(self, *args, **kwargs):
            for inputs, labels in super().batches(*args, **kwargs):
                yield inputs, {"y": labels}

    try:
        ctx = dataclasses.replace(text_ctx, task=Structured.name, max_epochs=1, evals_per_epoch=1)
        reports = []
        train({"backbone": next(iter(ctx.backbones)), "strategy": "full", "lr": 1e-3, "batch_size": 16}, ctx,
              lambda metrics, checkpoint_dir: reports.append(metrics))
        assert reports and 0.0 <= reports[-1]["accuracy"] <= 1.0 and reports[-1]["samples_per_s"] > 0
    finally:
        tasks._REGISTRY.pop(Structured.name)
