#!/usr/bin/env python3
"""Synthesise the demo's two speech domains with eSpeak NG, deterministically.

Usage (from egs/synth/ASR):

    python local/synthesize.py --out-dir data \\
        --num-utts-a 3000 --num-utts-b 1000 --num-dev 200 --num-test 200 --seed 42

Domain A ("audiobooks", the LibriSpeech stand-in): narrative sentences read by eleven
American voices (eSpeak's en-us and its variants) at 150-190 words per minute over a faint
noise floor. Domain B ("podcasts", the GigaSpeech stand-in): technology and conversation
sentences whose vocabulary shares ``--shared-fraction`` of its words with A, spoken by New York
voices (en-us-nyc variants), faster and over a wider pitch range, with coloured noise at
``--snr-b`` dB, some of it through a small room (an exponentially decaying noise impulse
response behind a near-microphone direct path). Every sentence is a fresh draw from templates
over the domain's vocabulary; test, dev and train sentences never repeat within a domain.

Writes (with prefixes ``synth_a`` / ``synth_b`` and parts ``train`` / ``dev`` / ``test``):

    <out-dir>/wav/<prefix>/<part>/<utt-id>.wav                   16 kHz, 16-bit PCM
    <manifest-dir>/<prefix>_recordings_<part>.jsonl.gz           lhotse RecordingSet
    <manifest-dir>/<prefix>_supervisions_<part>.jsonl.gz         lhotse SupervisionSet
    <manifest-dir>/<prefix>_vocab.txt                            the domain's words
    <manifest-dir>/synth_summary.json                            sizes, durations, vocabulary

``<manifest-dir>`` defaults to ``<out-dir>/manifests``. Recording paths are written as
``<out-dir>/wav/...``, so use a relative ``--out-dir`` from the directory the recipe runs in.
The output depends only on the flags (not on ``--num-jobs``): each block of utterances is
spoken in a fresh copy of eSpeak NG, and every random draw comes from ``--seed``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import wave
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from espeak import TARGET_SAMPLE_RATE, Espeak, EspeakError  # noqa: E402

from icefall.cli import exit_with_error, run_guarded  # noqa: E402
from icefall.cli.flags import ArgumentParser, finite_float, nonnegative_float, positive_int

DOMAINS = ("a", "b")
PARTS = ("test", "dev", "train")  # generation order: test sentences are drawn first
BLOCK_SIZE = 64  # utterances per eSpeak session (the unit of determinism)

# ----------------------------------------------------------------------------- vocabulary
# Function words shared by both domains, and the copula that marks each domain's tense.
FUNCTION_WORDS: dict[str, tuple[str, ...]] = {
    "det": ("THE", "THIS", "THAT", "HIS", "HER", "OUR", "THEIR", "MY", "YOUR", "EVERY"),
    "pron": ("HE", "SHE", "WE", "THEY", "YOU", "I"),
    "prep": (
        "IN", "ON", "WITH", "FROM", "INTO", "NEAR", "UNDER", "AFTER", "BEFORE", "ABOUT",
        "OVER", "WITHOUT",
    ),
    "conj": ("AND", "BUT", "THEN", "SO"),
}
COPULA = {"a": ("WAS",), "b": ("IS",)}

# Content words per domain and category: how many of each a domain's vocabulary holds.
CONTENT_SIZES = {"noun": 56, "name": 12, "adj": 28, "vt": 26, "vi": 18, "adv": 12}

# Pools: words that suit both domains ("common"), narrative ("a"), podcast/technology ("b").
# A domain takes its shared words from the common pool and the rest from its own pool; each
# pool is as large as the category so that any shared fraction can be served.
COMMON_POOL: dict[str, tuple[str, ...]] = {
    "noun": (
        "DOOR", "WINDOW", "TABLE", "CHAIR", "LETTER", "BOOK", "ROOM", "HOUSE", "CITY",
        "STREET", "ROAD", "GARDEN", "TREE", "WATER", "FIRE", "LIGHT", "PAPER", "PICTURE",
        "MONEY", "FRIEND", "FAMILY", "DOCTOR", "TEACHER", "CHILD", "WOMAN", "MAN", "MOTHER",
        "FATHER", "BROTHER", "SISTER", "MORNING", "EVENING", "WINTER", "SUMMER", "STORY",
        "QUESTION", "ANSWER", "PROBLEM", "IDEA", "PLAN", "VOICE", "HAND", "FACE", "HEART",
        "WORD", "GROUP", "BOX", "BAG", "CAR", "TRAIN", "BRIDGE", "MARKET", "KITCHEN",
        "SCHOOL", "DOG", "BIRD", "BREAD", "COFFEE", "SONG", "MUSIC",
    ),
    "name": (
        "ANNA", "DAVID", "SARAH", "PETER", "MARIA", "DANIEL", "LUCY", "THOMAS", "EMMA",
        "SAMUEL", "JULIA", "MARTIN",
    ),
    "adj": (
        "OLD", "NEW", "SMALL", "BIG", "LONG", "SHORT", "GOOD", "BAD", "DARK", "BRIGHT",
        "QUIET", "LOUD", "COLD", "WARM", "HAPPY", "STRANGE", "SIMPLE", "EMPTY", "BROKEN",
        "HEAVY", "FAMOUS", "BEAUTIFUL", "YOUNG", "CLEVER", "GREEN", "BLACK", "WHITE", "GREAT",
    ),
    "vt": (
        "FOUND", "SAW", "TOOK", "MADE", "GAVE", "BROUGHT", "KEPT", "OPENED", "CLOSED",
        "CARRIED", "WATCHED", "HEARD", "MET", "CALLED", "LOVED", "HELPED", "FOLLOWED",
        "REMEMBERED", "CHANGED", "SHOWED", "MOVED", "WANTED", "NEEDED", "FIXED", "LOST",
        "BOUGHT", "SOLD", "PAINTED",
    ),
    "vi": (
        "SLEPT", "LAUGHED", "SMILED", "WAITED", "STOPPED", "STARTED", "ARRIVED", "RETURNED",
        "SPOKE", "LISTENED", "WORKED", "PLAYED", "TALKED", "WALKED", "RAN", "SAT", "STOOD",
        "CRIED", "AGREED",
    ),
    "adv": (
        "SLOWLY", "QUICKLY", "TODAY", "YESTERDAY", "AGAIN", "TOGETHER", "OUTSIDE", "LATER",
        "EARLY", "ALONE", "QUIETLY", "CAREFULLY",
    ),
}
DOMAIN_POOL: dict[str, dict[str, tuple[str, ...]]] = {
    "a": {
        "noun": (
            "KING", "QUEEN", "CASTLE", "FOREST", "RIVER", "MOUNTAIN", "VILLAGE", "SHIP",
            "SWORD", "HORSE", "CANDLE", "LANTERN", "CARRIAGE", "SOLDIER", "CAPTAIN", "SAILOR",
            "PRIEST", "MERCHANT", "SHEPHERD", "FARMER", "WIDOW", "STRANGER", "PRINCE",
            "PRINCESS", "DRAGON", "WOLF", "SHEEP", "MEADOW", "VALLEY", "HARBOR", "CHURCH",
            "TOWER", "CHAMBER", "CLOAK", "BASKET", "WHEAT", "COTTAGE", "FIREPLACE",
            "STAIRCASE", "LAKE", "ISLAND", "STORM", "THUNDER", "MOON", "SHADOW", "GHOST",
            "TREASURE", "CROWN", "BLANKET", "HAMMER", "WAGON", "PALACE", "CAVE", "ORCHARD",
            "BELL", "SERVANT", "DUKE", "LADY",
        ),
        "name": (
            "ARTHUR", "MARGARET", "EDWARD", "ELEANOR", "HENRY", "BEATRICE", "WALTER",
            "CHARLOTTE", "GEORGE", "FLORENCE", "ALBERT", "HAROLD",
        ),
        "adj": (
            "ANCIENT", "GOLDEN", "SILENT", "WICKED", "NOBLE", "GENTLE", "WEARY", "HOLLOW",
            "LONELY", "FROZEN", "PROUD", "HUMBLE", "GRIM", "FAITHFUL", "ROYAL", "WILD",
            "MISTY", "SOLEMN", "BRAVE", "POOR", "WOODEN", "SACRED", "DISTANT", "TERRIBLE",
            "CRUEL", "FOOLISH", "MERRY", "PALE",
        ),
        "vt": (
            "CLIMBED", "CROSSED", "GUARDED", "BURIED", "SEIZED", "CURSED", "BLESSED", "CARVED",
            "FEARED", "ADMIRED", "PURSUED", "SUMMONED", "BETRAYED", "RESCUED", "WOUNDED",
            "SHELTERED", "GATHERED", "BURNED", "DEFENDED", "CAPTURED", "FORGAVE", "DESTROYED",
            "OBEYED", "PRAISED", "TAMED", "PLUNDERED",
        ),
        "vi": (
            "WEPT", "KNELT", "PRAYED", "WANDERED", "TREMBLED", "VANISHED", "SIGHED",
            "WHISPERED", "GALLOPED", "SHIVERED", "FAINTED", "SLUMBERED", "MOURNED",
            "LINGERED", "ROAMED", "PERISHED", "FLED", "SAILED",
        ),
        "adv": (
            "SOFTLY", "BRAVELY", "SADLY", "GENTLY", "SWIFTLY", "SILENTLY", "SUDDENLY",
            "FOREVER", "ONCE", "TONIGHT", "HOMEWARD", "UPSTAIRS",
        ),
    },
    "b": {
        "noun": (
            "COMPUTER", "LAPTOP", "SERVER", "NETWORK", "PHONE", "APP", "WEBSITE", "SOFTWARE",
            "DATA", "MODEL", "ALGORITHM", "DATABASE", "CLOUD", "BROWSER", "KEYBOARD", "SCREEN",
            "CAMERA", "MICROPHONE", "PODCAST", "EPISODE", "VIDEO", "CHANNEL", "STARTUP",
            "COMPANY", "PRODUCT", "BUDGET", "MEETING", "OFFICE", "PROJECT", "DEADLINE", "TEAM",
            "MANAGER", "ENGINEER", "DEVELOPER", "CUSTOMER", "INTERVIEW", "AUDIENCE", "SPONSOR",
            "NEWSLETTER", "PLATFORM", "FEATURE", "VERSION", "BUG", "PASSWORD", "ACCOUNT",
            "EMAIL", "MESSAGE", "INTERNET", "ROBOT", "BATTERY", "CHIP", "PROCESSOR",
            "SPREADSHEET", "DASHBOARD", "STRATEGY", "INVESTOR", "CONFERENCE", "PROTOTYPE",
        ),
        "name": (
            "JASON", "KEVIN", "TYLER", "ASHLEY", "BRANDON", "MEGAN", "JUSTIN", "BRITTANY",
            "KYLE", "JESSICA", "RYAN", "NICOLE",
        ),
        "adj": (
            "DIGITAL", "ONLINE", "MOBILE", "SMART", "FAST", "SLOW", "CHEAP", "EXPENSIVE",
            "AWESOME", "COOL", "FREE", "PUBLIC", "PRIVATE", "SECURE", "VIRTUAL", "GLOBAL",
            "DIFFERENT", "IMPORTANT", "EASY", "HARD", "TECHNICAL", "EXCITING", "BORING",
            "RANDOM", "WEIRD", "HUGE", "CRAZY", "USEFUL",
        ),
        "vt": (
            "DOWNLOADED", "UPLOADED", "INSTALLED", "DEPLOYED", "TESTED", "DEBUGGED", "SHIPPED",
            "LAUNCHED", "BUILT", "DESIGNED", "CODED", "TRAINED", "SHARED", "POSTED",
            "STREAMED", "RECORDED", "EDITED", "PUBLISHED", "HIRED", "SCALED", "MEASURED",
            "ANALYZED", "AUTOMATED", "REVIEWED", "PITCHED", "FUNDED",
        ),
        "vi": (
            "CRASHED", "REBOOTED", "SUBSCRIBED", "PIVOTED", "COMMUTED", "GRADUATED",
            "FREELANCED", "BRAINSTORMED", "LAGGED", "BUFFERED", "SYNCED", "RESIGNED",
            "NEGOTIATED", "COLLABORATED", "EXPERIMENTED", "UPGRADED", "OVERSLEPT", "BLOGGED",
        ),
        "adv": (
            "REMOTELY", "ACTUALLY", "BASICALLY", "HONESTLY", "LITERALLY", "TOTALLY",
            "DEFINITELY", "OBVIOUSLY", "RECENTLY", "WEEKLY", "AUTOMATICALLY", "OFFLINE",
        ),
    },
}

# Sentence templates: lower-case names are word categories, upper-case words are literal.
TEMPLATES: tuple[tuple[str, ...], ...] = (
    ("name", "vi"),
    ("det", "noun", "vi"),
    ("pron", "vt", "name"),
    ("name", "vi", "adv"),
    ("adv", "pron", "vi"),
    ("det", "adj", "noun", "vi"),
    ("name", "vt", "det", "noun"),
    ("det", "noun", "cop", "adj"),
    ("conj", "pron", "vt", "det", "noun"),
    ("pron", "vt", "det", "adj", "noun"),
    ("pron", "vi", "prep", "det", "noun"),
    ("det", "adj", "noun", "cop", "adj"),
    ("name", "vt", "det", "noun", "adv"),
    ("name", "AND", "name", "vi", "adv"),
    ("det", "noun", "vi", "prep", "det", "noun"),
    ("conj", "name", "vt", "det", "adj", "noun"),
)


@dataclass(frozen=True)
class Vocabulary:
    """A domain's words by category (function words, copula and content words)."""

    words: dict[str, tuple[str, ...]]

    def all_words(self) -> frozenset[str]:
        """Every word of the domain."""
        return frozenset(w for ws in self.words.values() for w in ws)


