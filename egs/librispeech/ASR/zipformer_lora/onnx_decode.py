#!/usr/bin/env python3
"""WER of exported ONNX models on GigaSpeech dev/test (ONNX Runtime, GigaSpeech scoring).

Usage:

  ./zipformer_lora/onnx_decode.py \
    --encoder-model-filename zipformer_lora/exp/encoder-epoch-20-avg-10.onnx \
    --decoder-model-filename zipformer_lora/exp/decoder-epoch-20-avg-10.onnx \
    --joiner-model-filename zipformer_lora/exp/joiner-epoch-20-avg-10.onnx \
    --tokens zipformer_lora/exp/tokens.txt \
    --exp-dir zipformer_lora/exp --max-duration 600

  # an export with --use-lora 0 on LibriSpeech
  ./zipformer_lora/onnx_decode.py ... --gigaspeech-scoring 0 \
    --test-sets test-clean=librispeech_cuts_test-clean.jsonl.gz,\
test-other=librispeech_cuts_test-other.jsonl.gz

Greedy search as sherpa-onnx does it. Writes recogs-/errs-/wer-summary-<set>-
greedy_search-<tag>.txt to <exp-dir>/onnx-greedy_search/ and logs "For <set>, WER of
different settings are:", as decode.py does. The implementation is shared by the
recipes (icefall/decode/recipe.py).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # egs/librispeech/ASR

from recipes import LORA  # noqa: E402

from icefall.cli.decode import onnx_main  # noqa: E402

if __name__ == "__main__":
    onnx_main(LORA.decode_gigaspeech)
