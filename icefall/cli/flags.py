"""The parser every script uses, and argparse ``type=`` functions with range checks.

A bad flag ends the script the way every other bad input does: one line on stderr,
``<script>: error: argument --max-duration: expected a number > 0, got '0'``, exit status 1.
"""

from __future__ import annotations

import argparse
import math
from typing import NoReturn


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser with icefall's help layout and one-line errors (exit status 1)."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(**kwargs)

    def error(self, message: str) -> NoReturn:
        from icefall.cli import exit_with_error

        exit_with_error(message)


def str2bool(v: str | bool) -> bool:
    """For 0/1 flags: accepts 1/0, true/false, yes/no, y/n, t/f."""
    if isinstance(v, bool):
        return v
    s = v.strip().lower()
    if s in ("1", "true", "t", "yes", "y"):
        return True
    if s in ("0", "false", "f", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (0/1, true/false), got '{v}'")


def _number(kind: type, v: str) -> int | float:
    try:
        x = kind(v)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected {'an integer' if kind is int else 'a number'}, got '{v}'") from None
    if isinstance(x, float) and not math.isfinite(x):
        raise argparse.ArgumentTypeError(f"expected a finite number, got '{v}'")
    return x


def _at_least(kind: type, low: float, strict: bool):
    what = f"{'an integer' if kind is int else 'a number'} {'>' if strict else '>='} {low:g}"

    def check(v: str) -> int | float:
        x = _number(kind, v)
        if x < low or (strict and x == low):
            raise argparse.ArgumentTypeError(f"expected {what}, got '{v}'")
        return x

    check.__name__ = f"{kind.__name__}_{'above' if strict else 'from'}_{low:g}"
    return check


positive_int = _at_least(int, 0, strict=True)
nonnegative_int = _at_least(int, 0, strict=False)
positive_float = _at_least(float, 0.0, strict=True)
nonnegative_float = _at_least(float, 0.0, strict=False)
finite_float = _at_least(float, -math.inf, strict=False)


def int_from(low: int):
    """Integers >= ``low``."""
    return _at_least(int, low, strict=False)


def port(v: str) -> int:
    """A TCP port, 1 to 65535."""
    x = _number(int, v)
    if not 1 <= x <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 1 to 65535, got '{v}'")
    return x
