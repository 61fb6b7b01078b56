#!/usr/bin/env python3
"""Stage 8 of prepare.sh: check that cut manifests are fit for training.

Usage:

  ./local/validate_manifest.py data/fbank/librispeech_cuts_train-clean-100.jsonl.gz
  ./local/validate_manifest.py data/fbank/*_cuts_*.jsonl.gz data/fbank/musan_cuts.jsonl.gz
  ./local/validate_manifest.py --read-features true data/fbank/gigaspeech_cuts_DEV.jsonl.gz

Every cut must have 80-bin features with as many frames as its duration at 100 per second,
stored in a file that exists and covering the cut; unique ids; exactly one supervision
with text, lying within the cut (2 ms tolerance). musan_cuts* need no supervision.
With --read-features true each feature matrix is loaded and its shape checked.
The first bad cut is reported on one line (file, cut id, problem) and the exit code is 1.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import musan

from icefall.cli import run_guarded
from icefall.cli.flags import ArgumentParser, positive_int, str2bool
from icefall.data.validation import validate_manifest
from icefall.utils import setup_logger


def get_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifests", type=Path, nargs="+", help="Cut manifests to check.")
    parser.add_argument("--read-features", type=str2bool, default=False,
                        help="Load every feature matrix and check its shape.")
    parser.add_argument("--num-mel-bins", type=positive_int, default=80)
    return parser


def main() -> None:
    args = get_parser().parse_args()
    setup_logger()
    for manifest in args.manifests:
        validate_manifest(manifest, require_supervisions=not musan.is_musan_manifest(manifest),
                          num_mel_bins=args.num_mel_bins, read_features=args.read_features)


if __name__ == "__main__":
    run_guarded(main)
