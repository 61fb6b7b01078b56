#!/usr/bin/env python3
"""Transcribe sound files (any sample rate) with a checkpoint and a BPE model; one line per file.

Usage:

  ./zipformer_adapter/pretrained.py --checkpoint zipformer_adapter/exp/epoch-20.pt \
    --bpe-model data/lang_bpe_500/bpe.model --use-adapters 1 --adapter-dim 16 \
    --method modified_beam_search --beam-size 4 /path/to/foo.wav

Model flags (--encoder-dim, ...) must describe the checkpoint's model. The implementation
is shared by both recipes (icefall/decode/transcribe.py).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # egs/librispeech/ASR

from recipes import ADAPTER  # noqa: E402

from icefall.cli.transcribe import main  # noqa: E402

if __name__ == "__main__":
    main(ADAPTER.use_adapters)
