"""Budgets in optimizer steps: small data gets longer rounds, large data the epochs it asked for."""

from __future__ import annotations

import pytest

from autotransfer.budget import derive_budget
from autotransfer.data import Split, auto_val_frac, split_missing


@pytest.mark.parametrize("rows", [240, 1080, 3000])
def test_small_data_trains_at_least_min_steps_and_is_judged_after_a_third(rows):
    b = derive_budget(rows, max_batch_size=32, max_epochs=3, evals_per_epoch=2, grace_rounds=2, min_steps=300)
    assert b.rounds == 6 and b.stretched
    assert b.steps(32) >= 300 and b.steps(32) < 300 + 6  # the floor, rounded up to whole rounds
    assert b.steps(32, b.grace_rounds) >= 100  # ASHA never judges a trial before 100 steps
    assert b.steps(16) == 2 * b.steps(32)  # same examples per round at every batch size
    assert b.eval_steps(32) == sorted(set(b.eval_steps(32))) and b.eval_steps(32)[-1] == b.steps(32)


def test_large_data_keeps_the_epochs_it_asked_for():
    b = derive_budget(60_000, max_batch_size=32, max_epochs=3, evals_per_epoch=2, grace_rounds=2, min_steps=300)
    assert not b.stretched and b.epochs == pytest.approx(3.0) and b.steps(32) == 5625
    assert "stretched" not in b.describe()


def test_the_floor_can_be_turned_off():
    b = derive_budget(240, max_batch_size=32, max_epochs=3, evals_per_epoch=2, grace_rounds=2, min_steps=0)
    assert not b.stretched and b.epochs == pytest.approx(3.0)


def test_validation_gets_300_examples_when_the_data_allow_but_at_most_a_quarter():
    assert auto_val_frac(600) == 0.25  # 150 rows: the cap
    assert auto_val_frac(1200) == 0.25  # 300 rows
    assert auto_val_frac(2000) == pytest.approx(0.15)  # 300 rows
    assert auto_val_frac(10_000) == 0.1  # the usual tenth already holds 1,000
    import numpy as np

    labels = np.array([0, 1] * 600)
    splits = split_missing({"train": Split(list(range(1200)), labels)}, None, 0.1, 0, "data.csv")
    assert len(splits["validation"]) == 300 and len(splits["test"]) == 120 and len(splits["train"]) == 780
