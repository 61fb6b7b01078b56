#!/usr/bin/env python3
"""Export the CTC head of a --use-ctc 1 model to ONNX for ONNX Runtime and sherpa-onnx.

Usage:

  ./zipformer/export-onnx-ctc.py \
    --use-transducer 0 \
    --use-ctc 1 \
    --tokens data/lang_bpe_500/tokens.txt \
    --use-averaged-model 0 \
    --epoch 99 \
    --avg 1 \
    --exp-dir icefall-asr-librispeech-zipformer-transducer-ctc-2023-06-13/exp

Writes model.onnx and model.int8.onnx (icefall's names) and tokens.txt to --exp-dir:
inputs x (N, T, 80) and x_lens (N,), outputs log_probs (N, T', vocab) and log_probs_len
(N,), metadata model_type zipformer2_ctc, as sherpa-onnx's OfflineRecognizer
.from_zipformer_ctc reads them. A transducer+CTC model (--use-transducer 1) exports its
CTC head only. The implementation is icefall/export/onnx.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # egs/librispeech/ASR

from recipes import BASE  # noqa: E402

from icefall.cli.export import ctc_onnx_main  # noqa: E402

if __name__ == "__main__":
    ctc_onnx_main(BASE.exp_dir)
