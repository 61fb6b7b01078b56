#!/usr/bin/env python3
"""Stage 3 of prepare.sh: 80-bin fbank features of LibriSpeech and train-all-shuf.

Usage:

  ./local/compute_fbank_librispeech.py --num-jobs 4
  ./local/compute_fbank_librispeech.py --dataset "dev-clean test-clean" --perturb-speed false

Reads data/manifests/librispeech_{recordings,supervisions}_<part>.jsonl.gz and writes
data/fbank/librispeech_cuts_<part>.jsonl.gz with features in librispeech_feats_<part>
(lhotse's Kaldi-compatible Fbank, or kaldifeat when it imports). Training parts get speed
perturbation 0.9/1.1 (three times the cuts) unless --perturb-speed false. Then
librispeech_cuts_train-all-shuf.jsonl.gz is the training parts concatenated and shuffled
(--seed). Existing outputs are kept.
"""

from __future__ import annotations

import argparse

import librispeech

from icefall.cli import run_guarded
from icefall.cli.data import add_fbank_arguments, setup_fbank_script, split_names
from icefall.cli.flags import ArgumentParser, str2bool


def get_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_fbank_arguments(parser)
    parser.add_argument("--dataset", type=str, default=None,
                        help="Space-separated parts; default: every part with manifests.")
    parser.add_argument("--perturb-speed", type=str2bool, default=True,
                        help="Add 0.9x and 1.1x speed copies of the training parts.")
    parser.add_argument("--train-all-shuf", type=str2bool, default=True,
                        help="Write librispeech_cuts_train-all-shuf.jsonl.gz.")
    parser.add_argument("--seed", type=int, default=42, help="Shuffling seed.")
    return parser


def main() -> None:
    args = get_parser().parse_args()
    setup_fbank_script()
    parts = split_names(args.dataset, librispeech.PARTS, "LibriSpeech part") \
        if args.dataset else None
    librispeech.compute_features(args.manifest_dir, args.output_dir, parts, args.num_jobs,
                                 args.perturb_speed, args.progress_bar, args.num_mel_bins)
    if args.train_all_shuf:
        librispeech.make_train_all_shuf(args.output_dir, args.seed)


if __name__ == "__main__":
    run_guarded(main)
