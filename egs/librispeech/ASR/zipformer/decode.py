#!/usr/bin/env python3
"""Decode LibriSpeech test-clean/test-other (adapters off unless --use-adapters 1).

Usage:

  ./zipformer/decode.py --epoch 30 --avg 9 --exp-dir zipformer/exp \
    --max-duration 600 --decoding-method greedy_search

  # an adapter checkpoint, adapters on (new domain) or off (the base model exactly)
  ./zipformer/decode.py --epoch 20 --avg 10 --use-averaged-model 1 \
    --exp-dir zipformer_adapter/exp_giga_finetune_adapters1_adapter_dim16 \
    --max-duration 600 --use-adapters 0 --adapter-dim 16 --decoding-method greedy_search

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
    main(BASE.decode)
