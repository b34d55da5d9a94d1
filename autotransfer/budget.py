"""A trial's training budget in optimizer steps, derived once per search from the data size.

ASHA judges trials at evaluation rounds (its ``training_iteration``): a full trial
has ``max_epochs x evals_per_epoch`` rounds, and ASHA may stop one from round
``grace_period x evals_per_epoch`` on.  On large data a round is a fraction of
an epoch, as before.  On small data an epoch is a handful of optimizer steps
(300 rows at batch 32: 8 steps), so a round is stretched until a full trial
trains at least ``min_steps`` optimizer steps at the space's largest batch size:
every trial then gets the same number of examples per round (rounds are
comparable across batch sizes), a trial is never judged before a third of
``min_steps`` (the default grace of 2 of 6 rounds), and the budget grows with
the data only once an epoch holds enough steps.

Why a floor in steps: few-sample fine-tuning is unstable mostly because it
runs too few optimizer steps (Mosbach et al., ICLR 2021; Zhang et al., ICLR
2021, who both recommend training small data sets for many more epochs than
the usual 3).  300 steps at batch 32 is about 10,000 examples seen, e.g. 3
epochs of 3,200 rows; above that size the floor does not bind.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

#: a full trial trains at least this many optimizer steps (at the space's largest batch size)
DEFAULT_MIN_STEPS = 300


@dataclass(frozen=True)
class Budget:
    """How long trials train and when they are evaluated, for one search."""

    train_examples: int
    #: the largest batch size the space can pick (the fewest steps per epoch)
    max_batch_size: int
    #: evaluation rounds of a full trial (ASHA's ``max_t``)
    rounds: int
    #: rounds before ASHA may stop a trial (its grace period)
    grace_rounds: int
    #: training examples between two evaluations (the same for every batch size)
    examples_per_round: int
    min_steps: int
    #: whether the step floor made rounds longer than ``1 / evals_per_epoch`` of an epoch
    stretched: bool = False

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch at the largest batch size."""
        return max(1, math.ceil(self.train_examples / self.max_batch_size))

    @property
    def epochs(self) -> float:
        """Epochs of a full trial."""
        return self.rounds * self.examples_per_round / max(1, self.train_examples)

    def steps(self, batch_size: int, rounds: float | None = None) -> int:
        """Optimizer steps of ``rounds`` rounds (default: a full trial) at ``batch_size``."""
        n = self.rounds if rounds is None else rounds
        return max(1, math.ceil(n * self.examples_per_round / batch_size))

    def eval_steps(self, batch_size: int) -> list[int]:
        """The steps after which a trial at ``batch_size`` is evaluated, one per round."""
        return [self.steps(batch_size, k) for k in range(1, self.rounds + 1)]

    def describe(self) -> str:
        """One line for the run header."""
        b = self.max_batch_size
        return (f"budget: {self.rounds} evaluation rounds of {self.steps(b, 1)} steps at batch {b} "
                f"= {self.steps(b)} steps ({self.epochs:.3g} epochs) per full trial; ASHA may stop a trial after "
                f"round {self.grace_rounds} ({self.steps(b, self.grace_rounds)} steps)"
                + (f"; rounds stretched to reach --min-steps {self.min_steps}" if self.stretched else ""))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "steps_per_full_trial": self.steps(self.max_batch_size), "epochs": self.epochs}


def derive_budget(train_examples: int, max_batch_size: int, max_epochs: int, evals_per_epoch: int,
                  grace_rounds: int, min_steps: int = DEFAULT_MIN_STEPS) -> Budget:
    """The budget rule (see the module docstring).

    A round is ``1 / evals_per_epoch`` of an epoch, or longer so that ``max_epochs x
    evals_per_epoch`` rounds hold at least ``min_steps`` optimizer steps at ``max_batch_size``.
    """
    n = max(1, int(train_examples))
    rounds = max_epochs * evals_per_epoch
    asked = math.ceil(n / evals_per_epoch)
    floor = math.ceil(min_steps / rounds) * max_batch_size if min_steps > 0 else 0
    return Budget(train_examples=n, max_batch_size=max_batch_size, rounds=rounds,
                  grace_rounds=min(grace_rounds, rounds), examples_per_round=max(asked, floor), min_steps=min_steps,
                  stretched=floor > asked)