def _split_quota(total: int, sizes: dict[str, int]) -> dict[str, int]:
    """Share ``total`` among categories in proportion to ``sizes`` (largest remainder)."""
    whole = sum(sizes.values())
    exact = {c: total * n / whole for c, n in sizes.items()}
    quota = {c: int(x) for c, x in exact.items()}
    by_remainder = sorted(sizes, key=lambda c: (exact[c] - quota[c], c), reverse=True)
    for c in by_remainder[: total - sum(quota.values())]:
        quota[c] += 1
    return quota


def vocabulary_size() -> int:
    """Number of words in each domain's vocabulary (the same for both)."""
    n_function = sum(len(ws) for ws in FUNCTION_WORDS.values())
    return n_function + len(COPULA["a"]) + sum(CONTENT_SIZES.values())


def build_vocabularies(shared_fraction: float) -> dict[str, Vocabulary]:
    """Both domains' vocabularies, of equal size V, sharing ``round(shared_fraction * V)``.

    Function words are always shared and the copula never; the remaining shared words are
    content words, spread over the categories in proportion to their sizes.
    """
    size = vocabulary_size()
    n_function = sum(len(ws) for ws in FUNCTION_WORDS.values())
    n_shared = round(shared_fraction * size)
    lowest, highest = n_function, size - len(COPULA["a"])
    if not lowest <= n_shared <= highest:
        raise ValueError(
            f"--shared-fraction must lie in [{lowest / size:.3f}, {highest / size:.3f}] "
            f"(function words are always shared, the copula never): got {shared_fraction}"
        )
    quota = _split_quota(n_shared - n_function, CONTENT_SIZES)
    vocabs = {}
    for dom in DOMAINS:
        words = dict(FUNCTION_WORDS)
        words["cop"] = COPULA[dom]
        for cat, n in CONTENT_SIZES.items():
            words[cat] = COMMON_POOL[cat][: quota[cat]] + DOMAIN_POOL[dom][cat][: n - quota[cat]]
        vocabs[dom] = Vocabulary(words)
    return vocabs


