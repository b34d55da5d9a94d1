"""Tasks registered by name (``text-cls``, ``image-cls``)."""

from __future__ import annotations

from autotransfer.tasks.base import BackboneInfo, PreparationStats, Task

_REGISTRY: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: make a task available under ``cls.name``."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"task {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls
    return cls


def get_task(name: str) -> Task:
    """An instance of the task registered as ``name`` (its module is imported on first use)."""
    if name not in _REGISTRY:
        import importlib

        module = {"text-cls": "text_cls", "image-cls": "image_cls"}.get(name)
        if module is not None:
            importlib.import_module(f"autotransfer.tasks.{module}")
    try:
        return _REGISTRY[name]()
    except KeyError:
        raise KeyError(f"unknown task {name!r}") from None


__all__ = ["BackboneInfo", "PreparationStats", "Task", "get_task", "register_task"]
