#!/usr/bin/env python3
"""Transcribe sound files (16 kHz) with a LoRA checkpoint and a BPE model; one line per file.

Usage:

  ./zipformer_lora/pretrained.py --checkpoint zipformer_lora/exp_lora_r8/epoch-20.pt \
    --bpe-model data/lang_bpe_500/bpe.model --use-lora 1 --lora-r 8 \
    --method modified_beam_search --beam-size 4 /path/to/foo.wav

  # a base checkpoint with an adapter file on top
  ./zipformer_lora/pretrained.py --checkpoint exp/pretrained.pt \
    --adapter-file zipformer_lora/exp_lora_r8/adapter-default.pt ... /path/to/foo.wav

Model flags (--encoder-dim, ...) must describe the base model. The implementation is shared
by the recipes (icefall/decode/transcribe.py).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # egs/librispeech/ASR

from recipes import LORA  # noqa: E402

from icefall.cli.transcribe import main  # noqa: E402

if __name__ == "__main__":
    main(LORA.use_adapters, use_lora_default=LORA.use_lora)
