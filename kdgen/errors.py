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


class WriteError(UserError):
    """A file could not be written (disk full, quota, permissions, an I/O error). Nothing half-written is
    left under its name: the previous version, if any, is kept. ``hint`` (set by the command) says how to go on."""

    def __init__(self, path: object, reason: str, errno: int | None = None, hint: str = "") -> None:
        super().__init__(path, reason, errno, hint)
        self.path, self.reason, self.errno, self.hint = path, reason, errno, hint

    def __str__(self) -> str:
        return f"could not write {self.path}: {self.reason}" + (f"; {self.hint}" if self.hint else "")
