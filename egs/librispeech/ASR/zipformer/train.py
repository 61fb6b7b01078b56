#!/usr/bin/env python3
"""Train a Zipformer transducer from scratch (or fully fine-tune one).

Usage:

  # 4 GPUs, LibriSpeech 960 h, mixed precision
  ./zipformer/train.py \
    --world-size 4 \
    --num-epochs 30 \
    --start-epoch 1 \
    --use-fp16 1 \
    --exp-dir zipformer/exp \
    --max-duration 1000

  # resume from exp-dir/epoch-10.pt, or exactly from exp-dir/checkpoint-40000.pt
  ./zipformer/train.py --start-epoch 11 --exp-dir zipformer/exp
  ./zipformer/train.py --start-batch 40000 --exp-dir zipformer/exp

  # full fine-tuning of a pretrained model on new data (compare with adapters)
  ./zipformer/train.py --do-finetune 1 --finetune-ckpt exp/pretrained.pt \
    --train-cuts gigaspeech_cuts_S.jsonl.gz --valid-cuts gigaspeech_cuts_DEV.jsonl.gz

Manifests are read from --manifest-dir (data/fbank); see --train-cuts / --valid-cuts.
The training loop lives in icefall/trainer.py and is shared with zipformer_adapter/.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # egs/librispeech/ASR

from recipes import BASE  # noqa: E402

from icefall.cli.train import main  # noqa: E402

if __name__ == "__main__":
    main(BASE.train)
