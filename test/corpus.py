"""A small corpus generated in the tests: lhotse cuts with stored 80-dim features, and a
BPE model trained on their transcripts.

Every word has a fixed spectral pattern (seeded): three formant-like bumps gliding across
the 80 bins over 12 frames, smooth in frequency as real spectra are. Each utterance is its
words' patterns in sequence, with a little silence and Gaussian noise. Two "domains"
differ by a fixed channel offset and noise level, which a model trained on one must adapt
to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from lhotse import CutSet, MonoCut, SupervisionSegment
from lhotse.features import Features
from lhotse.features.io import NumpyFilesWriter

from icefall.data import train_bpe_model
from icefall.data.manifests import cuts_filename, save_cuts

LOG_EPS = math.log(1e-10)
WORDS = ["ALPHA", "BRAVO", "CHARLIE", "DELTA", "ECHO", "FOXTROT", "GOLF", "HOTEL",
         "INDIA", "JULIET", "KILO", "LIMA"]


@dataclass(frozen=True)
class Domain:
    """How a domain's features differ: channel offset, noise level, words used."""

    name: str
    offset_seed: int
    offset_scale: float
    noise: float
    words: tuple[str, ...] = tuple(WORDS)


DOMAIN_A = Domain("a", offset_seed=100, offset_scale=0.0, noise=0.3)
DOMAIN_B = Domain("b", offset_seed=200, offset_scale=1.5, noise=0.6)


def word_patterns(seed: int = 0, frames: int = 12) -> dict[str, np.ndarray]:
    """A (frames, 80) pattern per word, fixed by ``seed``: three Gaussian bumps (width 4
    bins, height 2-4) whose centres move linearly between two random bins."""
    rng = np.random.default_rng(seed)
    bins, t = np.arange(80)[None, :], np.arange(frames)[:, None] / frames
    patterns = {}
    for w in WORDS:
        spec = np.zeros((frames, 80))
        for _ in range(3):
            start, end = rng.uniform(5, 75, 2)
            centre = start + (end - start) * t
            spec += rng.uniform(2, 4) * np.exp(-((bins - centre) ** 2) / (2 * 4.0 ** 2))
        patterns[w] = spec.astype(np.float32)
    return patterns


def _utterance(rng: np.random.Generator, domain: Domain, patterns: dict[str, np.ndarray],
               quiet_tail: tuple[int, int] | None = None) -> tuple[str, np.ndarray]:
    # Dense speech (about 3 encoder frames a word) keeps alignments unambiguous, so a
    # small model learns in a few hundred steps; at least 1 s, as training requires.
    words = list(rng.choice(domain.words, size=int(rng.integers(6, 10))))
    pieces = [np.zeros((4, 80), np.float32)]
    for w in words:
        pieces += [patterns[w], np.zeros((int(rng.integers(0, 3)), 80), np.float32)]
    pieces.append(np.zeros((max(4, 104 - sum(len(p) for p in pieces)), 80), np.float32))
    feats = np.concatenate(pieces)
    offset = np.random.default_rng(domain.offset_seed).normal(0, domain.offset_scale, 80)
    feats = feats + offset.astype(np.float32) + rng.normal(0, domain.noise, feats.shape)
    if quiet_tail is not None:  # frames of log(1e-10), what padding and digital silence give
        tail = np.full((int(rng.integers(quiet_tail[0], quiet_tail[1] + 1)), 80), LOG_EPS)
        feats = np.concatenate([feats, tail])
    return " ".join(words), feats.astype(np.float32)


def make_cuts(out_dir: Path, prefix: str, part: str, num: int, seed: int,
              domain: Domain = DOMAIN_A, quiet_tail: tuple[int, int] | None = None) -> Path:
    """Writes ``num`` utterances' features and ``<prefix>_cuts_<part>.jsonl.gz``; with
    ``quiet_tail`` (min, max), each ends with that many frames of log(1e-10)."""
    rng = np.random.default_rng(seed)
    patterns = word_patterns()
    storage = out_dir / f"feats_{prefix}_{part}"
    cuts = []
    with NumpyFilesWriter(storage) as writer:
        for i in range(num):
            text, feats = _utterance(rng, domain, patterns, quiet_tail)
            cid = f"{prefix}-{part}-{i:04d}"
            duration = round(feats.shape[0] * 0.01, 2)
            key = writer.write(cid, feats)
            features = Features(type="fbank", num_frames=feats.shape[0], num_features=80,
                                frame_shift=0.01, sampling_rate=16000, start=0.0,
                                duration=duration, storage_type=writer.name,
                                storage_path=str(storage), storage_key=key,
                                recording_id=cid, channels=0)
            sup = SupervisionSegment(id=cid, recording_id=cid, start=0.0, duration=duration,
                                     channel=0, text=text)
            cuts.append(MonoCut(id=cid, start=0.0, duration=duration, channel=0,
                                features=features, supervisions=[sup]))
    return save_cuts(CutSet.from_cuts(cuts), out_dir / cuts_filename(prefix, part))


