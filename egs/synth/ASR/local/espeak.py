"""A small ctypes driver for eSpeak NG, as shipped by the ``espeakng-loader`` wheel.

The wheel carries ``libespeak-ng.so`` and its ``espeak-ng-data`` directory; this module loads
that library, initialises it in synchronous mode (audio is handed to a Python callback,
nothing is played) and turns text into a waveform::

    from espeak import Espeak
    tts = Espeak.get()
    with tts.session() as s:
        wav = s.synthesize("the old king slept", voice="en-us+f3", rate=175, pitch=50)
    # float32 numpy array at 16 kHz (s.native_sample_rate is eSpeak's own, 22050 Hz)

Determinism: every call sets the voice and all prosody parameters and seeds eSpeak's random
generator (used by breathy variants); eSpeak's remaining hidden state is reset by loading a
fresh copy of the library for each session, so a session's output depends only on its own
sequence of calls, in any process. Sessions are serialised by a lock.

Also here: :func:`resample`, a band-limited FFT resampler in numpy (no torchaudio).
"""

from __future__ import annotations

import _ctypes
import contextlib
import ctypes
import math
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Espeak", "EspeakError", "resample", "TARGET_SAMPLE_RATE"]

TARGET_SAMPLE_RATE = 16000

# Facts of eSpeak NG's C API (speak_lib.h / espeak_ng.h).
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EE_OK = 0
_PARAM_RATE = 1
_PARAM_VOLUME = 2
_PARAM_PITCH = 3
_PARAM_RANGE = 4
_PARAM_WORDGAP = 7

# int callback(short *wav, int numsamples, espeak_EVENT *events); events are not used here.
_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class EspeakError(RuntimeError):
    """eSpeak NG could not be loaded, initialised or asked to speak."""


def _library_paths() -> tuple[str, str]:
    """Return ``(library file, data directory)`` from the ``espeakng_loader`` package."""
    try:
        import espeakng_loader
    except ImportError as exc:
        raise EspeakError(
            "eSpeak NG is not available: `pip install espeakng-loader` (it ships "
            "libespeak-ng and its voices)"
        ) from exc
    lib_path = espeakng_loader.get_library_path()
    try:
        data_path = espeakng_loader.get_data_path()
    except RuntimeError as exc:
        raise EspeakError(f"espeakng-loader has no voice data: {exc}") from exc
    if not Path(lib_path).is_file():
        raise EspeakError(f"espeakng-loader's library is missing: {lib_path}")
    return lib_path, data_path


def _declare(lib: ctypes.CDLL) -> None:
    """Declare argument and result types of the functions this driver calls."""
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [
        ctypes.c_void_p,  # text
        ctypes.c_size_t,  # size
        ctypes.c_uint,  # position
        ctypes.c_int,  # position_type
        ctypes.c_uint,  # end_position
        ctypes.c_uint,  # flags
        ctypes.c_void_p,  # unique_identifier
        ctypes.c_void_p,  # user_data
    ]
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_TextToPhonemes.argtypes = [
        ctypes.POINTER(ctypes.c_char_p),
        ctypes.c_int,
        ctypes.c_int,
    ]
    lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
    if hasattr(lib, "espeak_ng_SetRandSeed"):
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_ng_SetRandSeed.restype = ctypes.c_int


