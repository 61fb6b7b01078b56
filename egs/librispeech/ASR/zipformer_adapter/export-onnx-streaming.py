#!/usr/bin/env python3
"""Export a causal adapter checkpoint to ONNX for streaming (sherpa-onnx's online
recognizer, ONNX Runtime).

Usage:

  # adapters baked into the encoder graph (the new domain)
  ./zipformer_adapter/export-onnx-streaming.py \
    --tokens data/lang_bpe_500/tokens.txt \
    --use-averaged-model 1 --epoch 20 --avg 10 \
    --use-adapters 1 --adapter-dim 16 \
    --exp-dir zipformer_adapter/exp_giga_finetune_adapters1_causal \
    --causal 1 --chunk-size 16 --left-context-frames 128

  # the same checkpoint without its adapters: the base model's streaming export
  ./zipformer_adapter/export-onnx-streaming.py ... --use-adapters 0 --adapter-dim 16

Writes to --exp-dir: encoder-<tag>.onnx, decoder-<tag>.onnx, joiner-<tag>.onnx, their
.int8.onnx versions and tokens.txt, <tag> being epoch-<E>-avg-<N>-chunk-<C>-left-<L>.
The encoder runs one chunk (--chunk-size frames after the frontend, 2 * C + 13 feature
frames) of a batch of streams per call, with --left-context-frames of history; the
other model flags must describe the checkpoint's model. Decode with sherpa-onnx's online
recognizer or ./zipformer_adapter/onnx_pretrained-streaming.py. The implementation is
shared by both recipes (icefall/export/onnx_streaming.py).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # egs/librispeech/ASR

from recipes import ADAPTER  # noqa: E402

from icefall.cli.export import streaming_main  # noqa: E402

if __name__ == "__main__":
    streaming_main(ADAPTER.exp_dir, ADAPTER.use_adapters)
