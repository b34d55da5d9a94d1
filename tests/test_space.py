"""Search spaces: the shipped YAML files load, bad files fail naming the key, conditional params work."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from autotransfer.errors import UserError
from autotransfer.space import load_space

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["text-cls.yaml", "text-cls-local.yaml"])
def test_shipped_spaces_are_valid(name):
    space = load_space(REPO / "search_spaces" / name)
    assert set(space.strategies) == {"linear_probe", "freeze", "full", "lora"}
    assert space.backbones


def test_local_space_resolves_paths_relative_to_the_file():
    space = load_space(REPO / "search_spaces" / "text-cls-local.yaml")
    assert all(Path(b).is_absolute() and b.endswith("MiniLM-L6-v2") or b.endswith("MiniLM-L3-v2")
               for b in space.backbones)


def _write(tmp_path, text):
    p = tmp_path / "space.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("text,needle", [
    ("backbones: [a]\nstrategies: {full: {lr: {distribution: normal, low: 1, high: 2}}}", "unknown distribution 'normal'"),
    ("backbones: [a]\nstrategies: {full: {lr: {distribution: loguniform, low: 1.0e-2, high: 1.0e-4}}}", "strategies.full.lr: low"),
    ("backbones: [a]\nstrategies: {full: {lora_r: [4, 8]}}", "strategies.full.lora_r: unknown parameter"),
    ("backbones: [a]\nstrategies: {magic: {}}", "strategies.magic: unknown strategy"),
    ("backbones: [a]\nstrategies: [full]\nparams: {epochs: 3}", "params.epochs: unknown parameter"),
    ("backbones: []\nstrategies: [full]", "'backbones' must be a non-empty list"),
    ("backbones: [a\nstrategies: [full]", "malformed YAML"),
    ("backbones: [a]\nstrategies: {full: {lr: {distribution: uniform, low: x, high: 1}}}", "'low' must be a number"),
    ("backbones: [a]\nstrategies: {lora: {lr: {distribution: loguniform, low: 0, high: 1}}}", "needs low > 0"),
    ("backbones: [a]\nstrategy: [full]", "unknown key 'strategy'"),
    ("backbones: [a]\nstrategies: [full]\nparams: {scheduler: [linear, step]}",
     "params.scheduler: unknown value 'step' (choose from linear, cosine, constant)"),
    ("backbones: [a]\nstrategies: [full]\nparams: {optimizer: adam}", "params.optimizer: unknown value 'adam'"),
    ("backbones: [a]\nstrategies: [full]\nparams: {batch_order: sorted}",
     "params.batch_order: unknown value 'sorted' (choose from random, length)"),
])
def test_bad_spaces_name_the_key(tmp_path, text, needle):
    with pytest.raises(UserError) as err:
        load_space(_write(tmp_path, text))
    assert needle in str(err.value)


def test_conditional_parameters_follow_the_strategy(tmp_path):
    space = load_space(_write(tmp_path, """
backbones: [a, b]
params: {batch_size: [16, 32]}
strategies:
  linear_probe: {C: {distribution: loguniform, low: 1.0e-2, high: 1.0e+2}}
  freeze: {freeze_depth: {distribution: int, low: 0, high: num_layers}}
  lora: {lora_r: [4, 8], lora_dropout: 0.1}
"""))
    define = space.define_by_run({"a": 2, "b": 6})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(60):
        trial = study.ask()
        constants = define(trial)
        params = {**trial.params, **constants}
        seen.add(params["strategy"])
        assert "batch_size" in params
        assert ("lora_r" in params) == (params["strategy"] == "lora")
        assert ("C" in params) == (params["strategy"] == "linear_probe")
        if params["strategy"] == "lora":
            assert params["lora_dropout"] == 0.1  # constants reach the config
        if params["strategy"] == "freeze":
            assert 0 <= params["freeze_depth"] <= {"a": 2, "b": 6}[params["backbone"]]
        study.tell(trial, 0.0)
    assert seen == {"linear_probe", "freeze", "lora"}


def test_restrict_and_warm_start(tmp_path):
    space = load_space(_write(tmp_path, "backbones: [a, b]\nstrategies: [linear_probe, full, lora]"))
    assert space.warm_start_points(10) == [
        {"strategy": "linear_probe", "backbone": "a"}, {"strategy": "full", "backbone": "b"},
        {"strategy": "lora", "backbone": "a"}]
    assert len(space.warm_start_points(2)) == 2


def test_warm_start_uses_recommended_values_inside_the_space(tmp_path):
    space = load_space(_write(tmp_path, """
backbones: [a]
params: {batch_size: [16, 32], weight_decay: {distribution: loguniform, low: 1.0e-4, high: 1.0e-3}}
strategies:
  full: {lr: {distribution: loguniform, low: 1.0e-5, high: 1.0e-4}, head_lr: {distribution: loguniform, low: 1.0e-4, high: 1.0e-2}}
  lora: {lr: {distribution: loguniform, low: 1.0e-3, high: 1.0e-2}, lora_r: [2, 4]}
  freeze: {freeze_depth: {distribution: int, low: 0, high: num_layers}}
"""))
    full, lora, freeze = space.warm_start_points(3)
    assert full == {"strategy": "full", "batch_size": 32, "weight_decay": 1e-3, "lr": 3e-5}  # head_lr: no default
    assert lora["lr"] == 1e-3 and "lora_r" not in lora  # default 5e-4 moved into range; r=8 not a choice
    assert "freeze_depth" not in freeze
    small = space.restrict(backbones=["c"], strategies=["lora"])
    assert small.backbones == ["c"] and list(small.strategies) == ["lora"]
    with pytest.raises(UserError, match="unknown strategy 'nope'"):
        space.restrict(strategies=["nope"])


def test_schedule_and_optimizer_are_searched_like_any_parameter(tmp_path):
    import optuna

    space = load_space(_write(tmp_path, """
backbones: [a]
params: {scheduler: [linear, cosine, constant], optimizer: [adamw, sgd]}
strategies: {full: {lr: {distribution: loguniform, low: 1.0e-5, high: 1.0e-4}}}
"""))
    (warm,) = space.warm_start_points(1)
    assert warm["scheduler"] == "linear" and warm["optimizer"] == "adamw"  # the recommended values first
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    fn = space.define_by_run({"a": 2})
    seen = set()
    for _ in range(30):
        trial = study.ask()
        fn(trial)
        seen.add((trial.params["scheduler"], trial.params["optimizer"]))
        study.tell(trial, 0.0)
    assert len(seen) == 6  # every combination proposed

