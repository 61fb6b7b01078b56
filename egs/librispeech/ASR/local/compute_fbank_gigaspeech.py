#!/usr/bin/env python3
"""Stage 7 of prepare.sh: fbank features of the GigaSpeech subsets (S, DEV, TEST).

Usage:

  ./local/compute_fbank_gigaspeech.py --subsets "S DEV TEST" --num-jobs 4

Reads data/manifests/gigaspeech_{recordings,supervisions}_<subset>.jsonl.gz, drops segments
with non-speech tags (<SIL> <MUSIC> <NOISE> <OTHER>), removes punctuation tags and brings
the text to LibriSpeech form, computes features of each recording once and writes one cut
per segment to data/fbank/gigaspeech_cuts_<subset>.jsonl.gz (features in
gigaspeech_feats_<subset>). Existing outputs are kept.
"""

from __future__ import annotations

import argparse

import gigaspeech

from icefall.cli import run_guarded
from icefall.cli.data import add_fbank_arguments, setup_fbank_script, split_names
from icefall.cli.flags import ArgumentParser


def get_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_fbank_arguments(parser)
    parser.add_argument("--subsets", type=str, default=" ".join(gigaspeech.SUBSETS),
                        help="Space-separated GigaSpeech subsets.")
    return parser


def main() -> None:
    args = get_parser().parse_args()
    setup_fbank_script()
    subsets = split_names(args.subsets, gigaspeech.ALL_SUBSETS, "GigaSpeech subset")
    gigaspeech.compute_features(args.manifest_dir, args.output_dir, subsets, args.num_jobs,
                                args.progress_bar, args.num_mel_bins)


if __name__ == "__main__":
    run_guarded(main)
