"""The lhotse data pipeline of training and decoding, as icefall's ``AsrDataModule``.

``AsrDataModule(args)`` turns CutSets into PyTorch DataLoaders whose batches are those of
lhotse's ``K2SpeechRecognitionDataset``, the form icefall's ``train.py`` and ``decode.py`` read:

* ``batch["inputs"]``: (N, T, 80) float features (or (N, S) samples with ``AudioSamples``);
* ``batch["supervisions"]``: ``text`` (list of N str), ``sequence_idx``, ``start_frame`` and
  ``num_frames`` ((N,) int64 tensors) and, with ``--return-cuts 1``, ``cut`` (list of Cut).

Batches are sized by total duration (``--max-duration`` seconds) by lhotse's
``DynamicBucketingSampler`` (``SimpleCutSampler`` with ``--bucketing-sampler 0``), whose
``state_dict()`` goes into checkpoints so a run resumes at the batch where it stopped.
Training batches may get MUSAN noise (``CutMix``, ``--enable-musan``), cut concatenation and
SpecAugment. Features are read from storage (``PrecomputedFeatures``) or computed while
loading (``--on-the-fly-feats 1``). Manifests are ``<manifest-dir>/<prefix>_cuts_<part>.jsonl.gz``.

Flags, names and defaults are icefall's (``egs/librispeech/ASR/*/asr_datamodule.py``), plus
``--use-mux``/``--mux-weights`` of the adapter recipe (mixing original-domain cuts into the
fine-tuning data).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from itertools import islice
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from lhotse import CutSet, Fbank
from lhotse.dataset import (
    CutConcatenate,
    CutMix,
    DynamicBucketingSampler,
    K2SpeechRecognitionDataset,
    SimpleCutSampler,
    SpecAugment,
)
from lhotse.dataset.input_strategies import (
    AudioSamples,
    BatchIO,
    OnTheFlyFeatures,
    PrecomputedFeatures,
)
from lhotse.dataset.sampling.base import CutSampler
from lhotse.utils import fix_random_seed
from torch.utils.data import DataLoader

from icefall.data.fbank import NUM_MEL_BINS, make_fbank_extractor
from icefall.data.manifests import load_cuts

INPUT_STRATEGIES = ("PrecomputedFeatures", "OnTheFlyFeatures", "AudioSamples")
MUSAN_MANIFEST = "musan_cuts.jsonl.gz"
EVAL_NUM_BUCKETS = 10  # lhotse's default, which icefall's valid/test samplers keep


# Every option the data module reads, with icefall's defaults (the command line's data flags
# take theirs from here: icefall.cli.dataloading).
DATA_DEFAULTS: dict[str, Any] = {
    "manifest_dir": Path("data/fbank"),
    "max_duration": 200.0,
    "bucketing_sampler": True,
    "num_buckets": 30,
    "concatenate_cuts": False,
    "duration_factor": 1.0,
    "gap": 1.0,
    "on_the_fly_feats": False,
    "shuffle": True,
    "drop_last": True,
    "return_cuts": True,
    "num_workers": 2,
    "enable_spec_aug": True,
    "spec_aug_time_warp_factor": 80,
    "enable_musan": True,
    "input_strategy": "PrecomputedFeatures",
    "use_mux": False,
    "mux_weights": "",
    "trust_manifest": False,
}


def parse_mux_weights(s: str | None) -> list[float] | None:
    """``"1,19"`` -> ``[1.0, 19.0]``; empty -> None.

    Raises:
      ValueError: unless two non-negative numbers with a positive sum.
    """
    if not s:
        return None
    try:
        w = [float(x) for x in s.split(",")]
    except ValueError as e:
        raise ValueError(f"--mux-weights: expected 'NEW,ORIG' numbers, got '{s}'") from e
    if len(w) != 2 or min(w) < 0 or sum(w) <= 0:
        raise ValueError(f"--mux-weights: expected two non-negative weights, got '{s}'")
    return w


def mux_cuts(new_cuts: CutSet, orig_cuts: CutSet, weights: list[float] | None = None,
             seed: int = 0) -> CutSet:
    """Lazily interleaves new-domain and original-domain cuts with ``CutSet.mux``.

    Each next cut comes from one source chosen at random with probability proportional to
    its weight; the mix stops when either source runs out (``stop_early``), as icefall does.

    Args:
      new_cuts, orig_cuts: the two sources.
      weights: ``[w_new, w_orig]``; None uses the cut counts (reads lazy manifests once).
      seed: the RNG seed of the choice.
    Returns:
      A lazy CutSet.
    """
    if weights is None:  # counted by iterating: lazy and filtered sets have no len()
        weights = [float(sum(1 for _ in new_cuts)), float(sum(1 for _ in orig_cuts))]
    logging.info(f"Mixing new-domain and original-domain cuts with weights {weights}")
    return CutSet.mux(new_cuts, orig_cuts, weights=weights, stop_early=True, seed=seed)


def _usable_num_buckets(cuts: CutSet, wanted: int) -> int:
    """``wanted``, or fewer for a set of fewer cuts (lhotse needs a cut per bucket).

    Reads at most ``wanted`` cuts, so it is cheap on large lazy manifests.
    """
    available = sum(1 for _ in islice(cuts, wanted))
    if available < wanted:
        logging.info(f"Only {available} cuts: using {available} duration buckets, "
                     f"not {wanted}")
    return min(wanted, available)


class _SeedWorkers:
    """DataLoader ``worker_init_fn``: seeds worker ``i`` with ``seed + i``."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __call__(self, worker_id: int) -> None:
        fix_random_seed(self.seed + worker_id)


