"""Exceptions shared across the library (the command-line layer turns them into one line)."""

from __future__ import annotations


class TrainingStoppedError(RuntimeError):
    """Training cannot go on with the given settings; the message says what to change."""
