"""train.py of both recipes: icefall's training flags and ``main``.

A recipe script names what differs (its folder, its manifests, whether it trains adapters)
in a :class:`TrainRecipe` and calls :func:`main` with it; the training itself is
:mod:`icefall.trainer`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from torch.multiprocessing import ProcessExitedException

from icefall.cli import run_guarded
from icefall.cli.dataloading import add_dataloading_arguments
from icefall.cli.flags import (
    ArgumentParser,
    int_from,
    nonnegative_float,
    nonnegative_int,
    port,
    positive_float,
    positive_int,
    str2bool,
)
from icefall.cli.model import add_adapter_arguments, add_model_arguments, given_flags
from icefall.data.manifests import find_manifest, named_sets_text, parse_named_sets
from icefall.dist import launch
from icefall.trainer import prepare_training, run_rank
from icefall.utils import AttributeDict


@dataclass(frozen=True)
class TrainRecipe:
    """A recipe's flag defaults: its exp-dir, whether it trains adapters on a pretrained
    model, the manifests (in --manifest-dir) it trains, validates and mixes in, and its
    learning-rate schedule.

    ``valid_cuts`` are always validated on (unless --valid-cuts is given);
    ``optional_valid_cuts`` too when all their manifests exist (the original domain's,
    which a fine-tuning machine may not have). Manifest names may give alternatives as
    ``a|b`` (:func:`icefall.data.manifests.find_manifest`).
    """

    exp_dir: str
    use_adapters: bool
    do_finetune: bool
    train_cuts: str
    valid_cuts: str
    mux_cuts: str = ""
    optional_valid_cuts: str = ""
    base_lr: float = 0.045
    lr_batches: float = 7500
    lr_epochs: float = 3.5
    # Where the model's schedules (dropout, layer skipping, ...) start when fine-tuning a
    # pretrained model: batches at --ref-duration (icefall's offsets differ per script).
    finetune_batch_count: float = 1_000_000
    use_lora: bool = False


def add_training_arguments(parser: argparse.ArgumentParser, recipe: TrainRecipe) -> None:
    """icefall's training flags with its defaults (and a few for short runs)."""
    a = parser.add_argument
    a("--world-size", type=positive_int, default=1, help="Number of processes (GPUs) for DDP.")
    a("--master-port", type=port, default=12354, help="Master port for DDP.")
    a("--tensorboard", type=str2bool, default=True, help="Write TensorBoard scalars.")
    a("--num-epochs", type=positive_int, default=30, help="Number of epochs to train.")
    a("--start-epoch", type=positive_int, default=1,
      help="Resume from exp-dir/epoch-{start_epoch-1}.pt when larger than 1.")
    a("--start-batch", type=nonnegative_int, default=0,
      help="If positive, resume exactly from exp-dir/checkpoint-{start_batch}.pt.")
    a("--exp-dir", type=Path, default=Path(recipe.exp_dir),
      help="Folder of checkpoints, logs and TensorBoard files.")
    a("--bpe-model", type=Path, default=Path("data/lang_bpe_500/bpe.model"),
      help="Path to the BPE model.")
    a("--base-lr", type=positive_float, default=recipe.base_lr, help="The base learning rate.")
    a("--lr-batches", type=positive_float, default=recipe.lr_batches,
      help="Batches over which the learning rate decays (Eden).")
    a("--lr-epochs", type=positive_float, default=recipe.lr_epochs,
      help="Epochs over which the learning rate decays (Eden).")
    a("--lr-warmup-batches", type=nonnegative_float, default=500.0,
      help="Eden's linear warm-up of the learning rate, in batches.")
    a("--ref-duration", type=positive_float, default=600,
      help="Reference batch duration (s) for the model's internal schedules: they advance "
           "by max-duration * world-size / ref-duration per batch.")
    a("--prune-range", type=int_from(2), default=5, help="Symbols kept per frame by pruning.")
    a("--lm-scale", type=nonnegative_float, default=0.25, help="LM smoothing of the simple loss.")
    a("--am-scale", type=nonnegative_float, default=0.0, help="AM smoothing of the simple loss.")
    a("--simple-loss-scale", type=nonnegative_float, default=0.5,
      help="Weight of the simple loss after --warm-step batches.")
    a("--ctc-loss-scale", type=nonnegative_float, default=0.2, help="Weight of the CTC loss.")
    a("--warm-step", type=positive_int, default=2000,
      help="Batches over which the simple loss weight falls from 1 and the pruned "
           "loss weight rises from 0.1.")
    a("--seed", type=int, default=42, help="Seed of all random generators.")
    a("--deterministic", type=str2bool, default=False,
      help="Deterministic algorithms (slower on GPUs): a rerun or a resumed run ends with "
           "the same parameters, to the bit, on the same machine.")
    a("--inf-check", type=str2bool, default=False,
      help="Add hooks that report non-finite module outputs and gradients.")
    a("--save-every-n", type=nonnegative_int, default=4000,
      help="Save exp-dir/checkpoint-B.pt every this many batches.")
    a("--keep-last-k", type=nonnegative_int, default=30,
      help="Keep this many checkpoint-B.pt files.")
    a("--average-period", type=positive_int, default=200,
      help="Update the running model average (model_avg) every this many batches.")
    a("--use-fp16", type=str2bool, default=False,
      help="Mixed precision: float16 autocast with icefall's grad-scale management; CUDA "
           "only (float32 on a CPU).")
    a("--use-bf16", type=str2bool, default=False,
      help="Mixed precision: bfloat16 autocast, no grad scaler (A100/H100/H200, and CPUs).")
    a("--log-interval", type=positive_int, default=50, help="Log progress every this many batches.")
    a("--reset-interval", type=positive_int, default=200, help="Decay time (batches) of tot_loss.")
    a("--valid-interval", type=positive_int, default=3000,
      help="Validate every this many batches (and at the end of every epoch).")
    a("--train-cuts", type=str, default=recipe.train_cuts,
      help="Training manifests in --manifest-dir, comma-separated.")
    a("--valid-cuts", type=str, action="append", default=None,
      help="Validation sets in --manifest-dir, each validated, logged and written to "
           "TensorBoard on its own: NAME=MANIFEST[+MANIFEST...] items (or bare manifest "
           "names), comma-separated; the flag may be repeated. Default: "
           f"{recipe.valid_cuts}" + (f", and {recipe.optional_valid_cuts} when present"
                                     if recipe.optional_valid_cuts else "") + ".")
    a("--mux-cuts", type=str, default=recipe.mux_cuts,
      help="With --use-mux 1: original-domain training manifests mixed into training.")
    a("--trust-checkpoint", type=str2bool, default=False,
      help="Allow checkpoints that need full unpickling (only for files you trust).")
    a("--overwrite", type=str2bool, default=False,
      help="Start a new run in an --exp-dir that holds another run's checkpoints, deleting "
           "them (without it, that is refused).")
    a("--max-unk-share", type=nonnegative_float, default=0.01,
      help="Stop before training when more than this share of the training transcripts' "
           "BPE tokens are <unk> (the BPE model cannot spell them); 1 accepts any share.")
    a("--scale-schedule", type=str2bool, default=False,
      help="Lower --lr-warmup-batches and --warm-step to a tenth and a quarter of the run's "
           "batches, so that a short run on little data leaves its warm-ups.")
    a("--adapter-min-rms", type=positive_float, default=0.01,
      help="ScaledAdam's param_min_rms for adapter parameters: the smallest scale their "
           "updates are sized by, so that zero-initialised adapters can grow (LoRA keeps "
           "icefall's 1e-5, or --lora-min-rms).")
    a("--lora-min-rms", type=positive_float, default=1e-5,
      help="ScaledAdam's param_min_rms for LoRA's parameters. 1e-5 (icefall's zipformer_lora) "
           "grows lora_B from zero slowly, suited to icefall's long runs; a short run does "
           "better with the adapters' 0.01.")
    a("--save-full-checkpoints", type=str2bool, default=False,
      help="With adapters: epoch-N.pt, checkpoint-B.pt and best-*.pt hold the whole model. "
           "By default they hold what trains (adapters, their average, optimizer, scheduler, "
           "sampler, RNG) and the base checkpoint's path and fingerprint.")


