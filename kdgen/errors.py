"""Errors that are the user's to fix.

Anything raised as :class:`UserError` is reported by the command line as one line on stderr
with exit code 2 and no traceback. Everything else is an internal failure (exit code 1).
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's config, data, paths or checkpoints. The message names the problem."""


class ConfigError(UserError):
    """A config value is missing, misspelt, of the wrong type or out of range."""


class DataError(UserError):
    """A data file or folder is missing, truncated or malformed."""


class CheckpointError(UserError):
    """A file in a run folder is not what kdgen wrote (corrupt, truncated, or foreign)."""
