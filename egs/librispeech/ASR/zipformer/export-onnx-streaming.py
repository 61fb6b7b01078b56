#!/usr/bin/env python3
"""Export a causal transducer checkpoint to ONNX for streaming (sherpa-onnx's online
recognizer, ONNX Runtime).

Usage:

  ./zipformer/export-onnx-streaming.py \
    --tokens data/lang_bpe_500/tokens.txt \
    --use-averaged-model 0 --epoch 99 --avg 1 \
    --exp-dir icefall-asr-librispeech-streaming-zipformer-2023-05-17/exp \
    --causal 1 --chunk-size 16 --left-context-frames 128

Writes to --exp-dir: encoder-<tag>.onnx, decoder-<tag>.onnx, joiner-<tag>.onnx, their
.int8.onnx versions and tokens.txt, <tag> being epoch-<E>-avg-<N>-chunk-<C>-left-<L>.
The encoder runs one chunk (--chunk-size frames after the frontend, 2 * C + 13 feature
frames) of a batch of streams per call, with --left-context-frames of history; the
other model flags must describe the checkpoint's model. Use the files with sherpa-onnx:

  sherpa-onnx --tokens=zipformer/exp/tokens.txt \
    --encoder=.../encoder-epoch-99-avg-1-chunk-16-left-128.onnx \
    --decoder=.../decoder-epoch-99-avg-1-chunk-16-left-128.onnx \
    --joiner=.../joiner-epoch-99-avg-1-chunk-16-left-128.onnx foo.wav

or ./zipformer/onnx_pretrained-streaming.py. The implementation is shared by both
recipes (icefall/export/onnx_streaming.py).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # egs/librispeech/ASR

from recipes import BASE  # noqa: E402

from icefall.cli.export import streaming_main  # noqa: E402

if __name__ == "__main__":
    streaming_main(BASE.exp_dir, BASE.use_adapters)