class EspeakSession:
    """One freshly loaded and initialised copy of the library (from :meth:`Espeak.session`).

    eSpeak keeps synthesis state in C statics that survive ``espeak_Terminate`` (the pitch
    flutter position, the voice-roughness cycle counter, the gain control), so an utterance
    depends on the ones spoken before it in the same copy of the library. A session starts
    from the library's initial state, so a given sequence of calls in a session always gives
    the same samples.
    """

    def __init__(self, lib: ctypes.CDLL, sample_rate: int) -> None:
        self._lib = lib
        self.native_sample_rate = sample_rate
        self._chunks: list[np.ndarray] = []
        self._callback = _SynthCallback(self._on_audio)  # keep a reference: C holds it
        lib.espeak_SetSynthCallback(self._callback)

    def _on_audio(self, wav: Any, num_samples: int, events: Any) -> int:
        if wav and num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0  # 0: continue synthesis

    def _set_voice(self, voice: str, params: dict[int, int]) -> None:
        if self._lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
            raise EspeakError(f"unknown eSpeak voice {voice!r} (try e.g. 'en-us' or 'en-us+f3')")
        for name, value in params.items():
            if self._lib.espeak_SetParameter(name, int(value), 0) != _EE_OK:
                raise EspeakError(f"espeak_SetParameter({name}, {value}) failed")

    def synthesize_native(
        self,
        text: str,
        voice: str = "en-us",
        rate: int = 175,
        pitch: int = 50,
        pitch_range: int = 50,
        word_gap: int = 0,
        seed: int = 0,
    ) -> np.ndarray:
        """Speak ``text``; return int16 samples at :attr:`native_sample_rate`.

        ``voice`` is an eSpeak voice name, optionally with a variant (``"en-gb-scotland+m3"``);
        ``rate`` is in words per minute (80..450), ``pitch`` and ``pitch_range`` are 0..100,
        ``word_gap`` adds pauses between words in units of 10 ms; ``seed`` seeds eSpeak's
        noise generator (used by breathy variants).
        """
        params = {
            _PARAM_RATE: rate,
            _PARAM_VOLUME: 100,
            _PARAM_PITCH: pitch,
            _PARAM_RANGE: pitch_range,
            _PARAM_WORDGAP: word_gap,
        }
        self._set_voice(voice, params)
        if hasattr(self._lib, "espeak_ng_SetRandSeed"):
            self._lib.espeak_ng_SetRandSeed(int(seed) & 0x7FFFFFFF)
        encoded = text.encode("utf-8") + b"\0"
        self._chunks = []
        status = self._lib.espeak_Synth(
            encoded, len(encoded), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
        )
        chunks, self._chunks = self._chunks, []
        if status != _EE_OK:
            raise EspeakError(f"espeak_Synth failed with status {status} for {text!r}")
        if not chunks:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(chunks).astype(np.int16, copy=False)

    def synthesize(
        self, text: str, sample_rate: int = TARGET_SAMPLE_RATE, **kwargs: int | str
    ) -> np.ndarray:
        """Speak ``text``; return float32 samples in [-1, 1) at ``sample_rate`` (16 kHz).

        Keyword arguments are those of :meth:`synthesize_native`.
        """
        wav = self.synthesize_native(text, **kwargs).astype(np.float32) / 32768.0
        return resample(wav, self.native_sample_rate, sample_rate)

    def phonemes(self, text: str, voice: str = "en-us") -> str:
        """Return eSpeak's phoneme string (its ASCII notation) for ``text``."""
        self._set_voice(voice, {})
        buf = ctypes.create_string_buffer(text.encode("utf-8"))
        ptr = ctypes.c_char_p(ctypes.addressof(buf))
        parts = []
        while ptr.value:  # each call advances ptr by one clause; NULL at the end
            out = self._lib.espeak_TextToPhonemes(ctypes.byref(ptr), _CHARS_UTF8, 0)
            parts.append((out or b"").decode("utf-8", "replace").strip())
        return " ".join(p for p in parts if p)


