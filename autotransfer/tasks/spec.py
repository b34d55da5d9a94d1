"""What the door needs to know of a task before any model code loads.

A :class:`TaskSpec` names the task's objective (its metrics and default target), the data
options it reads (``--text-col``...) and the function that reads and validates its data.
Specs import neither torch nor transformers, so ``--help``, ``--metric`` checks and bad-data
errors answer in about a second; the task's implementation (backbones, preprocessing, model,
export) is imported only once the input has passed.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

from autotransfer.objective import Objective

if TYPE_CHECKING:
    from autotransfer.data import LabeledSplits


@dataclass(frozen=True)
class TaskOption:
    """A data option a task reads: ``--text-col`` on the command line, ``text_col`` in the API and
    ``settings.options["text_col"]`` in the task's reader."""

    name: str
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class TaskSpec:
    """A task as the door sees it; the implementation is the :class:`~autotransfer.tasks.base.Task`
    subclass registered under ``name`` in ``module``."""

    name: str
    #: the module that defines and registers the task's implementation
    module: str
    objective: Objective
    #: ``"module:function"``: reads ``settings.data`` into :class:`~autotransfer.data.LabeledSplits`
    #: (UserError on bad input); None: the implementation's ``load_data``
    reader: Optional[str] = None
    options: tuple[TaskOption, ...] = ()
    #: an earlier fine-tuned model of this task can be a backbone (its head re-drawn), so ``--source-data`` can
    #: run a source stage first (:mod:`autotransfer.source_stage`)
    sequential: bool = False
    #: shared search-space parameters this task reads besides the training ones (``params:`` in a space whose
    #: ``task`` is this one), e.g. a detector's ``architecture``
    params: tuple[str, ...] = ()

    def load_data(self, settings: Any) -> "LabeledSplits":
        """Read and validate the data, with the implementation left unimported when there is a reader."""
        if self.reader is None:
            from autotransfer.tasks import get_task

            return get_task(self.name).load_data(settings)
        return resolve(self.reader)(settings)

    def option(self, name: str) -> Optional[TaskOption]:
        return next((o for o in self.options if o.name == name), None)


def resolve(target: str) -> Callable[..., Any]:
    """``"package.module:attribute"`` -> the attribute (the module imported on first use)."""
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)
