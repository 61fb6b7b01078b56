#!/usr/bin/env python3
"""Check and normalise your own data, and write lhotse manifests at 16 kHz mono.

Usage (run.sh's stage 0; paths absolute or relative to the current folder):

    python local/prepare_data.py --train train.csv [--test test.csv] \
        --bpe-model BASE/data/lang_bpe_500/bpe.model --out-dir exp/data

--train/--test take a CSV or TSV with a header naming path and text (optional speaker,
id; paths absolute or relative to the CSV's folder), a Kaldi data directory (wav.scp,
text, optional segments and utt2spk), a folder of audio files with same-named .txt
transcripts, or lhotse manifests. Without --test, --test-share of the training recordings
is held out (seeded). Transcripts are normalised to the BPE model's form (as the recipes
normalise: case, punctuation); the share of <unk> tokens is logged, and above
--max-unk-share the preparation stops, naming the first offending utterances. Rows with
missing or unreadable audio, empty transcripts or audio outside the training limits are
listed and left out (--skip-bad-rows 0: fatal); audio at another sample rate or with several
channels is converted. See icefall/data/user_prepare.py for what is written.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from icefall.cli import run_guarded
from icefall.cli.flags import ArgumentParser, nonnegative_float, positive_float, str2bool
from icefall.data.user_prepare import prepare_user_data
from icefall.utils import setup_logger


def get_args() -> argparse.Namespace:
    p = ArgumentParser(description=__doc__.splitlines()[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--train", type=Path, required=True, help="Training data (any accepted form).")
    a("--test", type=Path, default=None, help="Test data; default: a held-out share.")
    a("--train-name", default="train", help="Name of the training set in the report.")
    a("--test-name", default="test", help="Name of the test set in the report.")
    a("--bpe-model", type=Path, required=True, help="The base model's BPE model.")
    a("--out-dir", type=Path, default=Path("exp/data"), help="Where the manifests go.")
    a("--test-share", type=positive_float, default=0.1,
      help="Without --test: share of the training recordings held out for testing.")
    a("--seed", type=int, default=42, help="Seed of the held-out draw.")
    a("--min-seconds", type=nonnegative_float, default=1.0,
      help="Shorter training utterances are left out (training's lower limit).")
    a("--max-seconds", type=positive_float, default=20.0,
      help="Longer utterances are left out (training's upper limit).")
    a("--skip-bad-rows", type=str2bool, default=True,
      help="Leave bad rows out (listed); 0 stops at them.")
    a("--normalize-text", type=str2bool, default=True,
      help="Normalise transcripts to the BPE model's form (case, punctuation).")
    a("--max-unk-share", type=nonnegative_float, default=0.01,
      help="Stop when more than this share of BPE tokens are <unk> (1 accepts any).")
    return p.parse_args()


def main() -> None:
    args = get_args()
    setup_logger()
    run_guarded(prepare_user_data, vars(args))


if __name__ == "__main__":
    main()
