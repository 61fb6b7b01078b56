#!/usr/bin/env python3
"""Stage 0 of prepare.sh: download LibriSpeech, MUSAN and GigaSpeech into --dl-dir.

Usage:

  ./local/download_data.py --dl-dir download

  # only some LibriSpeech parts, no MUSAN
  ./local/download_data.py --dl-dir download \\
    --librispeech-parts "train-clean-100 dev-clean test-clean" --musan false

What is already in --dl-dir (LibriSpeech/<part>/, musan/, GigaSpeech/GigaSpeech.json) is never
downloaded again, so a machine without network whose --dl-dir holds the corpora passes.
A failed download is logged and the rest goes on; the script fails only when no LibriSpeech
part is there at all. GigaSpeech is downloaded only with credentials in <dl-dir>/password
(and the speechcolab package), as in icefall's recipe.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gigaspeech
import librispeech
import musan

from icefall.cli import run_guarded
from icefall.cli.data import split_names
from icefall.cli.flags import ArgumentParser, positive_float, str2bool
from icefall.utils import setup_logger


def get_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dl-dir", type=Path, required=True,
                        help="Download folder: LibriSpeech/, musan/ and GigaSpeech/ go here.")
    parser.add_argument("--librispeech-parts", type=str, default="all",
                        help="Space-separated LibriSpeech parts, or 'all'.")
    parser.add_argument("--musan", type=str2bool, default=True, help="Get MUSAN too.")
    parser.add_argument("--gigaspeech", type=str2bool, default=True,
                        help="Get GigaSpeech too (needs <dl-dir>/password).")
    parser.add_argument("--gigaspeech-subsets", type=str, default=" ".join(gigaspeech.SUBSETS),
                        help="Space-separated GigaSpeech subsets.")
    parser.add_argument("--timeout", type=positive_float, default=30.0,
                        help="Seconds before an unanswered connection counts as failed.")
    return parser


def main() -> None:
    args = get_parser().parse_args()
    setup_logger()
    parts = split_names(args.librispeech_parts, librispeech.PARTS, "LibriSpeech part")
    librispeech.download_parts(args.dl_dir, parts, timeout=args.timeout)
    if args.musan:
        musan.download_corpus(args.dl_dir, timeout=args.timeout)
    if args.gigaspeech:
        subsets = split_names(args.gigaspeech_subsets, gigaspeech.ALL_SUBSETS,
                              "GigaSpeech subset")
        gigaspeech.download_corpus(args.dl_dir, subsets, timeout=args.timeout)


if __name__ == "__main__":
    run_guarded(main)
