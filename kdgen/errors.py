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

    def __init__(self, path: object, reason: str, errno: int | None = None, hint: str = "", *,
                 action: str = "write") -> None:
        super().__init__(path, reason, errno, hint)
        self.path, self.reason, self.errno, self.hint, self.action = path, reason, errno, hint, action

    def __str__(self) -> str:
        return f"could not {self.action} {self.path}: {self.reason}" + (f"; {self.hint}" if self.hint else "")


class ReadError(UserError):
    """A file or folder kdgen must read could not be (permissions, an I/O error, a file where a folder should be)."""

    def __init__(self, path: object, reason: str, errno: int | None = None) -> None:
        super().__init__(path, reason, errno)
        self.path, self.reason, self.errno = path, reason, errno

    def __str__(self) -> str:
        return f"could not read {self.path}: {self.reason}"


def os_reason(exc: OSError) -> str:
    """The cause of an ``OSError`` in words ("Permission denied"), without the path it repeats."""
    return exc.strerror or (str(exc).splitlines() or [type(exc).__name__])[0][:160]


def read_error(path: object, exc: OSError) -> ReadError:
    """A failed read (an ``OSError``) as a :class:`ReadError` naming ``path`` and the cause."""
    return ReadError(path, os_reason(exc), exc.errno)