def sample_sentence(rng: np.random.Generator, vocab: Vocabulary) -> str:
    """One sentence: a random template filled with random words (two names always differ)."""
    template = TEMPLATES[rng.integers(len(TEMPLATES))]
    words: list[str] = []
    for slot in template:
        if slot.isupper():
            words.append(slot)
            continue
        options = vocab.words[slot]
        word = options[rng.integers(len(options))]
        while word in words and len(options) > 1:
            word = options[rng.integers(len(options))]
        words.append(word)
    return " ".join(words)


def generate_texts(
    rng: np.random.Generator, vocab: Vocabulary, counts: dict[str, int]
) -> dict[str, list[str]]:
    """Distinct sentences for each part, drawn in the order of ``counts``; none repeats."""
    seen: set[str] = set()
    texts: dict[str, list[str]] = {}
    for part, count in counts.items():
        texts[part] = []
        misses = 0
        while len(texts[part]) < count:
            sentence = sample_sentence(rng, vocab)
            if sentence in seen:
                misses += 1
                if misses > 100 * max(count, 100):
                    raise RuntimeError(f"cannot draw {count} distinct sentences for {part}")
                continue
            seen.add(sentence)
            texts[part].append(sentence)
    return texts


# ----------------------------------------------------------------------------- acoustics
@dataclass(frozen=True)
class DomainStyle:
    """How a domain sounds: voices, prosody ranges and channel."""

    voices: tuple[str, ...]
    rate: tuple[int, int]  # words per minute
    pitch: tuple[int, int]  # eSpeak 0..100
    pitch_range: tuple[int, int]  # eSpeak 0..100
    snr_db: tuple[float, float]  # additive noise
    reverb_prob: float
    rt60: tuple[float, float]  # seconds
    drr_db: tuple[float, float] = (0.0, 6.0)  # direct-to-reverberant ratio
    noise_exponent: tuple[float, float] = (1.0, 2.0)  # noise spectrum 1/f^e: pink to brown
    level_dbfs: tuple[float, float] = (-28.0, -20.0)  # speech RMS level
    pad: tuple[float, float] = (0.1, 0.25)  # leading/trailing silence, seconds


