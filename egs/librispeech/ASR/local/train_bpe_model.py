#!/usr/bin/env python3
"""Stage 5 of prepare.sh: sentencepiece BPE model of the LibriSpeech training text.

Usage:

  ./local/train_bpe_model.py --lang-dir data/lang_bpe_500 --vocab-size 500

  # from a transcript file of your own (one sentence a line)
  ./local/train_bpe_model.py --lang-dir data/lang_bpe_500 --vocab-size 500 \\
    --transcript data/lang_bpe_500/transcript_words.txt

Without --transcript, <lang-dir>/transcript_words.txt is written first from the training
supervisions in --manifest-dir (train-* parts, sorted by utterance id), as icefall's recipe
does. Writes <lang-dir>/bpe.model (unigram, <blk>=0, <sos/eos>=1, <unk>=2) and tokens.txt.
An existing bpe.model with tokens.txt is kept.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import librispeech

from icefall.cli import run_guarded
from icefall.cli.flags import ArgumentParser, positive_int
from icefall.utils import setup_logger


def get_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lang-dir", type=Path, required=True, help="e.g. data/lang_bpe_500")
    parser.add_argument("--vocab-size", type=positive_int, required=True, help="Number of pieces.")
    parser.add_argument("--transcript", type=Path, default=None,
                        help="Training text; default <lang-dir>/transcript_words.txt.")
    parser.add_argument("--manifest-dir", type=Path, default=Path("data/manifests"),
                        help="Where the LibriSpeech supervisions are (for the transcript).")
    return parser


def main() -> None:
    args = get_parser().parse_args()
    setup_logger()
    librispeech.prepare_bpe(args.lang_dir, args.vocab_size, args.manifest_dir, args.transcript)


if __name__ == "__main__":
    run_guarded(main)
