#!/usr/bin/env python3
"""Stage 4 of prepare.sh: fbank features of MUSAN for noise mixing (--enable-musan).

Usage:

  ./local/compute_fbank_musan.py --num-jobs 4

Reads data/manifests/musan_recordings_{music,speech,noise}.jsonl.gz, cuts the recordings
into 10 s windows, keeps those longer than 5 s and writes data/fbank/musan_cuts.jsonl.gz
with features in data/fbank/musan_feats, as icefall does. An existing output is kept.
"""

from __future__ import annotations

import argparse

import musan

from icefall.cli import run_guarded
from icefall.cli.data import add_fbank_arguments, setup_fbank_script
from icefall.cli.flags import ArgumentParser


def get_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_fbank_arguments(parser)
    return parser


def main() -> None:
    args = get_parser().parse_args()
    setup_fbank_script()
    musan.compute_features(args.manifest_dir, args.output_dir, args.num_jobs, args.progress_bar,
                           args.num_mel_bins)


if __name__ == "__main__":
    run_guarded(main)
