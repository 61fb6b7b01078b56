#!/usr/bin/env python3
"""Write the adapters of an adapter run as one small file, adapter-<name>.pt, to share and to
use on top of the base model (decode.py / export-onnx.py / pretrained.py --adapter-file).

Usage:

  ./zipformer_adapter/export-adapter.py --epoch 20 --avg 10 --use-averaged-model 1 \
    --exp-dir zipformer_adapter/exp_giga_finetune_adapters1_adapter_dim16 \
    --tokens data/lang_bpe_500/tokens.txt

  # then, on top of the LibriSpeech model (its pretrained.pt linked as epoch-99.pt)
  ./zipformer_adapter/decode_gigaspeech.py --epoch 99 --avg 1 --use-averaged-model 0 \
    --exp-dir icefall-asr-librispeech-zipformer-2023-05-15/exp \
    --adapter-file zipformer_adapter/exp_giga_finetune_adapters1_adapter_dim16/adapter-default.pt

Writes <exp-dir>/adapter-<name>.pt (--adapter-out to choose; --new-adapter-name to rename):
the adapter weights of the chosen (averaged) checkpoints, their configuration (kind, dim,
targets, name) and the fingerprint of the base model they were trained on (3 MB for the
default model at --adapter-dim 16). Model flags not given come from the checkpoint, as in
decode.py. The implementation is shared by the recipes (icefall/export/adapter.py).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # egs/librispeech/ASR

from recipes import ADAPTER  # noqa: E402

from icefall.cli.export import adapter_main  # noqa: E402

if __name__ == "__main__":
    adapter_main(ADAPTER.exp_dir)