# A: many speakers of one accent (LibriSpeech has thousands of readers), so that the base
# model learns speaker-independent features; B: another accent, other speakers.
DEFAULT_VOICES = {
    "a": ("en-us", "en-us+m1", "en-us+m2", "en-us+m3", "en-us+m4", "en-us+m5", "en-us+m6",
          "en-us+f1", "en-us+f2", "en-us+f3", "en-us+f4"),
    "b": ("en-us-nyc", "en-us-nyc+m3", "en-us-nyc+f2", "en-us-nyc+f4"),
}


@dataclass
class Utterance:
    """One utterance to speak, with every random choice already drawn."""

    utt_id: str
    text: str
    wav_path: str
    voice: str
    rate: int
    pitch: int
    pitch_range: int
    espeak_seed: int
    channel_seed: int
    snr_db: float
    rt60: float  # 0: no reverberation
    speaker: str = field(default="")


def draw_utterances(
    rng: np.random.Generator, style: DomainStyle, texts: list[str], prefix: str, part: str,
    wav_dir: Path,
) -> list[Utterance]:
    """Draw voice, prosody and channel for each text of one part."""
    utts = []
    for i, text in enumerate(texts):
        voice = style.voices[rng.integers(len(style.voices))]
        reverb = rng.random() < style.reverb_prob
        rt60 = float(rng.uniform(*style.rt60)) if reverb else 0.0
        utt_id = f"{prefix}-{part}-{i:06d}"
        utts.append(
            Utterance(
                utt_id=utt_id,
                text=text,
                wav_path=str(wav_dir / f"{utt_id}.wav"),
                voice=voice,
                rate=int(rng.integers(style.rate[0], style.rate[1] + 1)),
                pitch=int(rng.integers(style.pitch[0], style.pitch[1] + 1)),
                pitch_range=int(rng.integers(style.pitch_range[0], style.pitch_range[1] + 1)),
                espeak_seed=int(rng.integers(1, 2**31 - 1)),
                channel_seed=int(rng.integers(0, 2**63 - 1)),
                snr_db=round(float(rng.uniform(*style.snr_db)), 2),
                rt60=round(rt60, 3),
                speaker=f"{prefix}-{voice.replace('+', '-')}",
            )
        )
    return utts


