#!/usr/bin/env python3
"""Compute 80-bin fbank features of your prepared data and write icefall-named cuts.

Usage (run.sh's stage 1):

    python local/compute_fbank_custom.py --manifest-dir exp/data/manifests \
        --output-dir exp/data/fbank --num-jobs 2

Reads ``custom_{recordings,supervisions}_{train,test}.jsonl.gz`` (local/prepare_data.py) and
writes ``custom_cuts_{train,test}.jsonl.gz``, one cut per utterance (trimmed to its
supervision). Training features are stored compressed (lilcom, as icefall stores them); test
features exactly (numpy), so that decoding them and sherpa-onnx's own features of the same
audio are compared on equal terms. Parts whose cuts exist are skipped.
"""

from __future__ import annotations

import argparse

from lhotse.features.io import LilcomChunkyWriter, NumpyFilesWriter

from icefall.cli import run_guarded
from icefall.cli.data import add_fbank_arguments, setup_fbank_script
from icefall.cli.flags import ArgumentParser
from icefall.data.fbank import compute_fbank_for_part
from icefall.data.manifests import load_part_cuts
from icefall.data.user_prepare import PARTS, PREFIX


def main() -> None:
    p = ArgumentParser(description=__doc__.splitlines()[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_fbank_arguments(p)
    args = p.parse_args()
    setup_fbank_script()
    storage = {"train": LilcomChunkyWriter, "test": NumpyFilesWriter}
    for part in PARTS:
        cuts = load_part_cuts(args.manifest_dir, PREFIX, part)
        cuts = cuts.trim_to_supervisions(keep_overlapping=False).to_eager()
        # a worker process takes seconds to start: not worth it for a few utterances
        jobs = args.num_jobs if len(cuts) >= 100 else 1
        compute_fbank_for_part(cuts, args.output_dir, PREFIX, part, num_jobs=jobs,
                               progress_bar=args.progress_bar, storage_type=storage[part],
                               num_mel_bins=args.num_mel_bins)


if __name__ == "__main__":
    run_guarded(main)
