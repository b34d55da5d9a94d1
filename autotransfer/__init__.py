"""autotransfer: search backbone x transfer strategy x hyperparameters for a classifier on your data.

Public API::

    from autotransfer import search, SearchSettings
    result = search(task="text-cls", data="reviews.csv", num_samples=8)
"""

from autotransfer.api import SearchFailed, SearchResult, search
from autotransfer.errors import UserError
from autotransfer.settings import SearchSettings

__version__ = "0.1.0"
__all__ = ["SearchFailed", "SearchResult", "SearchSettings", "UserError", "search", "__version__"]
