#!/usr/bin/env python3
"""Stages 1, 2 and 6 of prepare.sh: lhotse manifests of LibriSpeech, MUSAN or GigaSpeech.

Usage:

  ./local/prepare_manifests.py --dataset librispeech \\
    --corpus-dir download/LibriSpeech --output-dir data/manifests --num-jobs 4
  ./local/prepare_manifests.py --dataset musan --corpus-dir download/musan
  ./local/prepare_manifests.py --dataset gigaspeech \\
    --corpus-dir download/GigaSpeech --subsets "S DEV TEST"

Writes lhotse's manifests, e.g. data/manifests/librispeech_recordings_dev-clean.jsonl.gz and
librispeech_supervisions_dev-clean.jsonl.gz for every LibriSpeech part found in the corpus,
musan_recordings_{music,speech,noise}.jsonl.gz, and
gigaspeech_{recordings,supervisions,cuts}_<subset>.jsonl.gz from GigaSpeech.json (lhotse's
reader when speechcolab is installed, the same selection read here otherwise).
Parts already prepared are skipped.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gigaspeech
import librispeech
import musan

from icefall.cli import run_guarded
from icefall.cli.data import split_names
from icefall.cli.flags import ArgumentParser, positive_int
from icefall.utils import setup_logger


def get_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True,
                        choices=("librispeech", "musan", "gigaspeech"))
    parser.add_argument("--corpus-dir", type=Path, required=True,
                        help="download/LibriSpeech, download/musan or download/GigaSpeech.")
    parser.add_argument("--output-dir", type=Path, default=Path("data/manifests"))
    parser.add_argument("--num-jobs", type=positive_int, default=1, help="Parallel readers.")
    parser.add_argument("--subsets", type=str, default=" ".join(gigaspeech.SUBSETS),
                        help="GigaSpeech subsets (space-separated).")
    return parser


def main() -> None:
    args = get_parser().parse_args()
    setup_logger()
    if args.dataset == "librispeech":
        librispeech.prepare_manifests(args.corpus_dir, args.output_dir, args.num_jobs)
    elif args.dataset == "musan":
        musan.prepare_manifests(args.corpus_dir, args.output_dir)
    else:
        subsets = split_names(args.subsets, gigaspeech.ALL_SUBSETS, "GigaSpeech subset")
        gigaspeech.prepare_manifests(args.corpus_dir, args.output_dir, subsets, args.num_jobs)


if __name__ == "__main__":
    run_guarded(main)