def frame_powers(wav: np.ndarray, frame: int = 320) -> np.ndarray:
    """Mean power of consecutive non-overlapping frames (20 ms at 16 kHz)."""
    n = len(wav) // frame
    if n == 0:
        return np.array([float(np.mean(wav**2)) if len(wav) else 0.0])
    return np.mean(wav[: n * frame].reshape(n, frame).astype(np.float64) ** 2, axis=1)


def active_power(wav: np.ndarray, floor_db: float = 30.0) -> float:
    """Mean power over frames within ``floor_db`` of the loudest one (the speech)."""
    p = frame_powers(wav)
    return float(np.mean(p[p >= p.max() * 10 ** (-floor_db / 10)])) if p.max() > 0 else 0.0


def estimate_snr(wav: np.ndarray) -> float:
    """Blind SNR estimate in dB: loudest 30% of frames against the quietest 10%."""
    p = np.sort(frame_powers(wav))
    k = max(1, len(p) // 10)
    noise = float(np.mean(p[:k])) + 1e-12
    speech = float(np.mean(p[-max(1, (3 * len(p)) // 10) :]))
    return 10 * np.log10(max(speech - noise, 1e-12) / noise)


def room_impulse_response(
    rng: np.random.Generator, rt60: float, drr_db: float, sample_rate: int
) -> np.ndarray:
    """A synthetic room: a direct path, then exponentially decaying Gaussian noise.

    The tail starts after a 2-8 ms gap, decays by 60 dB in ``rt60`` seconds and carries
    ``drr_db`` dB less energy than the direct path.
    """
    length = int(min(1.2 * rt60, 1.0) * sample_rate)
    gap = int(rng.uniform(0.002, 0.008) * sample_rate)
    t = np.arange(length - gap) / sample_rate
    tail = rng.standard_normal(length - gap) * np.exp(-6.9078 * t / rt60)
    tail *= np.sqrt(10 ** (-drr_db / 10) / np.sum(tail**2))
    rir = np.zeros(length)
    rir[0] = 1.0
    rir[gap:] = tail
    return rir


def coloured_noise(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Unit-power Gaussian noise with a 1/f^exponent power spectrum (0 white, 1 pink).

    The spectrum is flat below 0.005 of the sampling rate (80 Hz at 16 kHz), so the noise
    power lies where speech is rather than in inaudible rumble.
    """
    n_fft = 1 << max(n - 1, 1).bit_length()  # a power of two: fast, and cut to n below
    spec = np.fft.rfft(rng.standard_normal(n_fft))
    freqs = np.maximum(np.fft.rfftfreq(n_fft), 0.005)
    noise = np.fft.irfft(spec / freqs ** (exponent / 2), n_fft)[:n]
    return noise / (np.sqrt(np.mean(noise**2)) + 1e-12)


def apply_channel(
    wav: np.ndarray, utt: Utterance, style: DomainStyle, sample_rate: int
) -> np.ndarray:
    """Pad with silence, reverberate, add noise at ``utt.snr_db`` and set the level."""
    rng = np.random.default_rng(utt.channel_seed)
    lead, trail = (int(rng.uniform(*style.pad) * sample_rate) for _ in range(2))
    x = np.concatenate([np.zeros(lead), wav.astype(np.float64), np.zeros(trail)])
    if utt.rt60 > 0:
        rir = room_impulse_response(rng, utt.rt60, rng.uniform(*style.drr_db), sample_rate)
        n_fft = 1 << (len(x) + len(rir) - 1).bit_length()
        x = np.fft.irfft(np.fft.rfft(x, n_fft) * np.fft.rfft(rir, n_fft), n_fft)[: len(x)]
    speech_power = active_power(x)
    noise = coloured_noise(rng, len(x), rng.uniform(*style.noise_exponent))
    x = x + noise * np.sqrt(speech_power * 10 ** (-utt.snr_db / 10))
    gain = np.sqrt(10 ** (rng.uniform(*style.level_dbfs) / 10) / max(speech_power, 1e-12))
    x *= gain
    peak = np.max(np.abs(x))
    if peak > 0.99:
        x *= 0.99 / peak
    return x.astype(np.float32)


def synthesize_block(utts: Sequence[Utterance], style: DomainStyle) -> list[int]:
    """Speak a block of utterances in one eSpeak session; write wavs; return sample counts."""
    counts = []
    with Espeak.get().session() as tts:
        for utt in utts:
            wav = tts.synthesize(
                utt.text.lower(),  # lower case: eSpeak would spell some upper-case words
                voice=utt.voice,
                rate=utt.rate,
                pitch=utt.pitch,
                pitch_range=utt.pitch_range,
                seed=utt.espeak_seed,
            )
            out = apply_channel(wav, utt, style, TARGET_SAMPLE_RATE)
            write_wav(utt.wav_path, out, TARGET_SAMPLE_RATE)
            counts.append(len(out))
    return counts


def write_wav(path: str | Path, wav: np.ndarray, sample_rate: int) -> None:
    """Write mono 16-bit PCM (stdlib ``wave``: no fsync per file, unlike libsndfile)."""
    pcm = np.clip(np.round(wav * 32768.0), -32768, 32767).astype("<i2")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sample_rate)
        f.writeframes(pcm.tobytes())


# ----------------------------------------------------------------------------- manifests
def write_manifests(
    utts: Sequence[Utterance], num_samples: Sequence[int], manifest_dir: Path, prefix: str,
    part: str,
) -> None:
    """Write the part's lhotse RecordingSet and SupervisionSet (icefall's file names)."""
    from lhotse import AudioSource, Recording, RecordingSet, SupervisionSegment, SupervisionSet

    recordings, supervisions = [], []
    for utt, n in zip(utts, num_samples, strict=True):
        duration = n / TARGET_SAMPLE_RATE
        recordings.append(
            Recording(
                id=utt.utt_id,
                sources=[AudioSource(type="file", channels=[0], source=utt.wav_path)],
                sampling_rate=TARGET_SAMPLE_RATE,
                num_samples=n,
                duration=duration,
            )
        )
        custom = {k: getattr(utt, k) for k in ("voice", "rate", "pitch", "snr_db", "rt60")}
        supervisions.append(
            SupervisionSegment(
                id=utt.utt_id, recording_id=utt.utt_id, start=0.0, duration=duration,
                channel=0, text=utt.text, language="English", speaker=utt.speaker,
                custom=custom,
            )
        )
    manifest_dir.mkdir(parents=True, exist_ok=True)
    RecordingSet.from_recordings(recordings).to_file(
        manifest_dir / f"{prefix}_recordings_{part}.jsonl.gz"
    )
    SupervisionSet.from_segments(supervisions).to_file(
        manifest_dir / f"{prefix}_supervisions_{part}.jsonl.gz"
    )


def duration_stats(durations: Sequence[float]) -> dict[str, float]:
    """Count, total hours and the distribution of utterance durations (seconds)."""
    d = np.asarray(durations, dtype=np.float64)
    if d.size == 0:
        return {"count": 0}
    q = np.percentile(d, [5, 50, 95])
    return {
        "count": int(d.size), "hours": round(float(d.sum()) / 3600, 4),
        "min": round(float(d.min()), 3), "p5": round(float(q[0]), 3),
        "median": round(float(q[1]), 3), "mean": round(float(d.mean()), 3),
        "p95": round(float(q[2]), 3), "max": round(float(d.max()), 3),
    }


def vocabulary_report(
    vocabs: dict[str, Vocabulary], texts: dict[str, dict[str, list[str]]]
) -> dict[str, object]:
    """Vocabulary sizes, their overlap, and how many domain-B test tokens A's train lacks."""
    wa, wb = vocabs["a"].all_words(), vocabs["b"].all_words()
    report: dict[str, object] = {
        "size_a": len(wa), "size_b": len(wb), "shared": len(wa & wb),
        "shared_fraction": round(len(wa & wb) / len(wa), 4), "union": len(wa | wb),
    }
    train_a = {w for t in texts.get("a", {}).get("train", []) for w in t.split()}
    test_b = [w for t in texts.get("b", {}).get("test", []) for w in t.split()]
    if train_a and test_b:
        oov = sum(w not in train_a for w in test_b) / len(test_b)
        report["b_test_token_oov_vs_a_train"] = round(oov, 4)
    return report


# ----------------------------------------------------------------------------- command line
def get_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out-dir", type=Path, default=Path("data"), help="wav files go here")
    p.add_argument("--manifest-dir", type=Path, default=None,
                   help="lhotse manifests go here (default: OUT_DIR/manifests)")
    p.add_argument("--num-utts-a", type=positive_int, default=3000,
                   help="domain-A train utterances")
    p.add_argument("--num-utts-b", type=positive_int, default=1000,
                   help="domain-B train utterances")
    p.add_argument("--num-dev", type=positive_int, default=200, help="dev utterances per domain")
    p.add_argument("--num-test", type=positive_int, default=200, help="test utterances per domain")
    p.add_argument("--seed", type=int, default=42, help="every random choice follows it")
    p.add_argument("--domains", default="a,b", help="comma list of domains to make: a, b")
    p.add_argument("--shared-fraction", type=nonnegative_float, default=0.95,
                   help="fraction of each domain's vocabulary that the other domain shares")
    p.add_argument("--voices-a", default=",".join(DEFAULT_VOICES["a"]),
                   help="comma list of eSpeak voices (language+variant) for domain A")
    p.add_argument("--voices-b", default=",".join(DEFAULT_VOICES["b"]),
                   help="comma list of eSpeak voices (language+variant) for domain B")
    p.add_argument("--rate-a", type=positive_int, nargs=2, default=[150, 190], metavar=("LO", "HI"),
                   help="domain-A speaking rate range, words per minute")
    p.add_argument("--rate-b", type=positive_int, nargs=2, default=[185, 215], metavar=("LO", "HI"),
                   help="domain-B speaking rate range, words per minute")
    p.add_argument("--snr-a", type=finite_float, nargs=2, default=[35.0, 45.0],
                   metavar=("LO", "HI"),
                   help="domain-A SNR range in dB (a faint noise floor)")
    p.add_argument("--snr-b", type=finite_float, nargs=2, default=[18.0, 24.0],
                   metavar=("LO", "HI"),
                   help="domain-B SNR range in dB")
    p.add_argument("--reverb-prob-b", type=nonnegative_float, default=0.4,
                   help="probability that a domain-B utterance is reverberated")
    p.add_argument("--rt60-b", type=nonnegative_float, nargs=2, default=[0.15, 0.3],
                   metavar=("LO", "HI"),
                   help="domain-B reverberation time range, seconds")
    p.add_argument("--drr-b", type=finite_float, nargs=2, default=[8.0, 14.0], metavar=("LO", "HI"),
                   help="domain-B direct-to-reverberant ratio range in dB (a near microphone)")
    p.add_argument("--pitch-a", type=int, nargs=2, default=[30, 70], metavar=("LO", "HI"),
                   help="domain-A eSpeak pitch range (0..100)")
    p.add_argument("--pitch-b", type=int, nargs=2, default=[25, 75], metavar=("LO", "HI"),
                   help="domain-B eSpeak pitch range (0..100)")
    p.add_argument("--num-jobs", type=positive_int, default=1, help="worker processes")
    return p


def domain_styles(args: argparse.Namespace) -> dict[str, DomainStyle]:
    """The two domains' acoustic styles from the command line."""
    return {
        "a": DomainStyle(
            voices=tuple(v for v in args.voices_a.split(",") if v), rate=tuple(args.rate_a),
            pitch=tuple(args.pitch_a), pitch_range=(40, 60), snr_db=tuple(args.snr_a),
            reverb_prob=0.0,
            rt60=(0.0, 0.0),
        ),
        "b": DomainStyle(
            voices=tuple(v for v in args.voices_b.split(",") if v), rate=tuple(args.rate_b),
            pitch=tuple(args.pitch_b), pitch_range=(30, 90), snr_db=tuple(args.snr_b),
            reverb_prob=args.reverb_prob_b, rt60=tuple(args.rt60_b), drr_db=tuple(args.drr_b),
        ),
    }


def plan(
    args: argparse.Namespace, vocabs: dict[str, Vocabulary], styles: dict[str, DomainStyle]
) -> tuple[dict[str, dict[str, list[str]]], dict[tuple[str, str], list[Utterance]]]:
    """Draw every sentence and every utterance's voice and channel from ``args.seed``."""
    wav_root = args.out_dir / "wav"
    texts, utts = {}, {}
    for d_idx, dom in enumerate(DOMAINS):
        if dom not in args.domains.split(","):
            continue
        n_train = args.num_utts_a if dom == "a" else args.num_utts_b
        counts = {"test": args.num_test, "dev": args.num_dev, "train": n_train}
        text_rng = np.random.default_rng([args.seed, d_idx, 0])
        texts[dom] = generate_texts(text_rng, vocabs[dom], counts)
        prefix = f"synth_{dom}"
        for p_idx, part in enumerate(PARTS):
            rng = np.random.default_rng([args.seed, d_idx, 1, p_idx])
            utts[(dom, part)] = draw_utterances(
                rng, styles[dom], texts[dom][part], prefix, part, wav_root / prefix / part
            )
    return texts, utts


def run_blocks(
    utts: dict[tuple[str, str], list[Utterance]], styles: dict[str, DomainStyle], num_jobs: int
) -> dict[tuple[str, str], list[int]]:
    """Synthesise every part in blocks of ``BLOCK_SIZE``; return sample counts per part."""
    jobs = [
        (key, start, utts[key][start : start + BLOCK_SIZE])
        for key in utts
        for start in range(0, len(utts[key]), BLOCK_SIZE)
    ]
    counts: dict[tuple[str, str], list[int]] = {key: [0] * len(utts[key]) for key in utts}
    if num_jobs <= 1:
        results = [synthesize_block(block, styles[key[0]]) for key, _, block in jobs]
    else:
        # spawn: a forked child would inherit the parent's copy of the library and its state
        with ProcessPoolExecutor(num_jobs, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(synthesize_block, b, styles[k[0]]) for k, _, b in jobs]
            results = [f.result() for f in futures]
    for (key, start, _), block_counts in zip(jobs, results, strict=True):
        counts[key][start : start + len(block_counts)] = block_counts
    return counts


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    """Run the command line; return the summary that is also written as JSON."""
    parser = get_parser()
    args = parser.parse_args(argv)
    unknown = set(args.domains.split(",")) - set(DOMAINS)
    if unknown:
        parser.error(f"--domains: unknown {sorted(unknown)}; choose from {DOMAINS}")
    manifest_dir = args.manifest_dir or args.out_dir / "manifests"
    start = time.perf_counter()
    vocabs = build_vocabularies(args.shared_fraction)
    styles = domain_styles(args)
    texts, utts = plan(args, vocabs, styles)
    counts = run_blocks(utts, styles, args.num_jobs)
    for (dom, part), part_utts in utts.items():
        write_manifests(part_utts, counts[(dom, part)], manifest_dir, f"synth_{dom}", part)
    for dom in texts:
        words = sorted(vocabs[dom].all_words())
        (manifest_dir / f"synth_{dom}_vocab.txt").write_text("\n".join(words) + "\n")
    summary = {
        "seconds": round(time.perf_counter() - start, 2),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "styles": {dom: asdict(style) for dom, style in styles.items()},
        "vocabulary": vocabulary_report(vocabs, texts),
        "durations": {
            f"synth_{dom}_{part}": duration_stats([n / TARGET_SAMPLE_RATE for n in c])
            for (dom, part), c in counts.items()
        },
    }
    (manifest_dir / "synth_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    logging.info("synthesised %d utterances in %.1f s; manifests in %s",
                 sum(len(c) for c in counts.values()), summary["seconds"], manifest_dir)
    return summary


if __name__ == "__main__":
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    try:
        run_guarded(main)
    except EspeakError as e:  # no eSpeak NG library or data, or a voice it does not have
        exit_with_error(e)
