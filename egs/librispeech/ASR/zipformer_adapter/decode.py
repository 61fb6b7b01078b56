#!/usr/bin/env python3
"""Decode LibriSpeech test sets with an adapter checkpoint (adapters on unless --use-adapters 0).

Usage:

  ./zipformer_adapter/decode.py --epoch 20 --avg 10 --use-averaged-model 1 \
    --exp-dir zipformer_adapter/exp --use-adapters 0 --adapter-dim 16 \
    --max-duration 600 --decoding-method modified_beam_search --beam-size 4

Writes recogs-/errs-/wer-summary-<set>-<key>-<suffix>.txt to <exp-dir>/<decoding-method>/
and logs "For <set>, WER of different settings are:". The implementation is shared by
both recipes (icefall/decode/recipe.py).
"""

from icefall.decode.recipe import ADAPTER_DECODE, main

if __name__ == "__main__":
    main(ADAPTER_DECODE)
