"""Log-mel filterbank features (80 bins by default), computed and stored as icefall's data
preparation does.

The extractor is lhotse's Kaldi-compatible ``Fbank(FbankConfig(num_mel_bins=80))`` (pure
PyTorch, no torchaudio needed). When ``kaldifeat`` imports (it is optional and has no wheels
for current PyTorch), lhotse's ``KaldifeatFbank`` is used instead, on ``device``.

Features are stored with lhotse's ``LilcomChunkyWriter`` (lossy, about 4x smaller) when the
``lilcom`` package imports, otherwise uncompressed with ``NumpyFilesWriter``; the manifests
record which, so readers need not know.

Dimension legend: T = frames (100 per second), F = mel bins (80 unless set).
"""

from __future__ import annotations

import importlib.util
import logging
import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

import torch
from lhotse import CutSet, Fbank, FbankConfig
from lhotse.features.base import FeatureExtractor
from lhotse.features.io import FeaturesWriter, LilcomChunkyWriter, NumpyFilesWriter

from icefall.data.manifests import (
    cuts_filename,
    feats_dirname,
    feature_width,
    load_cuts,
    save_cuts,
)
from icefall.data.preparation import PrepareError

NUM_MEL_BINS = 80
# --storage choices of the compute_fbank scripts
STORAGE_TYPES: dict[str, type[FeaturesWriter]] = {
    "lilcom_chunky": LilcomChunkyWriter, "numpy_files": NumpyFilesWriter}


def kaldifeat_available() -> bool:
    """True when the optional ``kaldifeat`` package can be imported."""
    return importlib.util.find_spec("kaldifeat") is not None


def lilcom_available() -> bool:
    """True when the ``lilcom`` compression package can be imported."""
    return importlib.util.find_spec("lilcom") is not None


def make_fbank_extractor(num_mel_bins: int = NUM_MEL_BINS, use_kaldifeat: bool | None = None,
                         device: str | torch.device = "cpu") -> FeatureExtractor:
    """The fbank extractor used for stored and on-the-fly features alike.

    Args:
      num_mel_bins: feature dimension (80 in icefall's LibriSpeech recipes).
      use_kaldifeat: None picks kaldifeat when it imports; True requires it.
      device: where kaldifeat computes (lhotse's Fbank always computes on the CPU here).
    Returns:
      A lhotse FeatureExtractor.
    Raises:
      ImportError: when ``use_kaldifeat`` is True and kaldifeat does not import.
    """
    if use_kaldifeat is None:
        use_kaldifeat = kaldifeat_available()
    if use_kaldifeat:
        if not kaldifeat_available():
            raise ImportError("use_kaldifeat=True but the 'kaldifeat' package is not installed")
        from lhotse.features.kaldifeat import KaldifeatFbank, KaldifeatFbankConfig

        config = KaldifeatFbankConfig(device=device)
        config.mel_opts.num_bins = num_mel_bins
        return KaldifeatFbank(config)
    return Fbank(FbankConfig(num_mel_bins=num_mel_bins))


def default_storage_type() -> type[FeaturesWriter]:
    """``LilcomChunkyWriter`` when ``lilcom`` imports, else ``NumpyFilesWriter`` (logged)."""
    if lilcom_available():
        return LilcomChunkyWriter
    logging.warning("'lilcom' is not installed: storing uncompressed features "
                    "(NumpyFilesWriter); 'pip install lilcom' for LilcomChunkyWriter")
    return NumpyFilesWriter


def _single_threaded_worker() -> None:
    """Worker initialiser: one torch thread per process, so N jobs use N cores."""
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)


@contextmanager
def fbank_executor(num_jobs: int) -> Iterator[Executor | None]:
    """A pool of ``num_jobs`` spawned one-thread processes for :func:`compute_fbank`, shut
    down on exit; None for one job. Give it to every part of a corpus: each new pool's
    processes import torch and lhotse again (seconds each).

    (The workers are spawned, so a script that asks for more than one job needs an ``if
    __name__ == "__main__":`` guard.)"""
    if num_jobs <= 1:
        yield None
        return
    executor = ProcessPoolExecutor(num_jobs, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_single_threaded_worker)
    try:
        yield executor
    finally:
        executor.shutdown()


def compute_fbank(cuts: CutSet, storage_path: str | Path, num_jobs: int = 1,
                  num_mel_bins: int = NUM_MEL_BINS, use_kaldifeat: bool | None = None,
                  storage_type: type[FeaturesWriter] | None = None,
                  progress_bar: bool = True, device: str | torch.device = "cpu",
                  batch_duration: float = 600.0, executor: Executor | None = None
                  ) -> CutSet:
    """Computes fbank features of ``cuts`` and stores them under ``storage_path``.

    Args:
      cuts: cuts with recordings (eager or lazy).
      storage_path: where the feature arrays go (a file or folder, per ``storage_type``).
      num_jobs: parallel processes for lhotse's Fbank (one torch thread each). They are
        spawned, so a script that asks for more than one needs an ``if __name__ ==
        "__main__":`` guard.
      num_mel_bins: feature dimension F.
      use_kaldifeat: see :func:`make_fbank_extractor`.
      storage_type: a lhotse FeaturesWriter; default :func:`default_storage_type`.
      progress_bar: show lhotse's progress bar.
      device: kaldifeat's device.
      batch_duration: seconds of audio per kaldifeat batch.
      executor: a pool from :func:`fbank_executor` to compute in (left running); without
        one, ``num_jobs`` > 1 starts a pool for this call.
    Returns:
      The cuts with ``Features`` (F = ``num_mel_bins``, 100 frames per second) attached;
      cuts whose audio could not be read are dropped (logged).
    """
    extractor = make_fbank_extractor(num_mel_bins, use_kaldifeat, device)
    storage_type = storage_type or default_storage_type()
    if not isinstance(extractor, Fbank):  # kaldifeat: batched, possibly on a GPU
        return cuts.compute_and_store_features_batch(
            extractor=extractor, storage_path=storage_path, batch_duration=batch_duration,
            num_workers=num_jobs, storage_type=storage_type, overwrite=True)
    with _pool(executor, num_jobs) as pool:
        with_feats = cuts.compute_and_store_features(
            extractor=extractor, storage_path=storage_path, num_jobs=num_jobs,
            executor=pool, storage_type=storage_type, progress_bar=progress_bar)
    if not cuts.is_lazy and len(with_feats) < len(cuts):
        logging.warning(f"{len(cuts) - len(with_feats)} of {len(cuts)} cuts were dropped: "
                        "their audio could not be read")
    return with_feats


