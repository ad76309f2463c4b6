"""Failures the user caused and must fix: retrying cannot help, and a traceback does not help either.

A stage raises a ``UserError`` subclass with a message that names the file, field or
setting and says what to change; the task is not retried and ``lmwright`` prints the
message as one line.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input or settings: not retried, reported in one line."""


class TrainingDataError(UserError, ValueError):
    """Too little data for the model and split asked for."""