def _with_defaults(args: Mapping[str, Any] | object | None) -> SimpleNamespace:
    """``args`` over :data:`DATA_DEFAULTS`, so partial settings work too."""
    merged = dict(DATA_DEFAULTS)
    if args is not None:
        merged.update(args if isinstance(args, Mapping) else vars(args))
    merged["manifest_dir"] = Path(merged["manifest_dir"])
    return SimpleNamespace(**merged)


class AsrDataModule:
    """DataLoaders of training, validation and test cuts (see the module docstring).

    Args:
      args: the data settings (a dict such as icefall's ``AttributeDict`` of params, or an
        ``argparse.Namespace`` of icefall.cli.dataloading's flags); missing ones take
        :data:`DATA_DEFAULTS`.
    """

    def __init__(self, args: Mapping[str, Any] | object | None = None) -> None:
        self.args = _with_defaults(args)

    # ----- building blocks -------------------------------------------------------------

    def input_strategy(self) -> BatchIO:
        """How inputs are made: stored features, on-the-fly fbank or raw samples."""
        name = "OnTheFlyFeatures" if self.args.on_the_fly_feats else self.args.input_strategy
        if name == "PrecomputedFeatures":
            return PrecomputedFeatures()
        if name == "OnTheFlyFeatures":
            # as many mel bins as the model takes (its --feature-dim, in the same params)
            extractor = make_fbank_extractor(int(getattr(self.args, "feature_dim",
                                                         NUM_MEL_BINS)))
            # lhotse's batched Fbank zero-pads the audio of a batch, which changes the last
            # frame of every shorter utterance; one at a time, frames equal stored features.
            return OnTheFlyFeatures(extractor, use_batch_extract=not isinstance(extractor, Fbank))
        if name == "AudioSamples":
            return AudioSamples()
        raise ValueError(f"--input-strategy: expected one of {', '.join(INPUT_STRATEGIES)}, "
                         f"got '{name}'")

    def cut_transforms(self, train: bool) -> list:
        """MUSAN mixing (training only) and cut concatenation, in the order applied."""
        transforms: list = []
        if self.args.concatenate_cuts:
            # First, so that noise mixed in afterwards also fills the gaps between cuts.
            logging.info(f"Concatenating cuts: duration factor {self.args.duration_factor}, "
                         f"gap {self.args.gap}")
            transforms.append(CutConcatenate(duration_factor=self.args.duration_factor,
                                             gap=self.args.gap))
        if train and self.args.enable_musan:
            logging.info("Enable MUSAN")
            transforms.append(CutMix(cuts=self.musan_cuts(), p=0.5, snr=(10, 20),
                                     preserve_id=True))
        return transforms

    def input_transforms(self) -> list:
        """SpecAugment of the training features, with icefall's mask settings."""
        if not self.args.enable_spec_aug:
            return []
        logging.info(f"Enable SpecAugment, time warp factor "
                     f"{self.args.spec_aug_time_warp_factor}")
        # lhotse caps all frame masks together at 15% of the frames, so icefall asks for 10.
        return [SpecAugment(time_warp_factor=self.args.spec_aug_time_warp_factor,
                            num_frame_masks=10, features_mask_size=27,
                            num_feature_masks=2, frames_mask_size=100)]

    def train_sampler(self, cuts: CutSet) -> CutSampler:
        """Duration-bucketed (or simple) sampler over ``cuts`` for training."""
        num_buckets = _usable_num_buckets(cuts, self.args.num_buckets)
        if self.args.bucketing_sampler and num_buckets > 1:
            logging.info("Using DynamicBucketingSampler")
            return DynamicBucketingSampler(
                cuts, max_duration=self.args.max_duration, shuffle=self.args.shuffle,
                num_buckets=num_buckets, drop_last=self.args.drop_last,
                # icefall's buffer of 2000 cuts a bucket plus its 5000 a bucket of shuffling
                buffer_size=self.args.num_buckets * 7000)
        logging.info("Using SimpleCutSampler")
        return SimpleCutSampler(cuts, max_duration=self.args.max_duration,
                                shuffle=self.args.shuffle, drop_last=self.args.drop_last)

    def eval_sampler(self, cuts: CutSet) -> CutSampler:
        """Sampler of validation and test cuts: fixed order, icefall's 10 buckets."""
        num_buckets = _usable_num_buckets(cuts, EVAL_NUM_BUCKETS)
        if num_buckets > 1:
            return DynamicBucketingSampler(cuts, max_duration=self.args.max_duration,
                                           num_buckets=num_buckets, shuffle=False)
        return SimpleCutSampler(cuts, max_duration=self.args.max_duration, shuffle=False)

    def _eval_dataloader(self, cuts: CutSet, transforms: list) -> DataLoader:
        dataset = K2SpeechRecognitionDataset(
            input_strategy=self.input_strategy(), cut_transforms=transforms,
            return_cuts=self.args.return_cuts)
        return DataLoader(dataset, sampler=self.eval_sampler(cuts), batch_size=None,
                          num_workers=self.args.num_workers, persistent_workers=False)

    # ----- DataLoaders -----------------------------------------------------------------

    def train_dataloaders(self, cuts_train: CutSet,
                          sampler_state_dict: dict[str, Any] | None = None) -> DataLoader:
        """The training DataLoader.

        Args:
          cuts_train: training cuts (lazy, usually already filtered and muxed).
          sampler_state_dict: ``train_dl.sampler.state_dict()`` from a checkpoint taken
            mid-epoch; the sampler then resumes with the batch after the last one served.
        Returns:
          A DataLoader of batches (see the module docstring); ``.sampler`` is the sampler.
        """
        dataset = K2SpeechRecognitionDataset(
            input_strategy=self.input_strategy(), cut_transforms=self.cut_transforms(True),
            input_transforms=self.input_transforms(), return_cuts=self.args.return_cuts)
        sampler = self.train_sampler(cuts_train)
        if sampler_state_dict is not None:
            logging.info("Loading sampler state dict")
            sampler.load_state_dict(dict(sampler_state_dict))
        # Derived from torch's RNG, which the recipe seeded (--seed) in the main process.
        seed = int(torch.randint(0, 100000, ()).item())
        return DataLoader(dataset, sampler=sampler, batch_size=None,
                          num_workers=self.args.num_workers, persistent_workers=False,
                          worker_init_fn=_SeedWorkers(seed))

    def valid_dataloaders(self, cuts_valid: CutSet) -> DataLoader:
        """Validation DataLoader: fixed order, no augmentation (concatenation if enabled)."""
        transforms = self.cut_transforms(train=False)
        return self._eval_dataloader(cuts_valid, transforms)

    def test_dataloaders(self, cuts: CutSet) -> DataLoader:
        """Decoding DataLoader: fixed order, no transforms."""
        return self._eval_dataloader(cuts, [])

    # ----- manifests -------------------------------------------------------------------

    def musan_cuts(self) -> CutSet:
        """MUSAN noise cuts (eagerly loaded: CutMix samples from all of them)."""
        path = self.args.manifest_dir / MUSAN_MANIFEST
        logging.info(f"About to get MUSAN cuts from {path}")
        return load_cuts(path, lazy=False)

    def mux_train_cuts(self, new_cuts: CutSet, orig_cuts: CutSet | None) -> CutSet:
        """``new_cuts``, or with ``--use-mux 1`` new and original cuts mixed by :func:`mux_cuts`
        with ``--mux-weights``."""
        if not self.args.use_mux:
            return new_cuts
        if orig_cuts is None:
            raise ValueError("--use-mux 1 needs the original-domain training cuts")
        return mux_cuts(new_cuts, orig_cuts, parse_mux_weights(self.args.mux_weights))
