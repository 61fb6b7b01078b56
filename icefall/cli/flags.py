"""argparse ``type=`` functions shared by every script's flags."""

from __future__ import annotations

import argparse


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
