"""MUSAN, the noise mixed into training cuts (``--enable-musan``): download, manifests and
fbank, on top of lhotse's ``download_musan`` and ``prepare_musan``.

- :func:`download_corpus` fetches ``<dl_dir>/musan`` unless it is there; a failed
  download is logged, and training goes on without noise mixing;
- :func:`prepare_manifests` writes ``musan_recordings_<part>.jsonl.gz`` (and the music
  supervisions) for music, speech and noise;
- :func:`compute_features` writes ``musan_cuts.jsonl.gz``: 10 s windows longer than 5 s,
  with fbank features in ``musan_feats``, as icefall does.

Imported by the ``local/*.py`` scripts beside it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lhotse import CutSet, combine, load_manifest
from lhotse.cut import Cut
from lhotse.recipes.musan import download_musan, prepare_musan

from icefall.data.fbank import NUM_MEL_BINS, check_feature_width, compute_fbank, fbank_device
from icefall.data.manifests import save_cuts
from icefall.data.preparation import PrepareError, prepare_atomically, require_dir, try_download

PREFIX = "musan"
PARTS = ("music", "speech", "noise")
# The training data module reads <manifest-dir>/musan_cuts.jsonl.gz (no part in the name).
CUTS = f"{PREFIX}_cuts.jsonl.gz"
WINDOW = 10.0  # seconds
MIN_DURATION = 5.0  # seconds: shorter windows (the tails of recordings) are dropped


def is_musan_manifest(path: str | Path) -> bool:
    """True for MUSAN cut manifests, whose cuts (noise) have no supervision."""
    return Path(path).name.startswith(f"{PREFIX}_cuts")


def download_corpus(dl_dir: str | Path, timeout: float = 30.0) -> bool:
    """Downloads MUSAN into ``<dl_dir>/musan`` unless it is there; False when unavailable."""
    dl_dir = Path(dl_dir)
    if (dl_dir / "musan").is_dir():
        logging.info(f"MUSAN found in {dl_dir / 'musan'}")
        return True
    if not try_download(lambda: download_musan(dl_dir), "MUSAN", dl_dir / "musan.tar.gz",
                        timeout):
        logging.warning("no MUSAN: train without noise mixing (--enable-musan 0)")
        return False
    return (dl_dir / "musan").is_dir()


def prepare_manifests(corpus_dir: str | Path, output_dir: str | Path) -> list[str]:
    """``musan_recordings_<part>.jsonl.gz`` (and music supervisions) for music/speech/noise.

    Returns:
      The parts found.
    Raises:
      PrepareError: when ``corpus_dir`` is missing or has none of the three folders.
    """
    corpus_dir = require_dir(corpus_dir, "MUSAN corpus directory")
    parts = [p for p in PARTS if (corpus_dir / p).is_dir()]
    if not parts:
        raise PrepareError(f"none of {', '.join(PARTS)} found in {corpus_dir}")
    prepare_atomically(output_dir, PREFIX,
                       lambda tmp: prepare_musan(corpus_dir, output_dir=tmp, parts=parts))
    return parts


def _long_enough(cut: Cut) -> bool:
    return cut.duration > MIN_DURATION


def compute_features(manifest_dir: str | Path, output_dir: str | Path, num_jobs: int = 1,
                     progress_bar: bool = True, num_mel_bins: int = NUM_MEL_BINS) -> Path:
    """``musan_cuts.jsonl.gz``: MUSAN music, speech and noise cut into 10 s windows, the
    windows longer than 5 s kept, with fbank features of ``num_mel_bins`` (in
    ``musan_feats``), as icefall.

    Raises:
      PrepareError: when there is no MUSAN manifest or no window longer than 5 s.
    """
    manifest_dir, output_dir = Path(manifest_dir), Path(output_dir)
    output = output_dir / CUTS
    if output.is_file():
        check_feature_width(output, num_mel_bins)
        logging.info(f"{output} exists: skipping")
        return output
    paths = [manifest_dir / f"{PREFIX}_recordings_{p}.jsonl.gz" for p in PARTS]
    recordings = [load_manifest(p) for p in paths if p.is_file()]
    if not recordings:
        raise PrepareError(f"no MUSAN manifest ({PREFIX}_recordings_*.jsonl.gz) "
                           f"in {manifest_dir}")
    cuts = (CutSet.from_manifests(recordings=combine(recordings))
            .cut_into_windows(WINDOW).filter(_long_enough).to_eager())
    if len(cuts) == 0:
        raise PrepareError(f"no MUSAN recording in {manifest_dir} is longer than "
                           f"{MIN_DURATION:g} s")
    output_dir.mkdir(parents=True, exist_ok=True)
    with_feats = compute_fbank(cuts, output_dir / f"{PREFIX}_feats", num_jobs=num_jobs,
                               progress_bar=progress_bar, device=fbank_device(),
                               num_mel_bins=num_mel_bins)
    return save_cuts(with_feats, output)
