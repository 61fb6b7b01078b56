#!/usr/bin/env python3
"""Export a transducer checkpoint to ONNX for ONNX Runtime and sherpa-onnx.

Usage:

  ./zipformer/export-onnx.py \
    --tokens data/lang_bpe_500/tokens.txt \
    --use-averaged-model 0 --epoch 99 --avg 1 \
    --exp-dir icefall-asr-librispeech-zipformer-2023-05-15/exp

  # the base model out of an adapter checkpoint (adapters left out of the graph)
  ./zipformer/export-onnx.py --tokens data/lang_bpe_500/tokens.txt \
    --epoch 20 --avg 10 --use-adapters 0 --adapter-dim 16 \
    --exp-dir zipformer_adapter/exp_giga_finetune_adapters1_adapter_dim16

Writes to --exp-dir: encoder-<tag>.onnx, decoder-<tag>.onnx, joiner-<tag>.onnx, their
.int8.onnx versions and tokens.txt, <tag> being epoch-<E>-avg-<N> (or iter-<B>-avg-<N>).
Model flags (--encoder-dim, ..., --causal) must describe the checkpoint's model. Decode
with ./zipformer/onnx_pretrained.py, ./zipformer/onnx_decode.py or sherpa-onnx. The
implementation is shared by both recipes (icefall/export/onnx.py).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # egs/librispeech/ASR

from recipes import BASE  # noqa: E402

from icefall.cli.export import main  # noqa: E402

if __name__ == "__main__":
    main(BASE.exp_dir, BASE.use_adapters)
