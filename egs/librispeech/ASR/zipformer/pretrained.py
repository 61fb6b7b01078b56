#!/usr/bin/env python3
"""Transcribe sound files (16 kHz) with a checkpoint and a BPE model; one line per file.

Usage:

  ./zipformer/pretrained.py \
    --checkpoint icefall-asr-librispeech-zipformer-2023-05-15/exp/pretrained.pt \
    --bpe-model data/lang_bpe_500/bpe.model --method greedy_search \
    /path/to/foo.wav /path/to/bar.wav

Model flags (--encoder-dim, ...) must describe the checkpoint's model. The implementation
is shared by both recipes (icefall/decode/transcribe.py).
"""

from icefall.decode.transcribe import main

if __name__ == "__main__":
    main(use_adapters_default=False)
