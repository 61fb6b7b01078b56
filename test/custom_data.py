"""A user's data as the custom recipe (egs/custom/ASR) takes it, generated for the tests:
sound files (numpy tones and noise) with transcripts in a CSV or in same-named .txt files
of a folder, including the bad rows real data has, a BPE model of the words, and a base
checkpoint to fine-tune.

Every utterance is its words in sequence, each word a fixed chord of three tones (seeded)
over a little noise, so different texts sound different.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from icefall.data import load_bpe_model, train_bpe_model
from icefall.zipformer import get_model
from icefall.zipformer.build import model_config

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
# the bad rows planted in train.csv, by the reason prepare_data.py gives
BAD_ROWS = {"missing": "audio not found", "broken": "unreadable audio",
            "empty": "empty transcript", "long": "too long"}


def utterance(rng: np.random.Generator, words: list[str], rate: int) -> np.ndarray:
    """(S,) float32: each word a 0.25 s chord of its three tones, then 0.05 s of pause."""
    chords = np.random.default_rng(123).uniform(200, 3000, (len(WORDS), 3))
    pieces = [np.zeros(int(0.2 * rate))]
    for w in words:
        t = np.arange(int(0.25 * rate)) / rate
        pieces += [np.sin(2 * np.pi * chords[WORDS.index(w)][:, None] * t).sum(0) / 6,
                   np.zeros(int(0.05 * rate))]
    pieces.append(np.zeros(int(0.2 * rate)))
    x = np.concatenate(pieces)
    return (x + rng.normal(0, 0.01, x.shape)).astype(np.float32)


def _write(path: Path, samples: np.ndarray, rate: int, channels: int = 1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = samples if channels == 1 else np.stack([samples] * channels, axis=1)
    sf.write(str(path), data, rate)


def _utterances(root: Path, folder: str, name: str, num: int, seed: int
                ) -> list[tuple[str, str, str]]:
    """Writes ``num`` utterances to ``root/<folder>/<name>-<i>.wav``: the first in
    44.1 kHz stereo, the second at 8 kHz (both converted by the recipe), the rest 16 kHz
    mono. Returns (id, path relative to root, raw text) of each."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(num):
        words = list(rng.choice(WORDS, size=int(rng.integers(3, 6))))
        rate, channels = {0: (44100, 2), 1: (8000, 1)}.get(i, (16000, 1))
        rel = f"{folder}/{name}-{i:03d}.wav"
        _write(root / rel, utterance(rng, words, rate), rate, channels)
        text = " ".join(words).capitalize() + ("!" if i % 2 else ".")  # normalised later
        out.append((f"{name}-{i:03d}", rel, text))
    return out


def make_folder(root: Path, name: str, num: int, seed: int) -> Path:
    """``root/<name>/``: sound files with same-named .txt transcripts, and one sound file
    without a transcript (a bad row)."""
    for _, rel, text in _utterances(root, name, name, num, seed):
        (root / rel).with_suffix(".txt").write_text(text + "\n")
    _write(root / name / "orphan.wav", utterance(np.random.default_rng(0), WORDS[:3], 16000),
           16000)
    return root / name


def make_csv(root: Path, name: str, num: int, seed: int, bad_rows: bool) -> Path:
    """``root/<name>.csv`` (columns id, path, text, speaker; paths relative to the CSV)
    and its audio under ``root/audio/<name>/``: one file in 44.1 kHz stereo and one in
    8 kHz (both converted by the recipe); with ``bad_rows``, the rows of BAD_ROWS."""
    rows = [(utt, rel, text, f"spk{i % 3}") for i, (utt, rel, text) in
            enumerate(_utterances(root, f"audio/{name}", name, num, seed))]
    rng = np.random.default_rng(seed + 1)
    if bad_rows:
        (root / "audio" / "broken.wav").write_bytes(b"RIFF-not-a-wave")
        _write(root / "audio" / "long.wav", utterance(rng, WORDS * 9, 16000), 16000)
        rows += [("missing", "audio/nothing.wav", "alpha", "spk0"),
                 ("broken", "audio/broken.wav", "alpha", "spk0"),
                 ("empty", f"audio/{name}/{name}-002.wav", " ", "spk0"),
                 ("long", "audio/long.wav", " ".join(WORDS * 9), "spk0")]
    path = root / f"{name}.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "path", "text", "speaker"])
        writer.writerows(rows)
    return path


def make_bpe(root: Path) -> Path:
    """An upper-case BPE model whose pieces are the words (as LibriSpeech's is upper case)."""
    rng = np.random.default_rng(7)
    lines = [" ".join(rng.choice(WORDS, size=5)).upper() for _ in range(200)]
    return train_bpe_model(lines, root / "lang_bpe", vocab_size=24)


def make_base_checkpoint(path: Path, bpe_model: Path, model: dict) -> Path:
    """A base model of the ``model`` flags, stored as this project's checkpoints are
    (weights and, under params["model"], the configuration)."""
    sp = load_bpe_model(bpe_model)
    cfg = dict(model, vocab_size=sp.get_piece_size(), blank_id=0)
    torch.manual_seed(0)
    torch.save({"model": get_model(cfg).state_dict(), "params": {"model": model_config(cfg)}},
               path)
    return path
