"""A small corpus generated in the tests: lhotse cuts with stored 80-dim features, and a
BPE model trained on their transcripts.

Every word has a fixed spectral pattern (seeded): three formant-like bumps gliding across
the 80 bins over 12 frames, smooth in frequency as real spectra are. Each utterance is its
words' patterns in sequence, with a little silence and Gaussian noise. Two "domains"
differ by a fixed channel offset and noise level, which a model trained on one must adapt
to.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from lhotse import CutSet, MonoCut, SupervisionSegment
from lhotse.features import Features
from lhotse.features.io import NumpyFilesWriter

from icefall.data import train_bpe_model
from icefall.data.manifests import cuts_filename, save_cuts

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


def _utterance(rng: np.random.Generator, domain: Domain,
               patterns: dict[str, np.ndarray]) -> tuple[str, np.ndarray]:
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
    return " ".join(words), feats.astype(np.float32)


def make_cuts(out_dir: Path, prefix: str, part: str, num: int, seed: int,
              domain: Domain = DOMAIN_A) -> Path:
    """Writes ``num`` utterances' features and ``<prefix>_cuts_<part>.jsonl.gz``."""
    rng = np.random.default_rng(seed)
    patterns = word_patterns()
    storage = out_dir / f"feats_{prefix}_{part}"
    cuts = []
    with NumpyFilesWriter(storage) as writer:
        for i in range(num):
            text, feats = _utterance(rng, domain, patterns)
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


def make_corpus(root: Path, num_train: int = 48, num_valid: int = 12) -> dict[str, Path]:
    """Domain A train/valid and domain B train/valid, plus a BPE model.

    Returns:
      {"manifest_dir", "bpe_model"} paths.
    """
    fbank = root / "fbank"
    fbank.mkdir(parents=True, exist_ok=True)
    for d, base_seed in ((DOMAIN_A, 0), (DOMAIN_B, 10)):
        make_cuts(fbank, f"dom{d.name}", "train", num_train, base_seed + 1, d)
        make_cuts(fbank, f"dom{d.name}", "valid", num_valid, base_seed + 2, d)
    # Word-sized units (as the demo uses): 300 sentences and 37 pieces make every word one.
    rng = np.random.default_rng(7)
    lines = [" ".join(rng.choice(WORDS, size=5)) for _ in range(300)]
    bpe = train_bpe_model(lines, root / "lang_bpe", vocab_size=37)
    return {"manifest_dir": fbank, "bpe_model": bpe}
