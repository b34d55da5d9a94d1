"""Tasks registered by name (``text-cls``, ``image-cls``, ``token-cls``, ``detection``).

A task is a light :class:`TaskSpec` (objective, data options, data reader: what the door checks
before any model loads) plus one implementation module holding a
:class:`~autotransfer.tasks.base.Task` subclass decorated with :func:`register_task` (backbones,
preprocessing, model, batches, export, predict).  Adding a built-in task is its module plus its
spec in ``_BUILTIN``.

Other packages add tasks through the ``autotransfer.tasks`` entry-point group: ``name =
"package.module"`` (the implementation module; its spec is derived from the registered class when
the task is chosen) or ``name = "package.module:SPEC"`` (a :class:`TaskSpec`, read without
importing the implementation).  Implementations are imported on first use by :func:`get_task`.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from autotransfer.objective import BoxDetection, SingleLabel, TokenTagging
from autotransfer.tasks.spec import TaskOption, TaskSpec, resolve

if TYPE_CHECKING:
    from autotransfer.tasks.base import Task

_REGISTRY: dict[str, type["Task"]] = {}
ENTRY_POINT_GROUP = "autotransfer.tasks"

_LABEL_COL = TaskOption("label_col", "label column (default: detected: label, category, ...)")
#: the built-in tasks' specs
_BUILTIN = {spec.name: spec for spec in (
    TaskSpec("text-cls", "autotransfer.tasks.text_cls", SingleLabel(), "autotransfer.tables:read_text_task", (
        TaskOption("text_col", "text column (default: detected: text, sentence, ...)"),
        TaskOption("text_pair_col", "second text column, for sentence pairs"),
        _LABEL_COL), sequential=True),
    TaskSpec("image-cls", "autotransfer.tasks.image_cls", SingleLabel(), "autotransfer.images:read_image_task", (
        TaskOption("image_col", "the image path column of a CSV (default: detected: path, image, ...)"),
        _LABEL_COL)),
    TaskSpec("token-cls", "autotransfer.tasks.token_cls", TokenTagging(), "autotransfer.conll:read_token_task"),
    TaskSpec("detection", "autotransfer.tasks.detection", BoxDetection(), "autotransfer.detection_data:read_detection_task",
             params=("architecture", "anchor_scale", "hflip")),
)}


def register_task(cls: type["Task"]) -> type["Task"]:
    """Class decorator: make a task available under ``cls.name``."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"task {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls
    return cls


def _plugins() -> dict[str, str]:
    """Installed plugins: task name -> entry-point value (a plugin cannot shadow a built-in)."""
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name not in _BUILTIN}


def task_names() -> tuple[str, ...]:
    """Every task ``--task`` accepts: built-in, installed as a plugin, or registered in this process."""
    return tuple(dict.fromkeys([*_BUILTIN, *_plugins(), *_REGISTRY]))


def declared_spec(name: str) -> "TaskSpec | None":
    """The spec of ``name`` when it is declared (built-in, or a plugin pointing at its TaskSpec), without
    importing any implementation; None otherwise."""
    if name in _BUILTIN:
        return _BUILTIN[name]
    value = _plugins().get(name, "")
    if ":" in value:
        spec = resolve(value)
        if not isinstance(spec, TaskSpec):
            raise TypeError(f"entry point {name} = {value!r} is not a TaskSpec")
        return spec
    return None


def declared_specs() -> list[TaskSpec]:
    """Every spec readable without importing an implementation (built-ins, plugins pointing at a TaskSpec)."""
    return [spec for spec in map(declared_spec, task_names()) if spec is not None]


def task_spec(name: str) -> TaskSpec:
    """The spec of the task ``name``: declared, or derived from its registered implementation."""
    spec = declared_spec(name)
    if spec is not None:
        return spec
    task = get_task(name)
    return TaskSpec(name=name, module=type(task).__module__, objective=task.objective, reader=None,
                    options=tuple(task.options))


def get_task(name: str) -> "Task":
    """An instance of the task implementation registered as ``name`` (its module imported on first use)."""
    if name not in _REGISTRY:
        spec = _BUILTIN.get(name)
        module = spec.module if spec else _plugins().get(name)
        if module is not None:
            if ":" in module:  # a plugin's TaskSpec names its implementation module
                module = resolve(module).module
            importlib.import_module(module)
    try:
        return _REGISTRY[name]()
    except KeyError:
        raise KeyError(f"unknown task {name!r}") from None


def __getattr__(name: str) -> Any:
    """``Task``, ``BackboneInfo``, ``PreparationStats`` load torch: imported when first asked for."""
    if name in ("Task", "BackboneInfo", "PreparationStats"):
        from autotransfer.tasks import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["BackboneInfo", "PreparationStats", "Task", "TaskOption", "TaskSpec", "declared_spec", "declared_specs", "get_task",
           "register_task", "task_names", "task_spec"]
