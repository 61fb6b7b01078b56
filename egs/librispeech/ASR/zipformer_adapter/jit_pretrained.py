#!/usr/bin/env python3
"""Transcribe sound files (16 kHz) with the TorchScript model of export.py --jit 1.

Usage:

  ./zipformer_adapter/export.py --exp-dir ./zipformer_adapter/exp \
    --tokens data/lang_bpe_500/tokens.txt \
    --epoch 30 --avg 9 \
    --use-adapters 1 --adapter-dim 16 --jit 1

  ./zipformer_adapter/jit_pretrained.py \
    --nn-model-filename ./zipformer_adapter/exp/jit_script.pt \
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
