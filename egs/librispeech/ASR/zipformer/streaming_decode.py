#!/usr/bin/env python3
"""Decode LibriSpeech test-clean/test-other chunk by chunk with a causal model (streaming).

Usage:

  ./zipformer/streaming_decode.py --epoch 30 --avg 9 --exp-dir zipformer/exp \
    --causal 1 --chunk-size 16 --left-context-frames 128 \
    --decoding-method greedy_search --num-decode-streams 2000

  # modified beam search, 4 hypotheses per stream
  ./zipformer/streaming_decode.py ... --decoding-method modified_beam_search \
    --num-active-paths 4

--chunk-size and --left-context-frames (one value each, frames after the frontend at
50 Hz) are the streaming configuration to decode with; the other model flags must
describe the checkpoint's model. Writes recogs-/errs-/wer-summary-<set>-<key>-<suffix>.txt
to <exp-dir>/streaming/<decoding-method>/ (the suffix ends in
chunk-<C>-left-context-<L>) and logs "For <set>, WER of different settings are:", as
decode.py does. The implementation is shared by both recipes
(icefall/decode/streaming_recipe.py).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # egs/librispeech/ASR

from recipes import BASE  # noqa: E402

from icefall.cli.decode import streaming_main  # noqa: E402

if __name__ == "__main__":
    streaming_main(BASE.decode)
