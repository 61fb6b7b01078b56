#!/usr/bin/env python3
"""Train the demo's BPE model on the training transcripts of both domains.

Usage (from egs/synth/ASR):

    python local/train_bpe_model.py --lang-dir data/lang_bpe_200 --vocab-size 200

The BPE model plays the part of LibriSpeech's BPE-500, whose pieces cover the English of
both corpora; the demo's synthetic text (about 190 words) allows at most 238 pieces, and
the demo uses 200. Writes ``bpe.model`` and ``tokens.txt`` (``<blk>`` 0, ``<sos/eos>`` 1,
``<unk>`` 2).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from lhotse import load_manifest_lazy

from icefall.cli import run_guarded
from icefall.cli.flags import ArgumentParser, positive_int
from icefall.data import train_bpe_model


def main() -> None:
    p = ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lang-dir", type=Path, default=Path("data/lang_bpe_200"))
    p.add_argument("--vocab-size", type=positive_int, default=200)
    p.add_argument("--cuts", type=Path, nargs="+",
                   default=[Path("data/fbank/synth_a_cuts_train.jsonl.gz"),
                            Path("data/fbank/synth_b_cuts_train.jsonl.gz")])
    args = p.parse_args()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    texts = [s.text for path in args.cuts for c in load_manifest_lazy(path)
             for s in c.supervisions]
    train_bpe_model(texts, args.lang_dir, vocab_size=args.vocab_size)


if __name__ == "__main__":
    run_guarded(main)
