#!/usr/bin/env python3
"""Fine-tune a pretrained Zipformer transducer with LoRA (icefall's zipformer_lora; base frozen).

Usage:

  ./zipformer_lora/finetune.py \
    --world-size 2 \
    --num-epochs 20 \
    --start-epoch 1 \
    --exp-dir zipformer_lora/exp_lora_r8 \
    --use-fp16 1 \
    --base-lr 0.045 \
    --use-lora 1 --lora-r 8 \
    --bpe-model data/lang_bpe_500/bpe.model \
    --do-finetune 1 \
    --master-port 13022 \
    --finetune-ckpt icefall-asr-librispeech-zipformer-2023-05-15/exp/pretrained.pt \
    --max-duration 1000

  # LoRA in the joiner too, or on every linear layer; mix LibriSpeech cuts in
  ... --adapter-targets encoder,joiner
  ... --adapter-targets all_linear --use-mux 1

  # resume (no re-initialisation from --finetune-ckpt)
  ./zipformer_lora/finetune.py --do-finetune 0 --start-epoch 5 --use-lora 1 --lora-r 8 ...

LoRA is on by default (--use-lora 1), as in icefall; --lora-r must be given (icefall's
default 0 means no LoRA). Only lora_A/lora_B train (1,260,032 parameters of the default
model at rank 8). Checkpoints hold what trains plus the base checkpoint's path and
fingerprint (--save-full-checkpoints 1 for whole models). By default it trains on
gigaspeech_cuts_S.jsonl.gz and validates on gigaspeech_cuts_DEV.jsonl.gz in --manifest-dir.
The implementation is shared by the recipes (icefall/trainer.py).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # egs/librispeech/ASR

from recipes import LORA  # noqa: E402

from icefall.cli.train import main  # noqa: E402

if __name__ == "__main__":
    main(LORA.train)
