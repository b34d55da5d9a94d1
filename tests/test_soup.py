"""The greedy model soup: what it averages, and that it keeps an ingredient only when validation improves."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autotransfer.soup import greedy_soup


def _model(value: float, features: int = 3) -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(features, 2), nn.BatchNorm1d(2))
    with torch.no_grad():
        for p in m.parameters():
            p.fill_(value)
        m[1].running_mean.fill_(value)
    m[1].num_batches_tracked.fill_(int(value * 10))  # an integer buffer: never averaged
    return m


def _weight(m: nn.Module) -> float:
    return float(m[0].weight.detach().mean())


def test_the_soup_is_the_mean_of_the_ingredients_it_kept():
    models = {"best": _model(1.0), "helps": _model(2.0), "hurts": _model(9.0), "helps-too": _model(0.6)}
    # validation prefers weights near 1.3: best (1.0) alone scores -0.3; with "helps" the mean is 1.5 (-0.2);
    # "hurts" would pull the mean to 4.0; with "helps-too" the mean is 1.2 (-0.1)
    soup = greedy_soup("best", ["helps", "hurts", "helps-too"], lambda t: models[t],
                       lambda m: -abs(_weight(m) - 1.3))
    assert soup.ingredients == ["best", "helps", "helps-too"] and soup.wins
    assert [t["kept"] for t in soup.tried] == [True, False, True]
    assert soup.best_single == pytest.approx(-0.3) and soup.validation_metric == pytest.approx(-0.1)
    expected = (1.0 + 2.0 + 0.6) / 3
    state = soup.model.state_dict()
    for name in ("0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean"):
        assert torch.allclose(state[name], torch.full_like(state[name], expected)), name
    assert int(state["1.num_batches_tracked"]) == 10  # the best trial's


def test_no_average_that_does_not_improve_validation_is_kept_and_the_best_trial_comes_back_unchanged():
    best = _model(1.0)
    before = {k: v.clone() for k, v in best.state_dict().items()}
    models = {"best": best, "a": _model(3.0), "b": _model(-2.0)}
    soup = greedy_soup("best", ["a", "b"], lambda t: models[t], lambda m: 0.5)  # a tie is no improvement
    assert soup.ingredients == ["best"] and not soup.wins
    assert [t["kept"] for t in soup.tried] == [False, False]
    assert all(torch.equal(before[k], v) for k, v in soup.model.state_dict().items())


def test_a_trial_with_other_tensors_is_not_an_ingredient():
    models = {"best": _model(1.0), "other-head": _model(2.0, features=5)}
    soup = greedy_soup("best", ["other-head"], lambda t: models[t], lambda m: _weight(m))
    assert soup.incompatible == ["other-head"] and soup.tried == [] and not soup.wins
