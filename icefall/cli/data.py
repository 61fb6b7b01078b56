"""Command-line pieces of the data-preparation scripts (``egs/*/ASR/local/*.py``).

The flags every ``compute_fbank_*.py`` takes, their setup, and the parsing of a list of
corpus parts given on the command line. The scripts run their ``main`` through
:func:`icefall.cli.run_guarded`, so bad input ends as one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch

from icefall.cli.flags import positive_int, str2bool
from icefall.data.fbank import NUM_MEL_BINS
from icefall.utils import setup_logger


def add_fbank_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every ``compute_fbank_*.py`` takes: --manifest-dir, --output-dir,
    --num-jobs, --progress-bar, --num-mel-bins."""
    parser.add_argument("--manifest-dir", type=Path, default=Path("data/manifests"))
    parser.add_argument("--output-dir", type=Path, default=Path("data/fbank"))
    parser.add_argument("--num-jobs", type=positive_int, default=1,
                        help="Parallel fbank processes.")
    parser.add_argument("--progress-bar", type=str2bool, default=True)
    parser.add_argument("--num-mel-bins", type=positive_int, default=NUM_MEL_BINS,
                        help="Mel bins of the fbank features (80 as icefall; a model takes "
                             "them with --feature-dim).")


def setup_fbank_script() -> None:
    """icefall's logging, and one torch thread in this process as in each fbank worker, so
    that N jobs use N cores (icefall's compute_fbank scripts do the same)."""
    setup_logger()
    torch.set_num_threads(1)


def split_names(text: str, allowed: Sequence[str], what: str) -> list[str]:
    """Splits a space- or comma-separated list of names; ``all`` means every allowed name.

    Args:
      text: e.g. ``"dev-clean test-clean"`` or ``"S,DEV"``.
      allowed: the names that may be given, in the order ``all`` returns them.
      what: what a name is, for the error (``LibriSpeech part``).
    Returns:
      The names, in the order given.
    Raises:
      ValueError: naming the unknown entries and the allowed ones (or an empty list).
    """
    names = [n for n in text.replace(",", " ").split() if n]
    if names == ["all"]:
        return list(allowed)
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise ValueError(f"unknown {what}: '{' '.join(unknown) or text}' "
                         f"(choose from: {' '.join(allowed)})")
    return names