def fbank_device() -> str:
    """``cuda`` when kaldifeat imports and a GPU is visible (icefall's choice), else ``cpu``."""
    return "cuda" if kaldifeat_available() and torch.cuda.is_available() else "cpu"


def check_feature_width(manifest: Path, num_mel_bins: int) -> None:
    """An existing cut manifest's features (its first cut's) are ``num_mel_bins`` wide.

    Raises:
      PrepareError: naming the manifest and both widths.
    """
    width = feature_width(load_cuts(manifest, lazy=True))
    if width is not None and width != num_mel_bins:
        raise PrepareError(f"{manifest} has {width}-bin features, not the "
                           f"{num_mel_bins} asked for: remove it (and its features) to "
                           "compute them again")


def _pool(executor: Executor | None, num_jobs: int) -> AbstractContextManager:
    """``executor`` (left running) when given, else a pool of ``num_jobs`` for the block."""
    return nullcontext(executor) if executor is not None else fbank_executor(num_jobs)


def compute_fbank_for_part(cuts: CutSet, output_dir: str | Path, prefix: str, part: str,
                           num_jobs: int = 1, overwrite: bool = False,
                           trim_to_supervisions: bool = False,
                           device: str | torch.device | None = None, **kwargs) -> Path:
    """Computes features of one corpus part and saves ``<prefix>_cuts_<part>.jsonl.gz``.

    Features go to ``<output_dir>/<prefix>_feats_<part>``. An existing manifest is kept
    (the stage is skipped, as icefall's ``compute_fbank_*.py`` do) unless ``overwrite``.

    Args:
      cuts: the part's cuts, with recordings (an eager CutSet is checked for emptiness).
      output_dir: e.g. ``data/fbank``.
      prefix, part: e.g. ``librispeech`` and ``train-clean-100``.
      num_jobs: parallel jobs.
      overwrite: recompute when the manifest exists.
      trim_to_supervisions: features of whole recordings, then one cut per supervision
        (for corpora of long recordings with segments, such as GigaSpeech).
      device: kaldifeat's device; None means :func:`fbank_device`.
      kwargs: go to :func:`compute_fbank`.
    Returns:
      The manifest path.
    Raises:
      PrepareError: when there is no cut, or no cut has features afterwards.
    """
    output_dir = Path(output_dir)
    manifest = output_dir / cuts_filename(prefix, part)
    if manifest.is_file() and not overwrite:
        check_feature_width(manifest, kwargs.get("num_mel_bins", NUM_MEL_BINS))
        logging.info(f"{manifest} exists: skipping")
        return manifest
    if not cuts.is_lazy and len(cuts) == 0:
        raise PrepareError(f"{prefix} {part}: no cut to compute features for")
    output_dir.mkdir(parents=True, exist_ok=True)
    logging.info(f"Computing fbank for {prefix} {part}")
    with_feats = compute_fbank(cuts, output_dir / feats_dirname(prefix, part),
                               num_jobs=num_jobs, device=device or fbank_device(), **kwargs)
    if trim_to_supervisions:
        with_feats = with_feats.trim_to_supervisions(keep_overlapping=False).to_eager()
    if not with_feats.is_lazy and len(with_feats) == 0:
        raise PrepareError(f"no cut of {prefix} {part} has features (unreadable audio?)")
    return save_cuts(with_feats, manifest)


def compute_fbank_for_parts(make_cuts: Callable[[str], CutSet], parts: Sequence[str],
                            output_dir: str | Path, prefix: str, overwrite: bool = False,
                            **kwargs) -> list[Path]:
    """:func:`compute_fbank_for_part` for each of ``parts``; ``make_cuts(part)`` is called
    only for the parts whose manifest is to be written (missing, or ``overwrite``). The parts
    share one pool of ``num_jobs`` workers (``kwargs``' ``executor`` when given; its
    processes start at the first part computed).

    Returns:
      The manifest of each part, in the order of ``parts``.
    """
    outputs = []
    with _pool(kwargs.pop("executor", None), kwargs.get("num_jobs", 1)) as pool:
        for part in parts:
            manifest = Path(output_dir) / cuts_filename(prefix, part)
            if manifest.is_file() and not overwrite:
                check_feature_width(manifest, kwargs.get("num_mel_bins", NUM_MEL_BINS))
                logging.info(f"{manifest} exists: skipping")
                outputs.append(manifest)
                continue
            outputs.append(compute_fbank_for_part(make_cuts(part), output_dir, prefix, part,
                                                  overwrite=True, executor=pool, **kwargs))
    return outputs
