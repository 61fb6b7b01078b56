#!/usr/bin/env python3
"""Compute 80-bin fbank features of the synthesised corpus and write icefall-named cuts.

Usage (from egs/synth/ASR):

    python local/compute_fbank_synth.py --manifest-dir data/manifests \
        --output-dir data/fbank --num-jobs 2 [--storage numpy_files]

Reads ``synth_{a,b}_{recordings,supervisions}_{train,dev,test}.jsonl.gz`` and writes
``data/fbank/synth_{a,b}_cuts_{train,dev,test}.jsonl.gz`` with lhotse's kaldi-compatible
Fbank (the training features), as egs/librispeech/ASR/local/compute_fbank_*.py do. Parts
whose cuts already exist are skipped.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from lhotse import CutSet, load_manifest
from lhotse.features.io import LilcomChunkyWriter, NumpyFilesWriter

from icefall.data import compute_fbank_for_part

PARTS = ("train", "dev", "test")
STORAGE = {"lilcom_chunky": LilcomChunkyWriter, "numpy_files": NumpyFilesWriter}


def get_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest-dir", type=Path, default=Path("data/manifests"))
    p.add_argument("--output-dir", type=Path, default=Path("data/fbank"))
    p.add_argument("--num-jobs", type=int, default=1)
    p.add_argument("--storage", choices=sorted(STORAGE), default="lilcom_chunky",
                   help="lilcom_chunky: lossy (steps of 1/64), about 4x smaller, as icefall "
                        "stores features; numpy_files: exact float32")
    p.add_argument("--domains", default="a,b",
                   help="comma list of the domains to process (as synthesize.py --domains)")
    return p.parse_args()


def main() -> None:
    args = get_args()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    if args.num_jobs > 1:
        torch.set_num_threads(1)  # the worker processes share the cores
    for domain in (d for d in args.domains.split(",") if d):
        prefix = f"synth_{domain}"
        for part in PARTS:
            recs = load_manifest(args.manifest_dir / f"{prefix}_recordings_{part}.jsonl.gz")
            sups = load_manifest(args.manifest_dir / f"{prefix}_supervisions_{part}.jsonl.gz")
            cuts = CutSet.from_manifests(recordings=recs, supervisions=sups)
            compute_fbank_for_part(cuts, args.output_dir, prefix, part,
                                   num_jobs=args.num_jobs, storage_type=STORAGE[args.storage])


if __name__ == "__main__":
    main()
