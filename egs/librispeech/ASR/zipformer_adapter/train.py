#!/usr/bin/env python3
"""Fine-tune a pretrained Zipformer transducer with residual adapters (base frozen).

Usage:

  ./zipformer_adapter/train.py \
    --world-size 2 \
    --num-epochs 20 \
    --start-epoch 1 \
    --exp-dir zipformer_adapter/exp_giga_finetune_adapters1_adapter_dim16 \
    --use-fp16 1 \
    --base-lr 0.045 \
    --use-adapters 1 --adapter-dim 16 \
    --bpe-model data/lang_bpe_500/bpe.model \
    --do-finetune 1 \
    --master-port 13022 \
    --finetune-ckpt icefall-asr-librispeech-zipformer-2023-05-15/exp/pretrained.pt \
    --max-duration 1000

  # keep the original domain in view: mix LibriSpeech cuts into the GigaSpeech ones
  ... --use-mux 1 --mux-cuts librispeech_cuts_train-all-shuf.jsonl.gz

  # full fine-tuning from the same checkpoint, for comparison
  ... --use-adapters 0 --do-finetune 1

  # adapters in the joiner too, named; or LoRA (as zipformer_lora/finetune.py)
  ... --adapter-targets encoder,joiner --adapter-name podcasts
  ... --use-adapters 0 --use-lora 1 --lora-r 8

  # resume an adapter run (no re-initialisation from --finetune-ckpt)
  ./zipformer_adapter/train.py --do-finetune 0 --start-epoch 5 --exp-dir ...

Only adapter parameters train; the log states
"A total of 761344 trainable parameters (1.148% of the whole model)" for the default
model with --adapter-dim 16. Checkpoints hold what trains plus the base checkpoint's path
and fingerprint (--save-full-checkpoints 1 for whole models); export-adapter.py writes
adapter-<name>.pt. By default it trains on gigaspeech_cuts_S.jsonl.gz and validates on
gigaspeech_cuts_DEV.jsonl.gz in --manifest-dir (see --train-cuts).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # egs/librispeech/ASR

from recipes import ADAPTER  # noqa: E402

from icefall.cli.train import main  # noqa: E402

if __name__ == "__main__":
    main(ADAPTER.train)
