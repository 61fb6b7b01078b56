#!/usr/bin/env python3
"""Decode GigaSpeech DEV/TEST with an adapter checkpoint and GigaSpeech scoring.

Usage:

  ./zipformer_adapter/decode_gigaspeech.py --epoch 20 --avg 10 --use-averaged-model 1 \
    --exp-dir zipformer_adapter/exp --use-adapters 1 --adapter-dim 16 \
    --max-duration 600 --decoding-method greedy_search

  # the base checkpoint with adapter files on top, one chosen by name
  ./zipformer_adapter/decode_gigaspeech.py --epoch 99 --avg 1 --use-averaged-model 0 \
    --exp-dir icefall-asr-librispeech-zipformer-2023-05-15/exp \
    --adapter-file adapter-podcasts.pt --adapter-file adapter-meetings.pt \
    --adapter-name podcasts

Writes recogs-/errs-/wer-summary-<set>-<key>-<suffix>.txt to <exp-dir>/<decoding-method>/
and logs "For <set>, WER of different settings are:". The implementation is shared by
both recipes (icefall/decode/recipe.py).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # egs/librispeech/ASR

from recipes import ADAPTER  # noqa: E402

from icefall.cli.decode import main  # noqa: E402

if __name__ == "__main__":
    main(ADAPTER.decode_gigaspeech)
