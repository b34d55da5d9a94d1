"""Transfer strategies, registered by name (like timm models or peft methods).

A new strategy is one module with a :class:`Strategy` subclass decorated with
:func:`register_strategy`, imported at the bottom of this file.
"""

from __future__ import annotations

from autotransfer.strategies.base import Adapted, ModelBundle, Strategy, count_parameters

_REGISTRY: dict[str, type[Strategy]] = {}


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make a strategy available under ``cls.name``."""
    name = cls.name
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"strategy {name!r} is already registered")
    _REGISTRY[name] = cls
    return cls


def get_strategy(name: str) -> Strategy:
    """A new instance of the strategy registered as ``name``."""
    try:
        return _REGISTRY[name]()
    except KeyError:
        raise KeyError(f"unknown strategy {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def list_strategies() -> list[str]:
    return list(_REGISTRY)


# built-in strategies register themselves on import
from autotransfer.strategies import linear_probe, freeze, full, lora, lp_ft, gradual_unfreeze, bitfit  # noqa: E402,F401,E501

__all__ = ["Adapted", "ModelBundle", "Strategy", "count_parameters", "get_strategy", "list_strategies",
           "register_strategy"]
