"""The demo's eSpeak NG corpus (egs/synth/ASR/local): driver, resampler, domains, CLI."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip(
    "espeakng_loader", reason="espeakng-loader (pip) is not installed: no eSpeak NG to drive"
)

LOCAL = Path(__file__).resolve().parents[1] / "egs" / "synth" / "ASR" / "local"
sys.path.insert(0, str(LOCAL))

import espeak  # noqa: E402
import synthesize as syn  # noqa: E402

SMALL = ["--num-utts-a", "6", "--num-utts-b", "6", "--num-dev", "2", "--num-test", "2"]


def _run(out_dir: Path, *extra: str) -> dict:
    return syn.main(["--out-dir", str(out_dir), *SMALL, *extra])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 20-utterance corpus made in-process with seed 7."""
    out = tmp_path_factory.mktemp("synth") / "data"
    _run(out, "--seed", "7")
    return out


def _wavs(out: Path) -> dict[str, np.ndarray]:
    return {p.name: sf.read(p, dtype="int16")[0] for p in sorted(out.rglob("*.wav"))}


def _texts(out: Path, dom: str, part: str) -> list[str]:
    from lhotse import load_manifest

    sups = load_manifest(out / "manifests" / f"synth_{dom}_supervisions_{part}.jsonl.gz")
    return [s.text for s in sups]


# ----------------------------------------------------------------------------- driver
def test_espeak_output_depends_only_on_the_call() -> None:
    tts = espeak.Espeak.get()
    assert tts.native_sample_rate == 22050
    first = tts.synthesize_native("the old king slept", voice="en-us+f2", rate=180, seed=3)
    tts.synthesize_native("something else entirely", voice="en-gb-scotland+m3", rate=230)
    again = tts.synthesize_native("the old king slept", voice="en-us+f2", rate=180, seed=3)
    assert first.dtype == np.int16 and len(first) > 0.5 * 22050
    np.testing.assert_array_equal(first, again)
    faster = tts.synthesize_native("the old king slept", voice="en-us+f2", rate=300, seed=3)
    assert len(faster) < 0.8 * len(first)


def test_espeak_session_replays_identically() -> None:
    calls = [("hello there", "en-us"), ("we tested the server", "en-029+m7")] * 3

    def run() -> list[np.ndarray]:
        with espeak.Espeak.get().session() as s:
            return [s.synthesize(t, voice=v, seed=i) for i, (t, v) in enumerate(calls)]

    for a, b in zip(run(), run(), strict=True):
        assert a.dtype == np.float32
        np.testing.assert_array_equal(a, b)


def test_espeak_errors_are_clear(monkeypatch: pytest.MonkeyPatch) -> None:
    import espeakng_loader

    with pytest.raises(espeak.EspeakError, match="unknown eSpeak voice"):
        espeak.Espeak.get().synthesize("hello", voice="no-such-voice")
    monkeypatch.setattr(espeakng_loader, "get_library_path", lambda: "/nonexistent/lib.so")
    with pytest.raises(espeak.EspeakError, match="library is missing"):
        espeak.Espeak()


def test_resample_keeps_the_band_and_removes_aliases() -> None:
    t = np.arange(22050) / 22050
    for freq, expected_rms in ((440.0, 0.7071), (5000.0, 0.7071), (9000.0, 0.0)):
        y = espeak.resample(np.sin(2 * np.pi * freq * t), 22050, 16000)
        assert len(y) == 16000 and y.dtype == np.float32
        assert np.sqrt(np.mean(y[500:-500] ** 2)) == pytest.approx(expected_rms, abs=1e-3)
    y = espeak.resample(np.sin(2 * np.pi * 440.0 * t), 22050, 16000)
    ref = np.sin(2 * np.pi * 440.0 * np.arange(16000) / 16000)
    assert np.max(np.abs(y[500:-500] - ref[500:-500])) < 1e-4  # aligned, not just similar
    assert len(espeak.resample(np.zeros(1001), 22050, 16000)) == -(-1001 * 320 // 441)


# ----------------------------------------------------------------------------- text
@pytest.mark.parametrize("fraction", [0.4, 0.65, 0.8])
def test_vocabularies_overlap_by_the_configured_fraction(fraction: float) -> None:
    vocabs = syn.build_vocabularies(fraction)
    wa, wb = vocabs["a"].all_words(), vocabs["b"].all_words()
    assert len(wa) == len(wb) == syn.vocabulary_size()
    assert len(wa & wb) / len(wa) == pytest.approx(fraction, abs=0.5 / len(wa))
    assert 150 <= len(wa | wb) <= 400  # a few hundred words in all


def test_shared_fraction_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="shared-fraction"):
        syn.build_vocabularies(0.05)


def test_word_pools_are_distinct_words_with_distinct_sounds() -> None:
    pools = [syn.FUNCTION_WORDS, syn.COMMON_POOL, *syn.DOMAIN_POOL.values()]
    words = [w for pool in pools for ws in pool.values() for w in ws]
    words += [w for ws in syn.COPULA.values() for w in ws]
    assert len(words) == len(set(words))
    assert all(w.isalpha() and w.isupper() for w in words)
    with espeak.Espeak.get().session() as s:
        sounds = {s.phonemes(w.lower()).replace("'", "").replace(",", "") for w in words}
    assert len(sounds) == len(words), "two words sound alike: WER would be ambiguous"


