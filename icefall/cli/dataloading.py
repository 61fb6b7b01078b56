"""icefall's data flags (lhotse DataLoaders: batching, sampling, augmentation, features),
with the data module's defaults (:data:`icefall.data.datamodule.DATA_DEFAULTS`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from icefall.cli.flags import (
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
    str2bool,
)
from icefall.data.datamodule import DATA_DEFAULTS, INPUT_STRATEGIES


def _add(group: argparse._ArgumentGroup, parser: argparse.ArgumentParser, flag: str,
         **kwargs) -> None:
    """Adds ``flag`` unless the parser already has it (a recipe may define it itself)."""
    if flag not in parser._option_string_actions:
        group.add_argument(flag, **kwargs)


def add_dataloading_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds icefall's data flags (and ``--use-mux``, ``--mux-weights``) to ``parser``."""
    d = DATA_DEFAULTS
    g = parser.add_argument_group(
        title="ASR data related options",
        description="How DataLoaders are built from lhotse CutSets: batch size, sampling, "
                    "augmentation and features.")
    _add(g, parser, "--manifest-dir", type=Path, default=d["manifest_dir"],
         help="Folder of the <prefix>_cuts_<part>.jsonl.gz manifests (and musan_cuts).")
    _add(g, parser, "--max-duration", type=positive_float, default=d["max_duration"],
         help="Maximum total duration (seconds) of the cuts in one batch.")
    _add(g, parser, "--bucketing-sampler", type=str2bool, default=d["bucketing_sampler"],
         help="Batch cuts of similar duration (DynamicBucketingSampler); "
              "0 uses SimpleCutSampler.")
    _add(g, parser, "--num-buckets", type=positive_int, default=d["num_buckets"],
         help="Number of duration buckets of the DynamicBucketingSampler.")
    _add(g, parser, "--concatenate-cuts", type=str2bool, default=d["concatenate_cuts"],
         help="Concatenate cuts of a batch to reduce padding.")
    _add(g, parser, "--duration-factor", type=positive_float, default=d["duration_factor"],
         help="Longest concatenated cut, relative to the longest cut of the batch.")
    _add(g, parser, "--gap", type=nonnegative_float, default=d["gap"],
         help="Seconds of padding between concatenated cuts.")
    _add(g, parser, "--on-the-fly-feats", type=str2bool, default=d["on_the_fly_feats"],
         help="Compute fbank features while loading instead of reading stored ones.")
    _add(g, parser, "--shuffle", type=str2bool, default=d["shuffle"],
         help="Shuffle the training cuts every epoch.")
    _add(g, parser, "--drop-last", type=str2bool, default=d["drop_last"],
         help="Drop the last, incomplete training batch.")
    _add(g, parser, "--return-cuts", type=str2bool, default=d["return_cuts"],
         help="Put the cuts of each batch in batch['supervisions']['cut'].")
    _add(g, parser, "--num-workers", type=nonnegative_int, default=d["num_workers"],
         help="DataLoader worker processes.")
    _add(g, parser, "--enable-spec-aug", type=str2bool, default=d["enable_spec_aug"],
         help="Apply SpecAugment to training features.")
    _add(g, parser, "--spec-aug-time-warp-factor", type=int, default=d["spec_aug_time_warp_factor"],
         help="SpecAugment time-warp factor; below 1 disables time warping.")
    _add(g, parser, "--enable-musan", type=str2bool, default=d["enable_musan"],
         help="Mix MUSAN noise (manifest-dir/musan_cuts.jsonl.gz) into training cuts.")
    _add(g, parser, "--input-strategy", type=str, default=d["input_strategy"],
         choices=INPUT_STRATEGIES,
         help="PrecomputedFeatures or OnTheFlyFeatures (features and their lengths), "
              "AudioSamples (samples and their lengths).")
    _add(g, parser, "--use-mux", type=str2bool, default=d["use_mux"],
         help="Fine-tuning: mix original-domain cuts into the new-domain training cuts "
              "(CutSet.mux) to keep the performance on the original domain.")
    _add(g, parser, "--trust-manifest", type=str2bool, default=d["trust_manifest"],
         help="Allow manifests whose audio sources run commands or fetch URLs (only for "
              "manifests you made).")
    _add(g, parser, "--mux-weights", type=str, default=d["mux_weights"],
         help="With --use-mux: 'NEW,ORIG' sampling weights; empty uses the cut counts, "
              "so every cut is equally likely.")
