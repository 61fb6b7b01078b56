#!/usr/bin/env python3
"""WER of exported ONNX models on LibriSpeech test-clean/test-other (ONNX Runtime).

Usage:

  ./zipformer/onnx_decode.py \
    --encoder-model-filename zipformer/exp/encoder-epoch-99-avg-1.onnx \
    --decoder-model-filename zipformer/exp/decoder-epoch-99-avg-1.onnx \
    --joiner-model-filename zipformer/exp/joiner-epoch-99-avg-1.onnx \
    --tokens zipformer/exp/tokens.txt \
    --exp-dir zipformer/exp --max-duration 600

Greedy search as sherpa-onnx does it. Writes recogs-/errs-/wer-summary-<set>-
greedy_search-<tag>.txt to <exp-dir>/onnx-greedy_search/ and logs "For <set>, WER of
different settings are:", as decode.py does. The implementation is shared by both
recipes (icefall/export/decode.py).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # egs/librispeech/ASR

from recipes import BASE  # noqa: E402

from icefall.cli.decode import onnx_main  # noqa: E402

if __name__ == "__main__":
    onnx_main(BASE.decode)
