#!/usr/bin/env python3
"""Fine-tune a pretrained Zipformer transducer on GigaSpeech, every parameter trained
(icefall's zipformer/finetune.py; compare with zipformer_adapter/train.py).

Usage:

  # without mux (GigaSpeech S only)
  ./zipformer/finetune.py \
    --world-size 4 \
    --num-epochs 30 \
    --start-epoch 1 \
    --use-fp16 1 \
    --do-finetune 1 \
    --finetune-ckpt icefall-asr-librispeech-zipformer-2023-05-15/exp/pretrained.pt \
    --base-lr 0.0045 \
    --use-mux 0 \
    --exp-dir zipformer/exp_finetune \
    --max-duration 1000

  # with mux: LibriSpeech training cuts mixed in, to keep the original domain
  ./zipformer/finetune.py ... --use-mux 1

  # resume (--do-finetune 0: --finetune-ckpt is not loaded again; the model's schedules
  # continue where the run had them)
  ./zipformer/finetune.py --do-finetune 0 --start-epoch 11 --exp-dir zipformer/exp_finetune

icefall's defaults: --base-lr 0.0045 --lr-batches 100000 --lr-epochs 100, the model's
schedules (dropout, layer skipping) starting 100000 batches in, --do-finetune 1. It trains
on gigaspeech_cuts_S.jsonl.gz (or icefall's cuts_S.jsonl.gz) in --manifest-dir and
validates on GigaSpeech DEV and, when its manifests are there, LibriSpeech dev-clean +
dev-other, each set logged and written to TensorBoard under its name.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # egs/librispeech/ASR

from recipes import FINETUNE as RECIPE  # noqa: E402

from icefall.cli.train import main  # noqa: E402

if __name__ == "__main__":
    main(RECIPE)
