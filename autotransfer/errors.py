"""Errors a user can act on.

Anything raised as :class:`UserError` is reported by the CLI as one line on
stderr with exit code 2 and no traceback (``--debug`` shows one).  Inner code
raises it only at the door -- when validating settings, data, search spaces
and backbones -- and trusts its inputs afterwards.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input: a missing file, an invalid setting, an unusable backbone..."""

    exit_code = 2
