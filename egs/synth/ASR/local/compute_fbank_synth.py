#!/usr/bin/env python3
"""Compute fbank features of the synthesised corpus and write icefall-named cuts.

Usage (from egs/synth/ASR):

    python local/compute_fbank_synth.py --manifest-dir data/manifests \
        --output-dir data/fbank --num-jobs 2 [--storage numpy_files] [--num-mel-bins 40]

Reads ``synth_{a,b}_{recordings,supervisions}_{train,dev,test}.jsonl.gz`` and writes
``data/fbank/synth_{a,b}_cuts_{train,dev,test}.jsonl.gz`` with lhotse's kaldi-compatible
Fbank (the training features), as egs/librispeech/ASR/local/compute_fbank_*.py do. Parts
whose cuts already exist are skipped.
"""

from __future__ import annotations

import argparse

from icefall.cli import run_guarded
from icefall.cli.data import add_fbank_arguments, setup_fbank_script
from icefall.cli.flags import ArgumentParser
from icefall.data.fbank import STORAGE_TYPES, compute_fbank_for_parts, fbank_executor
from icefall.data.manifests import load_part_cuts

PARTS = ("train", "dev", "test")


def get_args() -> argparse.Namespace:
    p = ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_fbank_arguments(p)
    p.add_argument("--storage", choices=sorted(STORAGE_TYPES), default="lilcom_chunky",
                   help="lilcom_chunky: lossy (steps of 1/64), about 4x smaller, as icefall "
                        "stores features; numpy_files: exact float32")
    p.add_argument("--domains", default="a,b",
                   help="comma list of the domains to process (as synthesize.py --domains)")
    return p.parse_args()


def main() -> None:
    args = get_args()
    setup_fbank_script()
    with fbank_executor(args.num_jobs) as pool:  # one pool for both domains' parts
        for domain in (d for d in args.domains.split(",") if d):
            prefix = f"synth_{domain}"
            compute_fbank_for_parts(
                lambda part, prefix=prefix: load_part_cuts(args.manifest_dir, prefix, part), PARTS,
                args.output_dir, prefix, num_jobs=args.num_jobs, executor=pool,
                progress_bar=args.progress_bar, storage_type=STORAGE_TYPES[args.storage],
                num_mel_bins=args.num_mel_bins)


if __name__ == "__main__":
    run_guarded(main)
