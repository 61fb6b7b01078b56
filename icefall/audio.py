"""Reading sound files, torch-free (ONNX Runtime deployments use it without PyTorch).

Dimension legend: S = samples.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000


MIN_SAMPLES = 400  # one 25 ms analysis window at 16 kHz: fewer gives no feature frame


def read_sound_file(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Samples (S,) float32 in [-1, 1] of ``path``, several channels mixed down to one.

    Raises:
      ValueError: naming the file when it cannot be read, has another sample rate, fewer
        samples than one analysis window, samples that are not finite, or only silence.
    """
    import soundfile as sf

    try:
        samples, sr = sf.read(str(path), dtype="float32", always_2d=True)  # (S, channels)
    except Exception as e:  # noqa: BLE001 - libsndfile raises several types
        raise ValueError(f"cannot read sound file {path}: {e}") from e
    if sr != sample_rate:
        raise ValueError(f"{path} has sample rate {sr}; expected {sample_rate} "
                         "(resample it first, e.g. with sox)")
    if samples.shape[0] * sample_rate < MIN_SAMPLES * SAMPLE_RATE:
        raise ValueError(f"sound file {path} has {samples.shape[0]} samples, fewer than one "
                         f"25 ms window")
    if not np.isfinite(samples).all():
        raise ValueError(f"sound file {path} has samples that are NaN or infinite")
    mono = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    if not np.any(mono):
        raise ValueError(f"sound file {path} is silent (every sample is 0)")
    return np.ascontiguousarray(mono, dtype=np.float32)
