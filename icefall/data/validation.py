"""Checks that a cut manifest is fit for training, before a training run finds out.

:func:`validate_cut` checks one cut, :func:`validate_manifest` every cut of a file (and that
ids are unique and feature files exist); the first problem raises
:class:`ManifestValidationError` naming the file, the cut and what is wrong.

Dimension legend: T = feature frames of a cut (100 per second), F = mel bins.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from lhotse.cut import Cut

from icefall.data.fbank import NUM_MEL_BINS
from icefall.data.manifests import load_cuts

SUPERVISION_TOLERANCE = 2e-3  # seconds, as lhotse's validate_for_asr and icefall's check


class ManifestValidationError(ValueError):
    """A cut manifest breaks an assumption of training; the message names file and cut."""


def _feature_problem(cut: Cut, num_mel_bins: int | None, read_features: bool) -> str | None:
    """What is wrong with the features of ``cut`` (None when nothing)."""
    if not cut.has_features:
        return "has no features"
    feats = cut.features
    num_mel_bins = feats.num_features if num_mel_bins is None else num_mel_bins
    if feats.num_features != num_mel_bins:
        return f"has {feats.num_features}-dim features, expected {num_mel_bins}"
    shift = feats.frame_shift
    if abs(feats.num_frames - feats.duration / shift) > 1.0:
        return (f"features have {feats.num_frames} frames for {feats.duration:.3f} s "
                f"(frame shift {shift} s)")
    start = cut.start if hasattr(cut, "start") else 0.0
    if start < feats.start - shift or start + cut.duration > feats.end + shift:
        return (f"spans {start:.3f}-{start + cut.duration:.3f} s but its features "
                f"{feats.start:.3f}-{feats.end:.3f} s")
    if abs(cut.num_frames - cut.duration / shift) > 1.0:
        return f"has {cut.num_frames} frames for {cut.duration:.3f} s"
    if read_features:
        arr = cut.load_features()  # (T, F)
        if arr.shape != (cut.num_frames, num_mel_bins):
            return f"features have shape {arr.shape}, expected ({cut.num_frames}, {num_mel_bins})"
        if not np.isfinite(arr).all():
            return "features contain NaN or infinity"
    return None


def _supervision_problem(cut: Cut, require_supervision: bool) -> str | None:
    """What is wrong with the supervisions of ``cut`` for ASR training (None when nothing)."""
    sups = cut.supervisions
    if require_supervision and len(sups) != 1:
        return f"has {len(sups)} supervisions, expected 1"
    tol = SUPERVISION_TOLERANCE
    for s in sups:
        if s.start < -tol:
            return f"supervision {s.id} starts at {s.start:.3f} s, before the cut"
        if s.end > cut.duration + tol:
            return (f"supervision {s.id} ends at {s.end:.3f} s, after the cut "
                    f"({cut.duration:.3f} s)")
        if require_supervision and not (s.text or "").strip():
            return f"supervision {s.id} has no text"
    return None


# Audio sources that read local data; "command" runs a shell command and "url" fetches from
# the network, which a manifest from elsewhere must not make this program do.
SAFE_SOURCE_TYPES = ("file", "memory", "shar")


def source_problem(cut: Cut, trust_sources: bool = False) -> str | None:
    """What is wrong with the audio sources of ``cut`` (None when nothing): a ``command`` or
    ``url`` source unless trusted, or a missing audio file."""
    recording = getattr(cut, "recording", None)
    if recording is None:
        return None
    for source in recording.sources:
        if source.type not in SAFE_SOURCE_TYPES and not trust_sources:
            return (f"has an audio source of type '{source.type}' ({str(source.source)[:60]}), "
                    "which would run a command or fetch a URL; pass --trust-manifest 1 only "
                    "for manifests you made")
        if source.type == "file" and not Path(source.source).is_file():
            return f"audio not found: {source.source}"
    return None


def validate_cut(cut: Cut, num_mel_bins: int | None = NUM_MEL_BINS,
                 require_supervision: bool = True,
                 read_features: bool = False, need_features: bool = True,
                 trust_sources: bool = False) -> str | None:
    """Checks one cut; returns what is wrong with it, or None.

    Checks: positive duration; (with ``need_features``) features present, ``num_mel_bins``
    wide (any width when None), with as many frames as their duration at 100 per second,
    covering the cut; (with ``require_supervision``) exactly one supervision with text;
    supervisions within the cut (2 ms tolerance); (with ``read_features``) the stored
    (T, F) matrix has the cut's shape and is finite; audio sources that run commands or
    fetch URLs are refused unless ``trust_sources``, and audio files must exist.
    """
    if not cut.duration > 0:
        return f"has duration {cut.duration}"
    features = _feature_problem(cut, num_mel_bins, read_features) if need_features else None
    return (features or _supervision_problem(cut, require_supervision)
            or source_problem(cut, trust_sources))


def _storage_missing(cut: Cut, checked: dict[str, bool]) -> str | None:
    """The feature storage file of ``cut`` when it does not exist (memoised per path)."""
    feats = cut.features
    path = Path(feats.storage_path)
    if feats.storage_type in ("numpy_files", "lilcom_files"):
        path = path / feats.storage_key
    key = str(path)
    if key not in checked:
        checked[key] = path.exists()
    return None if checked[key] else key


def validate_manifest(path: str | Path, require_supervisions: bool = True,
                      num_mel_bins: int | None = NUM_MEL_BINS, read_features: bool = False,
                      need_features: bool = True, trust_sources: bool = False) -> int:
    """Validates every cut of a manifest (see :func:`validate_cut`) and unique cut ids.

    Args:
      path: a ``*_cuts_*.jsonl.gz`` manifest.
      require_supervisions: every cut has one supervision with text (False for noise
        such as MUSAN's, which has none).
      num_mel_bins: expected feature dimension F; None: that of the first cut, which
        every other cut must share (for a caller that learns F from a model later).
      read_features: also load each feature matrix (slow on a full corpus).
      need_features: cuts must have stored features (not with on-the-fly features).
      trust_sources: accept audio sources that run commands or fetch URLs.
    Returns:
      The number of cuts.
    Raises:
      FileNotFoundError, ManifestError: for a missing, unreadable or empty manifest.
      ManifestValidationError: naming the manifest, the first bad cut and what is wrong.
    """
    path = Path(path)
    seen: set[str] = set()
    storage: dict[str, bool] = {}
    cut_id = None
    cuts = load_cuts(path, lazy=True)  # a missing or empty manifest says so itself
    try:
        for cut in cuts:
            cut_id = cut.id
            if num_mel_bins is None and need_features and cut.has_features:
                num_mel_bins = cut.features.num_features
            problem = validate_cut(cut, num_mel_bins, require_supervisions, read_features,
                                   need_features, trust_sources)
            if problem is None and cut.id in seen:
                problem = "appears twice"
            if problem is None and need_features and (missing := _storage_missing(cut,
                                                                                 storage)):
                problem = f"features not found: {missing}"
            if problem is not None:
                raise ManifestValidationError(f"{path}: cut {cut.id} {problem}")
            seen.add(cut.id)
    except (OSError, EOFError, ValueError, KeyError, TypeError) as e:
        if isinstance(e, ManifestValidationError):
            raise
        where = f"after cut {cut_id}" if cut_id is not None else "at its first cut"
        raise ManifestValidationError(f"{path}: unreadable {where}: "
                                      f"{type(e).__name__}: {e}") from e
    logging.info(f"{path}: {len(seen)} cuts OK")
    return len(seen)
