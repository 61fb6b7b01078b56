"""What the three LibriSpeech recipes default to: their folders, whether they train adapters
(residual ones or LoRA), and the manifests (in --manifest-dir, written by ./prepare.sh) they
train, validate and decode on. The scripts of zipformer/, zipformer_adapter/ and
zipformer_lora/ import this file; the training, decoding and export code is the library's
(icefall/), shared by all three.
"""

from __future__ import annotations

from dataclasses import dataclass

from icefall.cli.decode import DecodeRecipe
from icefall.cli.train import TrainRecipe

# LibriSpeech (the pretrained model's domain) and GigaSpeech (the adapter recipe's new one).
LIBRISPEECH_TRAIN = "librispeech_cuts_train-all-shuf.jsonl.gz"
LIBRISPEECH_DEV = "librispeech_cuts_dev-clean.jsonl.gz,librispeech_cuts_dev-other.jsonl.gz"
LIBRISPEECH_TEST_SETS = ("test-clean=librispeech_cuts_test-clean.jsonl.gz,"
                         "test-other=librispeech_cuts_test-other.jsonl.gz")
GIGASPEECH_TRAIN = "gigaspeech_cuts_S.jsonl.gz"
GIGASPEECH_DEV = "gigaspeech_cuts_DEV.jsonl.gz"
GIGASPEECH_TEST_SETS = "dev=gigaspeech_cuts_DEV.jsonl.gz,test=gigaspeech_cuts_TEST.jsonl.gz"


@dataclass(frozen=True)
class Recipe:
    """One recipe folder's defaults, script by script."""

    exp_dir: str
    use_adapters: bool
    train: TrainRecipe
    decode: DecodeRecipe
    decode_gigaspeech: DecodeRecipe
    use_lora: bool = False


def _recipe(exp_dir: str, adapters: bool, train: TrainRecipe, lora: bool = False) -> Recipe:
    return Recipe(exp_dir, adapters, train,
                  DecodeRecipe(exp_dir, adapters, LIBRISPEECH_TEST_SETS, False, lora),
                  DecodeRecipe(exp_dir, adapters, GIGASPEECH_TEST_SETS, True, lora), lora)


# zipformer/: a Zipformer transducer trained on LibriSpeech (or fully fine-tuned).
BASE = _recipe("zipformer/exp", False, TrainRecipe(
    "zipformer/exp", use_adapters=False, do_finetune=False, train_cuts=LIBRISPEECH_TRAIN,
    valid_cuts=LIBRISPEECH_DEV))

# zipformer_adapter/: adapters fine-tuned on GigaSpeech S, the LibriSpeech model frozen;
# --use-mux 1 mixes LibriSpeech training cuts in.
ADAPTER = _recipe("zipformer_adapter/exp", True, TrainRecipe(
    "zipformer_adapter/exp", use_adapters=True, do_finetune=True, train_cuts=GIGASPEECH_TRAIN,
    valid_cuts=GIGASPEECH_DEV, mux_cuts=LIBRISPEECH_TRAIN))

# zipformer_lora/: LoRA (icefall's zipformer_lora: --use-lora 1 --lora-r R) fine-tuned on
# GigaSpeech S, the LibriSpeech model frozen; LoRA on by default, as in icefall.
LORA = _recipe("zipformer_lora/exp", False, TrainRecipe(
    "zipformer_lora/exp", use_adapters=False, do_finetune=True, train_cuts=GIGASPEECH_TRAIN,
    valid_cuts=GIGASPEECH_DEV, mux_cuts=LIBRISPEECH_TRAIN, use_lora=True), lora=True)