def add_finetune_arguments(parser: argparse.ArgumentParser, recipe: TrainRecipe) -> None:
    """--do-finetune, --finetune-ckpt, --init-modules (zipformer_adapter's flags)."""
    parser.add_argument("--do-finetune", type=str2bool, default=recipe.do_finetune,
                        help="Initialise from --finetune-ckpt. Set 0 to resume a "
                             "fine-tuning run with --start-epoch/--start-batch.")
    parser.add_argument("--finetune-ckpt", type=Path, default=None,
                        help="Checkpoint to fine-tune from ({'model': state_dict}).")
    parser.add_argument("--init-modules", type=str, default=None,
                        help="Comma-separated module prefixes to initialise from "
                             "--finetune-ckpt (e.g. 'encoder,joiner'); default: all.")


def get_parser(recipe: TrainRecipe) -> argparse.ArgumentParser:
    parser = ArgumentParser()
    add_training_arguments(parser, recipe)
    add_model_arguments(parser)
    add_adapter_arguments(parser, use_adapters_default=recipe.use_adapters,
                          use_lora_default=recipe.use_lora)
    add_finetune_arguments(parser, recipe)
    add_dataloading_arguments(parser)
    return parser


def resolve_valid_cuts(params: AttributeDict, recipe: TrainRecipe) -> None:
    """--valid-cuts as one string: the values given, joined, or the recipe's sets (with its
    optional ones when their manifests exist in --manifest-dir)."""
    if params.valid_cuts:
        params.valid_cuts = named_sets_text(params.valid_cuts)
        return
    params.valid_cuts = recipe.valid_cuts
    optional = parse_named_sets(recipe.optional_valid_cuts)
    try:
        for _, files in optional:
            for name in files:
                find_manifest(params.manifest_dir, name)
    except FileNotFoundError as e:
        if optional:
            logging.info(f"Not validating on {recipe.optional_valid_cuts}: {e}")
        return
    params.valid_cuts += "," + recipe.optional_valid_cuts


def _rank_main(rank: int, world_size: int, params: AttributeDict) -> None:
    """One rank: a user error found there is its one line on stderr and exit status 1."""
    run_guarded(run_rank, rank, world_size, params)


def main(recipe: TrainRecipe, argv: list[str] | None = None) -> None:
    """Parses flags, checks inputs, and trains on --world-size processes (or torchrun's).
    Bad input is one line on stderr and exit status 1."""
    parser = get_parser(recipe)
    params = AttributeDict(vars(parser.parse_args(argv)))
    params.given_flags = given_flags(parser, argv)
    params.finetune_batch_count = recipe.finetune_batch_count
    resolve_valid_cuts(params, recipe)
    run_guarded(prepare_training, params)
    try:
        launch(_rank_main, params.world_size, params)
    except ProcessExitedException:  # a rank stopped; it has said why on stderr
        sys.exit(1)
