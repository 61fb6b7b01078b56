#!/usr/bin/env python3
"""Decode LibriSpeech test-clean/test-other with the CTC head of a --use-ctc 1 model.

Usage:

  # ctc-greedy-search
  ./zipformer/ctc_decode.py \
    --epoch 30 \
    --avg 15 \
    --exp-dir ./zipformer/exp \
    --use-ctc 1 \
    --max-duration 600 \
    --decoding-method ctc-greedy-search

  # ctc-prefix-beam-search
  ./zipformer/ctc_decode.py --epoch 30 --avg 15 --exp-dir ./zipformer/exp --use-ctc 1 \
    --max-duration 600 --decoding-method ctc-prefix-beam-search --beam 4

Writes recogs-/errs-/wer-summary-<set>-<key>-<suffix>.txt to <exp-dir>/<decoding-method>/
(key ctc-greedy-search or prefix-beam-search, icefall's) and logs "For <set>, WER of
different settings are:", as decode.py does. --use-ctc defaults to 1 here. icefall's
lattice methods (ctc-decoding, 1best, nbest, HLG rescoring) need k2 and are not offered.
The implementation is shared by both recipes (icefall/decode/ctc.py, recipe.py).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # egs/librispeech/ASR

from recipes import BASE  # noqa: E402

from icefall.cli.decode import ctc_main  # noqa: E402

if __name__ == "__main__":
    ctc_main(BASE.decode)
