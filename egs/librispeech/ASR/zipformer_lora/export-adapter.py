#!/usr/bin/env python3
"""Write the LoRA weights of a run as one small file, adapter-<name>.pt, to use on top of the
base model (decode.py / export-onnx.py / pretrained.py --adapter-file).

Usage:

  ./zipformer_lora/export-adapter.py --epoch 20 --avg 10 --use-averaged-model 1 \
    --exp-dir zipformer_lora/exp_lora_r8 --tokens data/lang_bpe_500/tokens.txt

Writes <exp-dir>/adapter-<name>.pt (--adapter-out to choose): the (averaged) lora_A/lora_B,
the configuration (kind lora, rank, targets, name) and the fingerprint of the base model.
The implementation is shared by the recipes (icefall/export/adapter.py).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # egs/librispeech/ASR

from recipes import LORA  # noqa: E402

from icefall.cli.export import adapter_main  # noqa: E402

if __name__ == "__main__":
    adapter_main(LORA.exp_dir, use_lora_default=LORA.use_lora)
