#!/usr/bin/env python3
"""Export an adapter checkpoint to ONNX for ONNX Runtime and sherpa-onnx.

Usage:

  # adapters baked into the encoder graph (the new domain)
  ./zipformer_adapter/export-onnx.py \
    --tokens data/lang_bpe_500/tokens.txt \
    --use-averaged-model 1 --epoch 20 --avg 10 \
    --use-adapters 1 --adapter-dim 16 \
    --exp-dir zipformer_adapter/exp_giga_finetune_adapters1_adapter_dim16

  # the same checkpoint without its adapters: exactly the base model's export
  ./zipformer_adapter/export-onnx.py --tokens data/lang_bpe_500/tokens.txt \
    --use-averaged-model 1 --epoch 20 --avg 10 --use-adapters 0 --adapter-dim 16 \
    --exp-dir zipformer_adapter/exp_giga_finetune_adapters1_adapter_dim16

Writes to --exp-dir: encoder-<tag>.onnx, decoder-<tag>.onnx, joiner-<tag>.onnx, their
.int8.onnx versions and tokens.txt, <tag> being epoch-<E>-avg-<N> (or iter-<B>-avg-<N>).
Model flags (--encoder-dim, ..., --causal) must describe the checkpoint's model. Decode
with ./zipformer_adapter/onnx_pretrained.py, ./zipformer_adapter/onnx_decode.py or
sherpa-onnx. The implementation is shared by both recipes (icefall/export/onnx.py).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # egs/librispeech/ASR

from recipes import ADAPTER  # noqa: E402

from icefall.cli.export import main  # noqa: E402

if __name__ == "__main__":
    main(ADAPTER.exp_dir, ADAPTER.use_adapters)
