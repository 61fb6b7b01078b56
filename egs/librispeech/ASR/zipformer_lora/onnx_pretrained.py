#!/usr/bin/env python3
"""Transcribe sound files (16 kHz) with exported ONNX models: ONNX Runtime only, no torch.

Usage:

  ./zipformer_lora/onnx_pretrained.py \
    --encoder-model-filename zipformer_lora/exp/encoder-epoch-99-avg-1.onnx \
    --decoder-model-filename zipformer_lora/exp/decoder-epoch-99-avg-1.onnx \
    --joiner-model-filename zipformer_lora/exp/joiner-epoch-99-avg-1.onnx \
    --tokens zipformer_lora/exp/tokens.txt \
    /path/to/foo.wav /path/to/bar.wav

Features are kaldi-native-fbank's (80 bins, dither 0, as sherpa-onnx computes them); the
search is greedy, in numpy. Prints "<file>: <text>" per file. The .int8.onnx files work
the same way. The implementation is shared by the recipes (icefall/decode/onnx_runtime.py).
"""

from icefall.cli.onnx import onnx_main

if __name__ == "__main__":
    onnx_main()
