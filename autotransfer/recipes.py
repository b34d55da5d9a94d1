"""Standard recipes: what a practitioner would run by hand, as protected first trials.

A task lists its recipes (:meth:`autotransfer.tasks.Task.recipes`); the search runs each
one on every backbone before the sampler takes over, with the same budget as any trial,
and ASHA never stops them (:class:`autotransfer.scheduler.NoiseAwareASHA`).  So the best
trial is never worse on validation than the recipe (``--no-baseline`` turns this off).

``params`` are search-space parameters: they are proposed to the sampler like any warm
start (moved into the space's range where the space is narrower) and so count in its
history.  ``fixed`` are settings outside the space (the classic vision recipe's SGD) that
the recipe trial alone gets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Recipe:
    """One standard recipe of a task."""

    name: str
    strategy: str
    params: dict[str, Any] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
