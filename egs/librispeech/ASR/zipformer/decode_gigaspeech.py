#!/usr/bin/env python3
"""Decode GigaSpeech DEV/TEST with GigaSpeech scoring normalisation.

Usage:

  # the LibriSpeech model on the new domain (icefall pretrained.pt linked as epoch-99.pt)
  ./zipformer/decode_gigaspeech.py --epoch 99 --avg 1 \
    --exp-dir icefall-asr-librispeech-zipformer-2023-05-15/exp \
    --use-averaged-model 0 --max-duration 1000 --decoding-method greedy_search

Writes recogs-/errs-/wer-summary-<set>-<key>-<suffix>.txt to <exp-dir>/<decoding-method>/
and logs "For <set>, WER of different settings are:". The implementation is shared by
both recipes (icefall/decode/recipe.py).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # egs/librispeech/ASR

from recipes import BASE  # noqa: E402

from icefall.cli.decode import main  # noqa: E402

if __name__ == "__main__":
    main(BASE.decode_gigaspeech)