class Espeak:
    """Entry point: the process-wide handle on eSpeak NG (use :meth:`get`).

    ``with tts.session() as s: s.synthesize(...)`` speaks many utterances in one copy of the
    library (the first voice load costs ~10 ms, later calls ~1-2 ms); the output of the
    n-th call depends on the calls before it in that session, never on anything outside it.
    :meth:`synthesize` and friends are one-call sessions: fully independent, slower.
    Sessions are serialised by a lock; a session cannot be opened inside another one.
    """

    _instance: Espeak | None = None
    _instance_lock = threading.Lock()

    def __init__(self) -> None:
        self._lib_path, self.data_path = _library_paths()
        self._lock = threading.Lock()
        self._owner: int | None = None
        with self.session() as probe:
            self.native_sample_rate: int = probe.native_sample_rate

    @classmethod
    def get(cls) -> Espeak:
        """Return the process-wide instance, checking on first use that eSpeak NG loads."""
        with cls._instance_lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    @contextlib.contextmanager
    def session(self) -> Iterator[EspeakSession]:
        """Load and initialise a fresh copy of the library; unload it on exit."""
        if self._owner == threading.get_ident():
            raise EspeakError("an eSpeak session is already open in this thread")
        with self._lock:
            self._owner = threading.get_ident()
            try:
                lib = ctypes.CDLL(self._lib_path, mode=ctypes.RTLD_LOCAL)
            except OSError as exc:
                self._owner = None
                raise EspeakError(f"cannot load eSpeak NG from {self._lib_path}: {exc}") from exc
            try:
                _declare(lib)
                rate = lib.espeak_Initialize(
                    _AUDIO_OUTPUT_SYNCHRONOUS, 0, self.data_path.encode(), _INITIALIZE_DONT_EXIT
                )
                if rate <= 0:
                    raise EspeakError(f"espeak_Initialize failed ({rate}), data {self.data_path}")
                yield EspeakSession(lib, rate)
                lib.espeak_Terminate()
            finally:
                self._owner = None
                _ctypes.dlclose(lib._handle)

    def synthesize_native(self, text: str, **kwargs: int | str) -> np.ndarray:
        """One-call session of :meth:`EspeakSession.synthesize_native`."""
        with self.session() as s:
            return s.synthesize_native(text, **kwargs)

    def synthesize(self, text: str, **kwargs: int | str) -> np.ndarray:
        """One-call session of :meth:`EspeakSession.synthesize` (16 kHz float32)."""
        with self.session() as s:
            return s.synthesize(text, **kwargs)

    def phonemes(self, text: str, voice: str = "en-us") -> str:
        """One-call session of :meth:`EspeakSession.phonemes`."""
        with self.session() as s:
            return s.phonemes(text, voice)


def _fast_length(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n: an FFT size without large prime factors."""
    best = 1 << max(n - 1, 0).bit_length()
    p35 = 1
    while p35 < best:  # every 3^b 5^c below the power of two, times the needed 2^a
        for m in (p35 * 5**c for c in range(12)):
            if m >= best:
                break
            while m < n:
                m *= 2
            best = min(best, m)
        p35 *= 3
    return best


def resample(wav: np.ndarray, orig_sr: int, new_sr: int, rolloff: float = 0.92) -> np.ndarray:
    """Band-limited resampling of a 1-D float signal from ``orig_sr`` to ``new_sr``.

    The signal is zero-padded, transformed with one real FFT, its spectrum cut at the lower
    of the two Nyquist frequencies with a raised-cosine roll-off starting at ``rolloff`` of
    it (a windowed-sinc low-pass, applied in the frequency domain), and transformed back on
    the new sampling grid. The padding is a multiple of ``orig_sr / gcd`` so both grids stay
    aligned. The output has ``ceil(len(wav) * new_sr / orig_sr)`` samples.
    """
    wav = np.asarray(wav, dtype=np.float32)
    if orig_sr == new_sr or wav.size == 0:
        return wav.copy()
    g = math.gcd(orig_sr, new_sr)
    up, down = new_sr // g, orig_sr // g
    pad_blocks = -(-512 // down)  # >= 512 input samples of zeros on each side
    blocks = _fast_length(-(-wav.size // down) + 2 * pad_blocks)
    n_in, n_out = blocks * down, blocks * up
    padded = np.zeros(n_in, dtype=np.float64)
    padded[pad_blocks * down : pad_blocks * down + wav.size] = wav
    spec = np.fft.rfft(padded)
    keep = min(spec.size, n_out // 2 + 1)
    out_spec = np.zeros(n_out // 2 + 1, dtype=np.complex128)
    freqs = np.arange(keep) * (orig_sr / n_in)
    nyquist = min(orig_sr, new_sr) / 2
    ramp = np.clip((freqs - rolloff * nyquist) / ((1 - rolloff) * nyquist), 0.0, 1.0)
    out_spec[:keep] = spec[:keep] * (0.5 + 0.5 * np.cos(np.pi * ramp))
    out = np.fft.irfft(out_spec, n_out) * (n_out / n_in)
    start = pad_blocks * up
    return out[start : start + -(-wav.size * up // down)].astype(np.float32)
