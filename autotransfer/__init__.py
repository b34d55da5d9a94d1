"""autotransfer: search backbone x transfer strategy x hyperparameters for a classifier on your data.

Public API::

    from autotransfer import search, SearchSettings
    result = search(task="text-cls", data="reviews.csv", num_samples=8)
"""

from typing import Any

from autotransfer.errors import UserError
from autotransfer.settings import SearchSettings

__version__ = "0.1.0"
__all__ = ["SearchFailed", "SearchResult", "SearchSettings", "UserError", "search", "__version__"]


def __getattr__(name: str) -> Any:
    """The search engine (Rich, pandas, Ray...) loads on first use, so that ``import autotransfer``, the
    CLI's ``--help`` and its input checks stay fast."""
    if name in ("SearchFailed", "SearchResult", "search"):
        from autotransfer import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