def make_corpus(root: Path, num_train: int = 48, num_valid: int = 12,
                quiet_tail: tuple[int, int] | None = None) -> dict[str, Path]:
    """Domain A train/valid and domain B train/valid, plus a BPE model. ``quiet_tail``:
    see :func:`make_cuts` (a model that streams must have seen the log(1e-10) frames
    streaming pads utterances with).

    Returns:
      {"manifest_dir", "bpe_model"} paths.
    """
    fbank = root / "fbank"
    fbank.mkdir(parents=True, exist_ok=True)
    for d, base_seed in ((DOMAIN_A, 0), (DOMAIN_B, 10)):
        make_cuts(fbank, f"dom{d.name}", "train", num_train, base_seed + 1, d, quiet_tail)
        make_cuts(fbank, f"dom{d.name}", "valid", num_valid, base_seed + 2, d, quiet_tail)
    # Word-sized units (as the demo uses): 300 sentences and 37 pieces make every word one.
    rng = np.random.default_rng(7)
    lines = [" ".join(rng.choice(WORDS, size=5)) for _ in range(300)]
    bpe = train_bpe_model(lines, root / "lang_bpe", vocab_size=37)
    return {"manifest_dir": fbank, "bpe_model": bpe}


# ---------------------------------------------------------------------------
# Audio whose fbank features are an utterance's
# ---------------------------------------------------------------------------

SAMPLE_RATE, HOP, NFFT = 16000, 160, 512


def _mel_matrix(num_bins: int = 80, low: float = 20.0, high: float = 7600.0) -> np.ndarray:
    """(80, NFFT / 2 + 1) triangular mel filters of Kaldi's fbank (20 Hz to Nyquist - 400)."""
    def mel(f):
        return 1127.0 * np.log(1.0 + f / 700.0)

    m = mel(np.arange(NFFT // 2 + 1) * SAMPLE_RATE / NFFT)
    edges = mel(low) + (mel(high) - mel(low)) * np.arange(num_bins + 2) / (num_bins + 1)
    left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    return np.clip(np.minimum((m - left) / (centre - left), (right - m) / (right - centre)),
                   0.0, None)


def _render(log_energies: np.ndarray, seed: int) -> np.ndarray:
    """Noise shaped, 10 ms frame by 10 ms frame, by mel energies exp(log_energies)."""
    filters = _mel_matrix()
    rng = np.random.default_rng(seed)
    power = (np.exp(log_energies) / filters.sum(axis=1)) @ filters  # (T, NFFT / 2 + 1)
    spectra = np.sqrt(power) * np.exp(2j * np.pi * rng.random(power.shape))
    frames = np.fft.irfft(spectra, NFFT, axis=1)[:, : 2 * HOP] * np.hanning(2 * HOP)
    wave = np.zeros((len(frames) + 1) * HOP)
    for t, frame in enumerate(frames):  # overlap-add, 50% overlap
        wave[t * HOP: t * HOP + 2 * HOP] += frame
    return wave.astype(np.float32)


def speech_from_features(features: np.ndarray, seed: int = 0, iterations: int = 5
                         ) -> np.ndarray:
    """16 kHz samples whose 80-bin fbank (kaldi-native-fbank, as sherpa-onnx and lhotse
    compute it) approximates ``features`` (T, 80), so that a model trained on this corpus
    hears its words in audio: shaped noise, corrected a few times against the measured
    features (mean error about 0.6, the size of the noise the corpus adds itself)."""
    from icefall.decode.onnx_runtime import compute_features

    log_energies = features.astype(np.float64).copy()
    for _ in range(iterations):
        got = compute_features(_render(log_energies, seed))[: len(features)]
        log_energies += 0.8 * (features - got)
    return _render(log_energies, seed)
