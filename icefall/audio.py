"""Reading sound files, torch-free (ONNX Runtime deployments use it without PyTorch).

Dimension legend: S = samples.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000


MIN_SAMPLES = 400  # one 25 ms analysis window at 16 kHz: fewer gives no feature frame


def read_sound_file(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Samples (S,) float32 of ``path`` at ``sample_rate``: several channels mixed down to
    one, another sample rate resampled (:func:`resample`).

    Raises:
      ValueError: naming the file when it cannot be read, has fewer samples than one
        analysis window (25 ms), samples that are not finite, or only silence.
      ImportError: resampling needs scipy.
    """
    import soundfile as sf

    try:
        samples, sr = sf.read(str(path), dtype="float32", always_2d=True)  # (S, channels)
    except Exception as e:  # noqa: BLE001 - libsndfile raises several types
        raise ValueError(f"cannot read sound file {path}: {e}") from e
    if samples.shape[0] * SAMPLE_RATE < MIN_SAMPLES * sr:
        raise ValueError(f"sound file {path} has {samples.shape[0]} samples, fewer than one "
                         f"25 ms window")
    if not np.isfinite(samples).all():
        raise ValueError(f"sound file {path} has samples that are NaN or infinite")
    mono = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    if not np.any(mono):
        raise ValueError(f"sound file {path} is silent (every sample is 0)")
    if sr != sample_rate:
        mono = resample(mono, sr, sample_rate)
    return np.ascontiguousarray(mono, dtype=np.float32)


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """``samples`` (S,) at ``from_rate`` resampled to ``to_rate`` by polyphase filtering
    (scipy's ``resample_poly``: what lhotse's ``Recording.resample`` uses without
    torchaudio, so files converted by the data preparation and files given to
    pretrained.py or onnx_pretrained.py sound the same to the model).

    Raises:
      ImportError: scipy is not installed.
    """
    try:
        from scipy.signal import resample_poly
    except ImportError as e:
        raise ImportError(f"resampling {from_rate} Hz audio to {to_rate} Hz needs scipy: "
                          "pip install -r requirements.txt") from e
    g = math.gcd(int(from_rate), int(to_rate))
    return resample_poly(samples, to_rate // g, from_rate // g).astype(np.float32)
