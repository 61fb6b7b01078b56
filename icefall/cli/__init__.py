"""The command-line layer: flags, ``main`` functions and the one way a script fails.

Library modules (everything else under ``icefall/``) take arguments and raise exceptions;
only this package parses flags, and only :func:`exit_with_error` ends a process on bad
input: one line on stderr naming the script and the problem, exit status 1, no traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, TypeVar

from icefall.errors import TrainingStoppedError

T = TypeVar("T")

# What a user can cause and fix: bad paths, unreadable or mismatched files, bad values,
# missing optional packages, and training that cannot go on with the given settings.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, OSError, ImportError, TrainingStoppedError)


def exit_with_error(error: BaseException | str) -> NoReturn:
    """One line on stderr, ``<script>: error: <message>``; exit status 1."""
    message = " ".join(str(error).split()) or type(error).__name__
    print(f"{Path(sys.argv[0]).name}: error: {message}", file=sys.stderr)
    sys.exit(1)


def run_guarded(fn: Callable[..., T], *args, **kwargs) -> T:
    """``fn(*args, **kwargs)``, with user errors turned into :func:`exit_with_error`."""
    try:
        return fn(*args, **kwargs)
    except USER_ERRORS as e:
        exit_with_error(e)
