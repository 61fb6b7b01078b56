#!/usr/bin/env python3
"""Transcribe sound files (16 kHz) chunk by chunk with the files of
export-onnx-streaming.py: ONNX Runtime only, no torch.

Usage:

  ./zipformer/onnx_pretrained-streaming.py \
    --encoder-model-filename zipformer/exp/encoder-epoch-99-avg-1-chunk-16-left-128.onnx \
    --decoder-model-filename zipformer/exp/decoder-epoch-99-avg-1-chunk-16-left-128.onnx \
    --joiner-model-filename zipformer/exp/joiner-epoch-99-avg-1-chunk-16-left-128.onnx \
    --tokens zipformer/exp/tokens.txt \
    /path/to/foo.wav /path/to/bar.wav

Each file is streamed as sherpa-onnx's online recognizer streams it (kaldi-native-fbank
features, --tail-padding seconds of silence appended, a chunk whenever T frames are
ready, greedy search carried from chunk to chunk), so the text is sherpa-onnx's. Prints
"<file>: <text>" per file. The .int8.onnx files work the same way. The implementation is
shared by both recipes (icefall/decode/onnx_streaming.py).
"""

from icefall.cli.onnx import onnx_streaming_main

if __name__ == "__main__":
    onnx_streaming_main()
