"""Checking a user's utterances (:mod:`icefall.data.user_data`) before anything is trained.

Each row's transcript is normalised and must not be empty; its audio must exist, be
readable, and last no longer than the training limit (and, for training data, no shorter
than its lower limit). Audio at another sample rate or with several channels is usable:
:func:`convert_audio` writes it at 16 kHz mono (resampled by lhotse, channels averaged).
:func:`split_held_out` draws a seeded test share when the user gives no test set.

Dimension legend: C = channels, S = samples.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from icefall.data.user_data import BadRow, Row
from icefall.files import atomic_write

SAMPLE_RATE = 16000
# icefall's training limits (remove_short_and_long_utt, icefall.data.filters)
MIN_SECONDS, MAX_SECONDS = 1.0, 20.0


@dataclass(frozen=True)
class AudioInfo:
    """What a sound file's header says."""

    sample_rate: int
    channels: int
    duration: float  # seconds

    @property
    def needs_conversion(self) -> bool:
        return self.sample_rate != SAMPLE_RATE or self.channels != 1


@dataclass
class CheckedRows:
    """The usable rows (text normalised, ``duration`` set), the bad ones, and the audio
    files that must be converted to 16 kHz mono."""

    rows: list[Row] = field(default_factory=list)
    bad: list[BadRow] = field(default_factory=list)
    convert: dict[Path, AudioInfo] = field(default_factory=dict)


def audio_info(path: Path) -> AudioInfo | str:
    """The header of ``path``, or what is wrong with it (missing, unreadable, empty)."""
    import soundfile as sf

    if not path.is_file():
        return f"audio not found: {path}"
    try:
        info = sf.info(str(path))
    except Exception as e:  # noqa: BLE001 - libsndfile raises several types
        return f"unreadable audio {path.name}: {' '.join(str(e).split())[:120]}"
    if info.frames <= 0 or info.samplerate <= 0:
        return f"audio {path.name} holds no samples"
    return AudioInfo(int(info.samplerate), int(info.channels), info.frames / info.samplerate)


def _duration_problem(row: Row, info: AudioInfo, min_seconds: float,
                      max_seconds: float) -> str | None:
    """What is wrong with the row's span of audio (None when nothing); sets its duration."""
    if row.duration is None:
        row.duration = info.duration - row.start
    if row.start < 0 or row.duration <= 0 or row.start + row.duration > info.duration + 0.01:
        return (f"segment {row.start:.2f}-{row.start + row.duration:.2f} s lies outside "
                f"its audio ({info.duration:.2f} s)")
    if row.duration > max_seconds:
        return f"too long: {row.duration:.1f} s (training takes at most {max_seconds:g} s)"
    if row.duration < min_seconds:
        return f"too short: {row.duration:.2f} s (training takes at least {min_seconds:g} s)"
    return None


def check_rows(rows: Sequence[Row], normalize: Callable[[str], str],
               min_seconds: float = MIN_SECONDS, max_seconds: float = MAX_SECONDS
               ) -> CheckedRows:
    """Normalises each row's text and checks it and its audio (see the module docstring).

    Args:
      rows: as read by :func:`icefall.data.user_data.read_rows`.
      normalize: the text normaliser (e.g. :func:`icefall.data.text.normalize_text`).
      min_seconds, max_seconds: the usable durations (0 lower limit for test data).
    Returns:
      The usable rows in input order, the bad ones, and the files to convert.
    """
    out, infos, seen = CheckedRows(), {}, set()
    for row in rows:
        if row.path not in infos:
            infos[row.path] = audio_info(row.path)
        info, raw = infos[row.path], row.text
        row.text = normalize(raw)
        if isinstance(info, str):
            problem = info
        elif not row.text:
            problem = ("empty transcript" if not raw.strip() else
                       f"empty transcript after normalisation (was '{raw.strip()[:40]}')")
        else:
            problem = _duration_problem(row, info, min_seconds, max_seconds)
        if problem is None and row.id in seen:
            problem = "the same id as an earlier row (give an id column)"
        if problem is not None:
            out.bad.append(BadRow(row.id, row.where, problem))
            continue
        seen.add(row.id)
        if info.needs_conversion:
            out.convert[row.path] = info
        out.rows.append(row)
    return out


def convert_audio(src: Path, dst: Path) -> None:
    """Writes ``src`` to ``dst`` as 16 kHz mono 16-bit WAV: resampled by lhotse's
    ``Recording.resample``, channels averaged; written atomically.

    Raises:
      ImportError: resampling needs scipy here (lhotse uses it when torchaudio is absent).
      ValueError: naming ``src`` when its audio cannot be decoded.
    """
    import soundfile as sf
    from lhotse import Recording

    try:
        recording = Recording.from_file(str(src)).resample(SAMPLE_RATE)
        samples = recording.load_audio()  # (C, S) at 16 kHz
    except ModuleNotFoundError as e:
        package = e.name or "scipy"  # lhotse's resampler without torchaudio
        raise ImportError(f"resampling {src.name} needs the '{package}' package: pip install "
                          f"-r requirements.txt") from e
    except Exception as e:  # noqa: BLE001 - any decoder failure is one line
        raise ValueError(f"cannot decode audio {src}: {e}") from e
    mono = np.clip(samples.mean(axis=0), -1.0, 1.0)  # (S,)
    dst.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(dst, lambda tmp: sf.write(str(tmp), mono, SAMPLE_RATE, subtype="PCM_16",
                                           format="WAV"))


def recording_key(row: Row) -> str:
    """The recording a row belongs to (rows of one file go to the same side of a split)."""
    return row.recording_id or row.id


def split_held_out(rows: Sequence[Row], share: float, seed: int
                   ) -> tuple[list[Row], list[Row]]:
    """A seeded split of ``rows`` into (train, test), whole recordings to one side, about
    ``share`` of the recordings (at least one) held out.

    Raises:
      ValueError: fewer than two recordings, or ``share`` outside (0, 1).
    """
    if not 0.0 < share < 1.0:
        raise ValueError(f"--test-share must lie between 0 and 1, got {share}")
    keys = sorted({recording_key(r) for r in rows})
    if len(keys) < 2:
        raise ValueError(f"{len(keys)} usable recording(s): too few to hold a test share "
                         "out; give --test-csv")
    random.Random(seed).shuffle(keys)
    held = set(keys[: min(len(keys) - 1, max(1, round(share * len(keys))))])
    train = [r for r in rows if recording_key(r) not in held]
    test = [r for r in rows if recording_key(r) in held]
    return train, test
