#!/usr/bin/env python3
"""Transcribe sound files (16 kHz) with the TorchScript model of export.py --jit 1.

Usage:

  ./zipformer/export.py --exp-dir ./zipformer/exp \
    --tokens data/lang_bpe_500/tokens.txt \
    --epoch 30 --avg 9 --jit 1

  ./zipformer/jit_pretrained.py \
    --nn-model-filename ./zipformer/exp/jit_script.pt \
    --tokens ./data/lang_bpe_500/tokens.txt \
    /path/to/foo.wav \
    /path/to/bar.wav

Greedy search, one symbol per frame (the words of pretrained.py --method greedy_search);
the features are pretrained.py's. Prints "<file>: <text>" per file. icefall's own
jit_script.pt works too. The implementation is shared by both recipes
(icefall/decode/jit.py).
"""

from icefall.cli.transcribe import jit_main

if __name__ == "__main__":
    jit_main()
