"""Tasks registered by name (``text-cls``, ``image-cls``, ``token-cls``).

A task is one module holding a :class:`Task` subclass decorated with :func:`register_task`.
The registry knows every task's name without importing its module (so ``--help`` and
bad-input errors stay fast): built-in tasks are listed in ``_BUILTIN`` (name -> module),
and other packages add theirs through the ``autotransfer.tasks`` entry-point group
(``name = "package.module"``).  The module is imported on first use by :func:`get_task`.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from autotransfer.tasks.base import BackboneInfo, PreparationStats, Task

_REGISTRY: dict[str, type[Task]] = {}
#: built-in task name -> the module that registers it
_BUILTIN = {"text-cls": "autotransfer.tasks.text_cls", "image-cls": "autotransfer.tasks.image_cls",
            "token-cls": "autotransfer.tasks.token_cls"}
ENTRY_POINT_GROUP = "autotransfer.tasks"


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: make a task available under ``cls.name``."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"task {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls
    return cls


def _modules() -> dict[str, str]:
    """Task name -> module, built-ins first, then installed plugins (a plugin cannot shadow a built-in)."""
    found = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return {**found, **_BUILTIN}


def task_names() -> tuple[str, ...]:
    """Every task ``--task`` accepts: built-in, installed as a plugin, or registered in this process."""
    return tuple(dict.fromkeys([*_BUILTIN, *_modules(), *_REGISTRY]))


def get_task(name: str) -> Task:
    """An instance of the task registered as ``name`` (its module is imported on first use)."""
    if name not in _REGISTRY:
        module = _modules().get(name)
        if module is not None:
            importlib.import_module(module)
    try:
        return _REGISTRY[name]()
    except KeyError:
        raise KeyError(f"unknown task {name!r}") from None


__all__ = ["BackboneInfo", "PreparationStats", "Task", "get_task", "register_task", "task_names"]
