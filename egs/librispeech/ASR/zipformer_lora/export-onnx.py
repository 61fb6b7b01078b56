#!/usr/bin/env python3
"""Export a LoRA checkpoint to ONNX with LoRA merged into the weights: the graphs, their size
and their speed are the base model's (as icefall's zipformer_lora export).

Usage:

  ./zipformer_lora/export-onnx.py --tokens data/lang_bpe_500/tokens.txt \
    --use-averaged-model 1 --epoch 20 --avg 10 \
    --use-lora 1 --lora-r 8 --exp-dir zipformer_lora/exp_lora_r8

Writes to --exp-dir: encoder-<tag>.onnx, decoder-<tag>.onnx, joiner-<tag>.onnx, their
.int8.onnx versions and tokens.txt, <tag> being epoch-<E>-avg-<N> (or iter-<B>-avg-<N>).
Model flags must describe the base model. Decode with ./zipformer_lora/onnx_decode.py,
./zipformer_lora/onnx_pretrained.py or sherpa-onnx. The implementation is shared by the
recipes (icefall/export/onnx.py).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # egs/librispeech/ASR

from recipes import LORA  # noqa: E402

from icefall.cli.export import main  # noqa: E402

if __name__ == "__main__":
    main(LORA.exp_dir, LORA.use_adapters, use_lora_default=LORA.use_lora)
