"""Reading sound files, torch-free (ONNX Runtime deployments use it without PyTorch).

Dimension legend: S = samples.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000


def read_sound_file(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Samples (S,) float32 in [-1, 1] of the first channel of ``path``.

    Raises:
      ValueError: naming the file when it cannot be read or has another sample rate.
    """
    import soundfile as sf

    try:
        samples, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # noqa: BLE001 - libsndfile raises several types
        raise ValueError(f"cannot read sound file {path}: {e}") from e
    if sr != sample_rate:
        raise ValueError(f"{path} has sample rate {sr}; expected {sample_rate} "
                         "(resample it first, e.g. with sox)")
    if samples.shape[0] == 0:
        raise ValueError(f"sound file {path} has no samples")
    return np.ascontiguousarray(samples[:, 0])