def test_sentences_are_varied_short_and_never_repeat_across_parts() -> None:
    vocab = syn.build_vocabularies(0.65)["b"]
    rng = np.random.default_rng(0)
    texts = syn.generate_texts(rng, vocab, {"test": 300, "dev": 300, "train": 3000})
    everything = [t for part in texts.values() for t in part]
    assert len(set(everything)) == len(everything) == 3600
    lengths = [len(t.split()) for t in everything]
    assert min(lengths) >= 2 and max(lengths) <= 6
    used = {w for t in everything for w in t.split()}
    assert used <= vocab.all_words() and len(used) > 0.95 * len(vocab.all_words())


# ----------------------------------------------------------------------------- acoustics
def test_channel_adds_noise_at_the_configured_snr() -> None:
    clean = espeak.Espeak.get().synthesize("the weary sailor wept", voice="en-us")
    for dom, snr in (("a", 40.0), ("b", 12.0)):
        style = dataclasses.replace(syn.domain_styles(syn.get_parser().parse_args([]))[dom],
                                    pad=(0.0, 0.0))
        utt = syn.Utterance("u", "T", "u.wav", "en-us", 175, 50, 50, 1, 5, snr, 0.0)
        out = syn.apply_channel(clean, utt, style, 16000).astype(np.float64)
        gain = np.dot(out, clean) / np.dot(clean, clean)
        noise = out - gain * clean
        measured = 10 * np.log10(syn.active_power(gain * clean) / np.mean(noise**2))
        assert measured == pytest.approx(snr, abs=0.5)


def test_reverberation_spreads_energy_in_time() -> None:
    rir = syn.room_impulse_response(np.random.default_rng(0), 0.4, 3.0, 16000)
    assert rir[0] == 1.0
    energy = np.cumsum(rir[::-1] ** 2)[::-1]  # Schroeder backward integral
    decay_db = 10 * np.log10(energy / energy[0])
    t20 = np.argmax(decay_db < -25) - np.argmax(decay_db < -5)  # T20, after the direct path
    assert 3 * t20 / 16000 == pytest.approx(0.4, rel=0.2)


def test_domain_b_is_noisier_than_domain_a(corpus: Path) -> None:
    snr = {
        dom: np.mean([syn.estimate_snr(sf.read(p)[0]) for p in (corpus / "wav").rglob(
            f"synth_{dom}-*.wav")])
        for dom in "ab"
    }
    assert snr["a"] > snr["b"] + 15, snr


# ----------------------------------------------------------------------------- CLI
def test_cli_writes_every_file(corpus: Path) -> None:
    man = corpus / "manifests"
    for dom in "ab":
        for part in ("train", "dev", "test"):
            for kind in ("recordings", "supervisions"):
                assert (man / f"synth_{dom}_{kind}_{part}.jsonl.gz").is_file()
        assert len((man / f"synth_{dom}_vocab.txt").read_text().split()) > 100
    assert (man / "synth_summary.json").is_file()
    assert len(list((corpus / "wav").rglob("*.wav"))) == 20


def test_manifests_match_the_wav_files(corpus: Path) -> None:
    from lhotse import load_manifest
    from lhotse.qa import validate_recordings_and_supervisions

    for dom in "ab":
        for part in ("train", "dev", "test"):
            recs = load_manifest(corpus / "manifests" / f"synth_{dom}_recordings_{part}.jsonl.gz")
            sups = load_manifest(
                corpus / "manifests" / f"synth_{dom}_supervisions_{part}.jsonl.gz"
            )
            validate_recordings_and_supervisions(recs, sups)
            for sup in sups:
                rec = recs[sup.recording_id]
                info = sf.info(rec.sources[0].source)
                assert info.samplerate == rec.sampling_rate == 16000
                assert info.frames == rec.num_samples
                assert sup.duration == pytest.approx(info.frames / 16000)
                assert 0.6 <= sup.duration <= 4.0
                assert sup.text == sup.text.upper() and sup.text.replace(" ", "").isalpha()


def test_test_sentences_differ_from_training_sentences(corpus: Path) -> None:
    for dom in "ab":
        train = set(_texts(corpus, dom, "train"))
        assert not train & set(_texts(corpus, dom, "test"))
        assert not train & set(_texts(corpus, dom, "dev"))


def test_same_seed_same_corpus_any_process_any_jobs(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "data"
    cmd = [sys.executable, str(LOCAL / "synthesize.py"), "--out-dir", str(out), *SMALL]
    subprocess.run([*cmd, "--seed", "7", "--num-jobs", "2"], check=True, capture_output=True)
    ref, new = _wavs(corpus), _wavs(out)
    assert ref.keys() == new.keys()
    for name in ref:
        np.testing.assert_array_equal(ref[name], new[name], err_msg=name)
    assert _texts(out, "b", "test") == _texts(corpus, "b", "test")


def test_different_seed_different_corpus(corpus: Path, tmp_path: Path) -> None:
    _run(tmp_path / "data", "--seed", "8")
    assert _texts(tmp_path / "data", "a", "train") != _texts(corpus, "a", "train")
    ref, new = _wavs(corpus), _wavs(tmp_path / "data")
    assert all(not np.array_equal(ref[n], new[n]) for n in ref if len(ref[n]) == len(new[n]))
