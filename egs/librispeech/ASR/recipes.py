"""What the LibriSpeech recipes default to: their folders, whether they train adapters
(residual ones or LoRA), the manifests (in --manifest-dir, written by ./prepare.sh) they
train, validate and decode on, and the learning-rate schedules. The scripts of zipformer/,
zipformer_adapter/ and zipformer_lora/ import this file; the training, decoding and export
code is the library's (icefall/), shared by all.

Manifest names: ``a|b`` means the first of the two that exists (GigaSpeech's manifests are
``gigaspeech_cuts_<part>.jsonl.gz`` when ./prepare.sh made them, ``cuts_<part>.jsonl.gz``
when icefall's GigaSpeech recipe did); ``a+b`` joins two manifests into one set;
``NAME=...`` names a validation or test set.
"""

from __future__ import annotations

from dataclasses import dataclass

from icefall.cli.decode import DecodeRecipe
from icefall.cli.train import TrainRecipe

# LibriSpeech (the pretrained model's domain) and GigaSpeech (the adapter recipe's new one).
LIBRISPEECH_TRAIN = "librispeech_cuts_train-all-shuf.jsonl.gz"
LIBRISPEECH_DEV = "librispeech_cuts_dev-clean.jsonl.gz+librispeech_cuts_dev-other.jsonl.gz"
LIBRISPEECH_TEST_SETS = ("test-clean=librispeech_cuts_test-clean.jsonl.gz,"
                         "test-other=librispeech_cuts_test-other.jsonl.gz")


def gigaspeech(part: str) -> str:
    """A GigaSpeech manifest under this toolkit's name or icefall's."""
    return f"gigaspeech_cuts_{part}.jsonl.gz|cuts_{part}.jsonl.gz"


GIGASPEECH_TRAIN = gigaspeech("S")
GIGASPEECH_DEV = gigaspeech("DEV")
GIGASPEECH_TEST_SETS = f"dev={gigaspeech('DEV')},test={gigaspeech('TEST')}"
# Fine-tuning validates on the new domain (which decides best-valid-loss.pt) and, when its
# manifests are there, on the original one, as icefall's fine-tuning scripts do.
NEW_DOMAIN_VALID = f"gigaspeech={GIGASPEECH_DEV}"
ORIGINAL_DOMAIN_VALID = f"librispeech={LIBRISPEECH_DEV}"


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

# zipformer/finetune.py: icefall's full fine-tuning on GigaSpeech S (--use-mux 1 mixes
# LibriSpeech in), with its small, slowly decaying learning rate and schedules that start
# 100000 batches in.
FINETUNE = TrainRecipe(
    "zipformer/exp_finetune", use_adapters=False, do_finetune=True,
    train_cuts=GIGASPEECH_TRAIN, valid_cuts=NEW_DOMAIN_VALID, mux_cuts=LIBRISPEECH_TRAIN,
    optional_valid_cuts=ORIGINAL_DOMAIN_VALID, base_lr=0.0045, lr_batches=100000,
    lr_epochs=100, finetune_batch_count=100_000)

# zipformer_adapter/: adapters fine-tuned on GigaSpeech S, the LibriSpeech model frozen;
# --use-mux 1 mixes LibriSpeech training cuts in.
ADAPTER = _recipe("zipformer_adapter/exp", True, TrainRecipe(
    "zipformer_adapter/exp", use_adapters=True, do_finetune=True, train_cuts=GIGASPEECH_TRAIN,
    valid_cuts=NEW_DOMAIN_VALID, mux_cuts=LIBRISPEECH_TRAIN,
    optional_valid_cuts=ORIGINAL_DOMAIN_VALID))

# zipformer_lora/: LoRA (icefall's zipformer_lora: --use-lora 1 --lora-r R) fine-tuned on
# GigaSpeech S, the LibriSpeech model frozen; LoRA on by default, as in icefall.
LORA = _recipe("zipformer_lora/exp", False, TrainRecipe(
    "zipformer_lora/exp", use_adapters=False, do_finetune=True, train_cuts=GIGASPEECH_TRAIN,
    valid_cuts=NEW_DOMAIN_VALID, mux_cuts=LIBRISPEECH_TRAIN,
    optional_valid_cuts=ORIGINAL_DOMAIN_VALID, use_lora=True), lora=True)
