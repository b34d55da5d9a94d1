"""Settings are validated once, with messages that name the option."""

from __future__ import annotations

import optuna
import pytest
import torch

from autotransfer.errors import UserError
from autotransfer.cluster import Cluster, concurrency
from autotransfer.runner import make_sampler
from autotransfer.settings import SearchSettings
from autotransfer.training import autocast_dtype


def _settings(tmp_path, **kw):
    data = tmp_path / "d.csv"
    data.write_text("text,label\na,0\n")
    return SearchSettings(task="text-cls", data=data, output=tmp_path / "out", **kw)


@pytest.mark.parametrize("kw,needle", [
    ({"num_samples": 0}, "--num-samples"),
    ({"max_epochs": -1}, "--max-epochs"),
    ({"grace_period": 5, "max_epochs": 3}, "--grace-period"),
    ({"reduction_factor": 1}, "--reduction-factor"),
    ({"metric": "auc"}, "--metric"),
    ({"sampler": "cmaes"}, "--sampler"),
    ({"cpus_per_trial": 0}, "--cpus-per-trial"),
    ({"gpus_per_trial": 1.5}, "--gpus-per-trial"),
    ({"val_frac": 0.5, "test_frac": 0.45}, "--val-frac"),
    ({"time_budget_s": 0}, "--time-budget"),
    ({"min_steps": -1}, "--min-steps"),
    ({"min_steps": 2.5}, "--min-steps"),
    ({"test_frac": 0.7}, "--val-frac"),  # with the automatic validation share (up to 25%) too little is left
])
def test_invalid_settings_name_the_option(tmp_path, kw, needle):
    with pytest.raises(UserError, match=needle):
        _settings(tmp_path, **kw)


def test_derived_values(tmp_path):
    s = _settings(tmp_path, max_epochs=4, evals_per_epoch=3, grace_period=0.5, cpus_per_trial=2.5,
                  backbones="a, b,")
    assert s.max_iterations == 12 and s.grace_iterations == 2 and s.torch_threads == 2
    assert s.backbones == ["a", "b"]
    assert s.output.is_absolute() and s.data.is_absolute()
    assert SearchSettings.from_dict(s.to_dict()) == s


def test_concurrency_follows_resources(tmp_path):
    cluster = Cluster(address=None, dashboard_url=None, cpus=8, gpus=1)
    assert concurrency(_settings(tmp_path, num_samples=20, cpus_per_trial=2), cluster) == 4
    assert concurrency(_settings(tmp_path, num_samples=20, cpus_per_trial=1, gpus_per_trial=0.25), cluster) == 4
    assert concurrency(_settings(tmp_path, num_samples=20, max_concurrent=3), cluster) == 3
    assert concurrency(_settings(tmp_path, num_samples=2), cluster) == 2
    with pytest.raises(UserError, match="GPUs"):
        concurrency(_settings(tmp_path, gpus_per_trial=2), cluster)


@pytest.mark.parametrize("name,cls", [("tpe", optuna.samplers.TPESampler), ("random", optuna.samplers.RandomSampler),
                                      ("gp", optuna.samplers.GPSampler), ("qmc", optuna.samplers.QMCSampler)])
def test_samplers(name, cls):
    assert isinstance(make_sampler(name, 0, 10), cls)


def test_precision_choice_per_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype("auto", cpu) is None  # fp32 on CPU
    assert autocast_dtype("fp32", cuda) is None
    assert autocast_dtype("bf16", cpu) is torch.bfloat16
    assert autocast_dtype("fp16", cuda) is torch.float16
    assert autocast_dtype("fp16", cpu) is torch.bfloat16  # CPU autocast has no fp16


def test_task_options_sit_beside_the_fields_in_the_api_and_old_runs_keep_their_columns(tmp_path):
    data = tmp_path / "d.tsv"
    data.write_text("review\tstars\nok\t1\n")
    s = SearchSettings.build(task="text-cls", data=data, output=tmp_path / "out", text_col="review",
                             label_col="stars", num_samples=3)
    assert s.options == {"text_col": "review", "label_col": "stars"} and s.num_samples == 3
    assert SearchSettings.from_dict(s.to_dict()).options == s.options
    # settings.json of a run saved before task options existed: the columns were fields
    legacy = {**{k: v for k, v in s.to_dict().items() if k != "options"}, "text_col": "review", "image_col": None}
    assert SearchSettings.from_dict(legacy).options == {"text_col": "review"}
    with pytest.raises(UserError, match="--label-col: give a column name"):
        SearchSettings.build(task="text-cls", data=data, output=tmp_path / "out", label_col="  ")
    with pytest.raises(UserError, match="--text-col: token-cls has no such option \\(it is text-cls's\\)"):
        SearchSettings.build(task="token-cls", data=data, output=tmp_path / "out", text_col="review")

