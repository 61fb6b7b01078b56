#!/usr/bin/env python3
"""Decode test sets chunk by chunk (streaming) with a causal adapter checkpoint (adapters
on unless --use-adapters 0).

Usage:

  # GigaSpeech DEV/TEST with the adapters on, GigaSpeech scoring
  ./zipformer_adapter/streaming_decode.py --epoch 20 --avg 10 --use-averaged-model 1 \
    --exp-dir zipformer_adapter/exp_giga_finetune_adapters1_causal \
    --use-adapters 1 --adapter-dim 16 \
    --causal 1 --chunk-size 16 --left-context-frames 128 \
    --test-sets dev=gigaspeech_cuts_DEV.jsonl.gz,test=gigaspeech_cuts_TEST.jsonl.gz \
    --gigaspeech-scoring 1 --decoding-method greedy_search

  # LibriSpeech test-clean/test-other with the adapters off (the base model exactly)
  ./zipformer_adapter/streaming_decode.py --epoch 20 --avg 10 --use-averaged-model 1 \
    --exp-dir zipformer_adapter/exp_giga_finetune_adapters1_causal \
    --use-adapters 0 --adapter-dim 16 \
    --causal 1 --chunk-size 16 --left-context-frames 128

--chunk-size and --left-context-frames (one value each, frames after the frontend at
50 Hz) are the streaming configuration to decode with; the other model flags must
describe the checkpoint's model. Writes recogs-/errs-/wer-summary-<set>-<key>-<suffix>.txt
to <exp-dir>/streaming/<decoding-method>/ (adapters off: the suffix ends in
-adapters-off) and logs "For <set>, WER of different settings are:", as decode.py does.
The implementation is shared by both recipes (icefall/decode/streaming_recipe.py).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # egs/librispeech/ASR

from recipes import ADAPTER  # noqa: E402

from icefall.cli.decode import streaming_main  # noqa: E402

if __name__ == "__main__":
    streaming_main(ADAPTER.decode)
