#!/usr/bin/env python3
"""Export the averaged model as icefall's pretrained.pt, or as TorchScript (--jit 1).

Usage:

  # pretrained.pt ({"model": state_dict}): icefall's load_checkpoint(..., strict=True),
  # --finetune-ckpt, pretrained.py and decode.py (linked as epoch-9999.pt) load it
  ./zipformer/export.py \
    --exp-dir ./zipformer/exp \
    --tokens data/lang_bpe_500/tokens.txt \
    --epoch 30 \
    --avg 9

  # jit_script.pt, for ./zipformer/jit_pretrained.py (and icefall's)
  ./zipformer/export.py \
    --exp-dir ./zipformer/exp \
    --tokens data/lang_bpe_500/tokens.txt \
    --epoch 30 \
    --avg 9 \
    --jit 1

  # the base model out of an adapter checkpoint (adapter keys left out: icefall's zipformer
  # model loads it)
  ./zipformer/export.py --tokens data/lang_bpe_500/tokens.txt --epoch 20 --avg 10 \
    --use-adapters 0 --adapter-dim 16 \
    --exp-dir zipformer_adapter/exp_giga_finetune_adapters1_adapter_dim16

Model flags (--encoder-dim, ..., --causal) must describe the checkpoint's model. The
TorchScript model is traced (this toolkit's modules are not scriptable) inside scripted
modules with icefall's interface: model.encoder(features, feature_lengths),
model.decoder(y, need_pad), model.joiner(encoder_out, decoder_out). The implementation
is shared by both recipes (icefall/export/torchscript.py).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # egs/librispeech/ASR

from recipes import BASE  # noqa: E402

from icefall.cli.export import pytorch_main  # noqa: E402

if __name__ == "__main__":
    pytorch_main(BASE.exp_dir, BASE.use_adapters)
