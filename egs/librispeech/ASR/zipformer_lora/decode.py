#!/usr/bin/env python3
"""Decode LibriSpeech test sets with a LoRA checkpoint (LoRA on unless --use-lora 0).

Usage:

  ./zipformer_lora/decode.py --epoch 20 --avg 10 --use-averaged-model 1 \
    --exp-dir zipformer_lora/exp_lora_r8 --use-lora 0 \
    --max-duration 600 --decoding-method modified_beam_search --beam-size 4

Writes recogs-/errs-/wer-summary-<set>-<key>-<suffix>.txt to <exp-dir>/<decoding-method>/
and logs "For <set>, WER of different settings are:". The implementation is shared by the
recipes (icefall/decode/recipe.py).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # egs/librispeech/ASR

from recipes import LORA  # noqa: E402

from icefall.cli.decode import main  # noqa: E402

if __name__ == "__main__":
    main(LORA.decode)
