#!/usr/bin/env python3
"""Export the averaged model as icefall's pretrained.pt, or as TorchScript (--jit 1).

Usage:

  # pretrained.pt ({"model": state_dict}): icefall's load_checkpoint(..., strict=True),
  # --finetune-ckpt, pretrained.py and decode.py (linked as epoch-9999.pt) load it
  ./zipformer_adapter/export.py \
    --exp-dir ./zipformer_adapter/exp \
    --tokens data/lang_bpe_500/tokens.txt \
    --epoch 30 \
    --avg 9 \
    --use-adapters 1 --adapter-dim 16

  # jit_script.pt, for ./zipformer_adapter/jit_pretrained.py (and icefall's)
  ./zipformer_adapter/export.py \
    --exp-dir ./zipformer_adapter/exp \
    --tokens data/lang_bpe_500/tokens.txt \
    --epoch 30 \
    --avg 9 \
    --use-adapters 1 --adapter-dim 16 \
    --jit 1

Model flags (--encoder-dim, ..., --causal) must describe the checkpoint's model. The
TorchScript model is traced (this toolkit's modules are not scriptable) inside scripted
modules with icefall's interface: model.encoder(features, feature_lengths),
model.decoder(y, need_pad), model.joiner(encoder_out, decoder_out). The implementation
is shared by both recipes (icefall/export/torchscript.py).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # egs/librispeech/ASR

from recipes import ADAPTER  # noqa: E402

from icefall.cli.export import pytorch_main  # noqa: E402

if __name__ == "__main__":
    pytorch_main(ADAPTER.exp_dir, ADAPTER.use_adapters)
