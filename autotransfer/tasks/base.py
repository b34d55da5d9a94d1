"""The task protocol: what the engine needs from text-cls, image-cls, ...

A task knows its data format, its backbones and its preprocessing; the engine
(search, training loop, export, report) is shared.  Implementations live one
per module and register with :func:`autotransfer.tasks.register_task`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterable, Iterator, Mapping, Optional

import numpy as np
import torch
from torch import nn

from autotransfer.data import LabeledSplits
from autotransfer.objective import Objective
from autotransfer.recipes import Recipe
from autotransfer.strategies.base import ModelBundle
from autotransfer.tasks.spec import TaskOption, TaskSpec, resolve

#: a batch: model inputs (tensors by name) and labels: a tensor (one class per example) or any structure of
#: tensors the task's objective reads (e.g. ``{"tags": ..., "sentence": ...}`` for token classification)
Batch = tuple[dict[str, torch.Tensor], Any]


@dataclass
class BackboneInfo:
    """A backbone resolved and checked before any trial starts."""

    name: str  # as the user wrote it (search-space value)
    source: str  # what the library loads: a hub id or an absolute folder
    num_layers: int
    #: identifies the preprocessing this backbone needs; equal keys share prepared data
    preprocessing: str = ""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class PreparationStats:
    """How much preprocessing a search did (it should equal the distinct preprocessings)."""

    distinct: int = 0
    runs: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"distinct_preprocessings": self.distinct, "preprocessing_runs": self.runs,
                "preparation_seconds": round(self.seconds, 3)}


class IndexedCollate:
    """A loader's ``collate_fn`` that also hands back the split positions of the batch's rows (see
    :meth:`Task.indexed_batches`): ``(inputs, labels, positions)``."""

    def __init__(self, collate: Any):
        self.collate = collate

    def __call__(self, idx: list[int]) -> tuple[Any, Any, np.ndarray]:
        inputs, labels = self.collate(idx)
        return inputs, labels, np.asarray(idx, dtype=np.int64)


class Task:
    """Base class of a task implementation; see :class:`~autotransfer.tasks.text_cls.TextClassification`.

    Its objective, data options and data reader come from its :class:`~autotransfer.tasks.spec.TaskSpec`
    (the nearest declared one along the class hierarchy); a subclass may override any of them.
    """

    name: ClassVar[str]

    @classmethod
    def declared(cls) -> TaskSpec:
        """The spec declared for this class's name, or for the nearest base class that has one."""
        from autotransfer.tasks import declared_spec

        for klass in cls.__mro__:
            spec = declared_spec(getattr(klass, "name", "")) if "name" in vars(klass) else None
            if spec is not None:
                return spec
        raise NotImplementedError(f"task {cls.name!r}: no TaskSpec declared; set objective and load_data")

    @property
    def objective(self) -> Objective:
        """The loss, decoding, metrics and detailed results (see :mod:`autotransfer.objective`)."""
        return self.declared().objective

    @property
    def options(self) -> tuple[TaskOption, ...]:
        """The data options (``--text-col``...) this task reads from ``settings.options``."""
        return self.declared().options

    def load_data(self, settings: Any) -> LabeledSplits:
        """Read and validate ``settings.data``; raise UserError on bad input."""
        spec = self.declared()
        if spec.reader is None:
            raise NotImplementedError(f"task {self.name!r}: its TaskSpec has no reader; override load_data")
        return resolve(spec.reader)(settings)

    def describe_backbone(self, name: str, settings: Any) -> BackboneInfo:
        """Resolve a backbone name (hub id or local folder) and check it can be loaded."""
        raise NotImplementedError

    def prepare(self, backbones: list[BackboneInfo], splits: LabeledSplits,
                settings: Any) -> tuple[dict[str, Any], PreparationStats]:
        """Preprocess the data once per distinct preprocessing; map backbone name -> prepared data."""
        raise NotImplementedError

    def recipes(self) -> list[Recipe]:
        """The task's standard recipes, run on every backbone as protected first trials (none by default)."""
        return []

    def build(self, backbone: BackboneInfo, label_names: list[str], settings: Mapping[str, Any]) -> ModelBundle:
        """A classifier on ``backbone`` with a fresh head for ``label_names``."""
        raise NotImplementedError

    def batches(self, prepared: Any, split: str, batch_size: int, *, train: bool, seed: int = 0,
                pin_memory: bool = False, config: Optional[Mapping[str, Any]] = None) -> Iterable[Batch]:
        """Batches of a prepared split; shuffled when ``train``."""
        raise NotImplementedError

    def indexed_batches(self, prepared: Any, split: str, batch_size: int, *, train: bool, seed: int = 0,
                        pin_memory: bool = False, config: Optional[Mapping[str, Any]] = None,
                        ) -> Optional[Iterable[tuple[Any, Any, np.ndarray]]]:
        """The batches :meth:`batches` yields, in the same order, each with the split positions of its rows as a
        third item -- or None where a batch's inputs are not a fixed function of those rows (random augmentation
        under ``config``) or the task does not say.  What the frozen-prefix cache (:mod:`autotransfer.prefix_cache`)
        needs to look a batch's rows up; None turns it off."""
        return None

    def num_examples(self, prepared: Any, split: str) -> int:
        raise NotImplementedError

    def with_train(self, prepared: Any, splits: tuple[str, ...]) -> Any:
        """A copy of ``prepared`` whose train split is ``splits`` concatenated (for ``--refit``)."""
        raise NotImplementedError

    def labels(self, prepared: Any, split: str) -> Any:
        raise NotImplementedError

    def logits(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Class scores for a batch."""
        raise NotImplementedError

    def classifier_input(self, captured: torch.Tensor, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """What the classifier layer's input for a batch means for the objective: by default as captured.

        A model that scores every position and pools afterwards (a decoder's sequence classifier)
        returns the pooled positions' rows here, so a head fitted on features sees what it scores."""
        return captured

    #: what :meth:`ranking_rows` gives, for the pre-rank's record
    ranking_description: ClassVar[str] = "classifier input"

    def ranking_module(self, model: nn.Module) -> Optional[nn.Module]:
        """The module whose output the backbone pre-rank scores (:mod:`autotransfer.prerank`), reduced to rows by
        :meth:`ranking_rows`; None (the default): the pre-rank scores what the classifier layer sees."""
        return None

    def ranking_rows(self, output: Any, head_input: torch.Tensor,
                     inputs: dict[str, torch.Tensor]) -> Optional[torch.Tensor]:
        """One row per example from :meth:`ranking_module`'s ``output`` for a batch (``head_input``: what the
        classifier layer received), or None: score the classifier's input for this model after all."""
        return None

    def gallery(self, prepared: Any, split: str, predictions: np.ndarray, label_names: list[str],
                limit: int) -> list[tuple[str, Any]]:
        """Up to ``limit`` examples of ``split`` drawn with ``predictions`` (the objective's decoded rows, in split
        order) beside the truth, as (caption, PIL image) pairs for the report; none by default (a table says it)."""
        return []

    def export(self, model: nn.Module, backbone: BackboneInfo, label_names: list[str], out: Path) -> None:
        """Save ``model`` in its library's standard folder format."""
        raise NotImplementedError

    def predict(self, model_dir: Path, data: Path, settings: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        """Rows of predictions for new data with a model exported by :meth:`export`."""
        raise NotImplementedError
