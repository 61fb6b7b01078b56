"""``egs/librispeech/ASR/prepare.sh`` end to end on tiny corpora laid out as the real ones.

The test writes, with a fixed seed:

- LibriSpeech: ``LibriSpeech/<part>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac`` and
  ``<speaker>-<chapter>.trans.txt`` for train-clean-100 (16 utterances), dev-clean and
  test-clean (4 each): 1-2 s of tones in noise, 16 kHz;
- MUSAN: ``musan/{music,speech,noise}/<source>/*.wav`` (6, 12 and 7 s) and the music
  ``ANNOTATIONS`` file lhotse's preparer reads;
- GigaSpeech: ``GigaSpeech/GigaSpeech.json`` in the release's format (audios with ``aid``,
  ``path``, ``sample_rate``, ``channels``, ``duration``, ``subsets`` and segments with
  ``sid``, ``begin_time``, ``end_time``, ``speaker``, ``text_tn``, ``subsets``) and its
  audio, covering subset selection, punctuation tags and a ``<MUSIC>`` garbage segment.
  The audio is WAV, not the release's Opus (reading Opus needs ffmpeg), and nothing of
  the password-protected download is exercised.

prepare.sh runs every stage (0-8) once as a subprocess, without network (stage 0 must
find everything present and download nothing), with --num-jobs 1; the tests then check
the manifests (counts, ids, texts, durations, speed-perturbed copies), the features
(frames = duration * 100, 80 bins), train-all-shuf, MUSAN windows, the BPE model, the
validation stage on broken manifests, resuming (a second run rewrites nothing), --num-jobs
2 against one job, and one-line errors for bad input. Downloading itself is only tested
with lhotse's downloaders replaced by a failing stand-in (no network here).

The GigaSpeech manifests come from lhotse's ``prepare_gigaspeech`` when ``speechcolab`` is
installed, otherwise from the reader in ``local/gigaspeech.py``; one test runs that reader
and compares its manifests with those of the prepare.sh run (the same code path when
speechcolab is missing, lhotse's when it is installed).

The corpus modules (``local/librispeech.py``, ``musan.py``, ``gigaspeech.py``) are imported
from the recipe's ``local`` folder, as its scripts import them; the generic pieces they use
(``icefall.data.preparation``, ``manifests``, ``fbank``) are also tested on their own.
"""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import ROOT
from lhotse import CutSet, Features, MonoCut, load_manifest

from icefall.cli.data import split_names
from icefall.data import load_bpe_model, read_tokens
from icefall.data.fbank import compute_fbank_for_parts
from icefall.data.manifests import combine_shuffled
from icefall.data.preparation import PrepareError, prepare_atomically, try_download
from icefall.data.validation import ManifestValidationError, validate_manifest

PREPARE = ROOT / "egs" / "librispeech" / "ASR" / "prepare.sh"
sys.path.insert(0, str(PREPARE.parent / "local"))

import gigaspeech  # noqa: E402
import librispeech  # noqa: E402
import musan  # noqa: E402

SR = 16000
WORDS = ["THE", "RIVER", "STONE", "LIGHT", "HOUSE", "GARDEN", "MORNING", "SILVER",
         "DON'T", "WINTER", "CANDLE", "HORSE"]
# part -> (speaker, chapter) pairs, 4 utterances each
LAYOUT = {
    "train-clean-100": [("103", "1240"), ("103", "1241"), ("1034", "121119"), ("1034", "121120")],
    "dev-clean": [("1272", "128104")],
    "test-clean": [("1089", "134686")],
}
UTTS_PER_CHAPTER = 4
VOCAB_SIZE = 30
NUM_JOBS = 1


def _tone(rng: np.random.Generator, num_samples: int) -> np.ndarray:
    """A few random tones in white noise, peak below 0.5."""
    t = np.arange(num_samples) / SR
    x = sum(rng.uniform(0.05, 0.15) * np.sin(2 * np.pi * rng.uniform(100, 3000) * t)
            for _ in range(3))
    return (x + 0.02 * rng.standard_normal(num_samples)).astype(np.float32)


def make_librispeech(root: Path, rng: np.random.Generator) -> dict[str, dict[str, tuple]]:
    """Writes the LibriSpeech layout; returns {part: {utt_id: (text, duration)}}."""
    expected: dict[str, dict[str, tuple]] = {}
    for part, chapters in LAYOUT.items():
        expected[part] = {}
        for speaker, chapter in chapters:
            folder = root / "LibriSpeech" / part / speaker / chapter
            folder.mkdir(parents=True)
            lines = []
            for i in range(UTTS_PER_CHAPTER):
                utt = f"{speaker}-{chapter}-{i:04d}"
                text = " ".join(rng.choice(WORDS, size=int(rng.integers(3, 7))))
                num_samples = int(rng.integers(SR, 2 * SR))
                sf.write(folder / f"{utt}.flac", _tone(rng, num_samples), SR)
                lines.append(f"{utt} {text}\n")
                expected[part][utt] = (text, num_samples / SR)
            (folder / f"{speaker}-{chapter}.trans.txt").write_text("".join(lines))
    return expected


def make_musan(root: Path, rng: np.random.Generator) -> None:
    """music 6 s, speech 12 s, noise 7 s: 10 s windows longer than 5 s give 3 cuts."""
    for part, source, seconds in (("music", "fma", 6), ("speech", "librivox", 12),
                                  ("noise", "free-sound", 7)):
        folder = root / "musan" / part / source
        folder.mkdir(parents=True)
        name = f"{part}-{source}-0000"
        sf.write(folder / f"{name}.wav", _tone(rng, seconds * SR), SR)
        if part == "music":
            (folder / "ANNOTATIONS").write_text(f"{name} classical N composer\n")


def _segment(sid: str, begin: float, end: float, text: str, subsets: list[str]) -> dict:
    return {"sid": sid, "speaker": "N/A", "begin_time": begin, "end_time": end,
            "text_tn": text, "subsets": subsets}


S_TAGS = ["{XL}", "{L}", "{M}", "{S}"]
# aid -> (source, seconds, subsets, segments)
GIGA_AUDIOS = {
    "POD0000000001": ("podcast", 8.0, S_TAGS, [
        _segment("POD0000000001_S0000000", 0.5, 2.0, "HELLO <COMMA> WORLD <PERIOD>", S_TAGS),
        _segment("POD0000000001_S0000001", 2.5, 4.0, "<MUSIC>", S_TAGS),
        _segment("POD0000000001_S0000002", 4.5, 6.25, "THAT IS <EXCLAMATIONPOINT> RIGHT",
                 S_TAGS),
        _segment("POD0000000001_S0000003", 6.5, 7.5, "ONLY IN XL", ["{XL}"])]),
    "POD0000000002": ("podcast", 5.0, ["{XL}"], [
        _segment("POD0000000002_S0000000", 0.0, 4.0, "NOT IN S", ["{XL}"])]),
    "YOU0000000001": ("youtube", 6.0, ["{DEV}"], [
        _segment("YOU0000000001_S0000000", 0.0, 2.0, "GOOD MORNING <PERIOD>", ["{DEV}"]),
        _segment("YOU0000000001_S0000001", 2.5, 5.0, "WHAT'S NEW <QUESTIONMARK>", ["{DEV}"])]),
    "AUD0000000001": ("audiobook", 4.0, ["{TEST}"], [
        _segment("AUD0000000001_S0000000", 1.0, 3.5, "ONCE UPON A TIME <COMMA>", ["{TEST}"])]),
}
# subset -> {cut (= segment) id: (normalised text, duration)}
GIGA_EXPECTED = {
    "S": {"POD0000000001_S0000000": ("HELLO WORLD", 1.5),
          "POD0000000001_S0000002": ("THAT IS RIGHT", 1.75)},
    "DEV": {"YOU0000000001_S0000000": ("GOOD MORNING", 2.0),
            "YOU0000000001_S0000001": ("WHAT'S NEW", 2.5)},
    "TEST": {"AUD0000000001_S0000000": ("ONCE UPON A TIME", 2.5)},
}


def make_gigaspeech(root: Path, rng: np.random.Generator) -> None:
    """GigaSpeech/GigaSpeech.json and its audio (WAV) as the release lays them out."""
    corpus = root / "GigaSpeech"
    audios = []
    for aid, (source, seconds, subsets, segments) in GIGA_AUDIOS.items():
        path = f"audio/{source}/P0000/{aid}.wav"
        (corpus / path).parent.mkdir(parents=True, exist_ok=True)
        sf.write(corpus / path, _tone(rng, int(seconds * SR)), SR)
        audios.append({"title": aid, "aid": aid, "path": path, "source": source,
                       "channels": 1, "sample_rate": SR, "duration": seconds,
                       "format": "wav", "speaker": "N/A", "subsets": subsets,
                       "segments": segments})
    metadata = {"dataset": "GigaSpeech", "language": "EN", "version": "test", "audios": audios}
    (corpus / "GigaSpeech.json").write_text(json.dumps(metadata, indent=1))


def run_prepare(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable)
    return subprocess.run(["bash", str(PREPARE), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict:
    """A tiny corpus and the output of ``prepare.sh`` (all stages) run on it."""
    rng = np.random.default_rng(0)
    work = tmp_path_factory.mktemp("prepare")
    dl_dir = work / "download"
    expected = make_librispeech(dl_dir, rng)
    make_musan(dl_dir, rng)
    make_gigaspeech(dl_dir, rng)
    args = ("--dl-dir", str(dl_dir), "--num-jobs", str(NUM_JOBS),
            "--vocab-sizes", str(VOCAB_SIZE), "--librispeech-parts", " ".join(LAYOUT))
    proc = run_prepare(work, *args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"work": work, "dl_dir": dl_dir, "expected": expected, "args": args,
            "log": proc.stdout + proc.stderr, "fbank": work / "data" / "fbank"}


@pytest.fixture
def work(prepared, monkeypatch) -> dict:
    """``prepared``, with the working directory where prepare.sh ran: feature paths in the
    manifests are relative to it (``data/fbank/...``), as in icefall's recipes."""
    monkeypatch.chdir(prepared["work"])
    return prepared


def _cuts(prepared: dict, name: str):
    return load_manifest(prepared["fbank"] / name)


@pytest.mark.parametrize("part", list(LAYOUT))
def test_librispeech_manifests_and_features(work, part):
    expected = work["expected"][part]
    cuts = _cuts(work, f"librispeech_cuts_{part}.jsonl.gz")
    factors = (1.0, 0.9, 1.1) if part.startswith("train") else (1.0,)
    assert len(cuts) == len(expected) * len(factors)
    by_utt = {c.supervisions[0].id: c for c in cuts}  # cut ids are lhotse's <utt>-<index>
    for factor in factors:
        for utt, (text, duration) in expected.items():
            cut = by_utt[utt if factor == 1.0 else f"{utt}_sp{factor}"]
            assert cut.id.startswith(utt) and len(cut.supervisions) == 1
            assert cut.supervisions[0].text == text
            assert cut.supervisions[0].speaker == utt.split("-")[0]
            assert cut.duration == pytest.approx(duration / factor, abs=1e-3)
            feats = cut.load_features()
            assert feats.shape[1] == 80
            assert abs(feats.shape[0] - cut.duration * 100) <= 1
            assert np.isfinite(feats).all() and feats.std() > 0.1


def test_parallel_fbank_equals_serial(work, tmp_path):
    """--num-jobs 2 (spawned workers) stores the features that one job stores."""
    out = tmp_path / "fbank2"
    proc = subprocess.run(
        [sys.executable, str(PREPARE.parent / "local" / "compute_fbank_librispeech.py"),
         "--dataset", "dev-clean", "--output-dir", str(out), "--num-jobs", "2",
         "--progress-bar", "false"], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    serial = {c.id: c for c in _cuts(work, "librispeech_cuts_dev-clean.jsonl.gz")}
    parallel = load_manifest(out / "librispeech_cuts_dev-clean.jsonl.gz")
    assert sorted(parallel.ids) == sorted(serial)
    assert not (out / "librispeech_cuts_train-all-shuf.jsonl.gz").exists()  # no train part
    for cut in parallel:
        np.testing.assert_array_equal(cut.load_features(), serial[cut.id].load_features())


def test_train_all_shuf_holds_every_training_cut_shuffled(work):
    train = _cuts(work, "librispeech_cuts_train-clean-100.jsonl.gz")
    shuf = _cuts(work, "librispeech_cuts_train-all-shuf.jsonl.gz")
    assert sorted(shuf.ids) == sorted(train.ids)
    assert len(shuf) == 3 * 16
    assert list(shuf.ids) != list(train.ids)
    assert shuf[train[0].id].features.storage_path == train[0].features.storage_path


def test_musan_cuts(work):
    cuts = _cuts(work, "musan_cuts.jsonl.gz")
    durations = sorted(round(c.duration, 3) for c in cuts)
    assert durations == [6.0, 7.0, 10.0]  # the 2 s tail of the 12 s speech is dropped
    for cut in cuts:
        assert cut.load_features().shape == (cut.num_frames, 80)
    # noise has no supervision: valid as MUSAN, not as speech
    path = work["fbank"] / musan.CUTS
    assert musan.is_musan_manifest(path)
    assert not musan.is_musan_manifest(work["fbank"] / "librispeech_cuts_dev-clean.jsonl.gz")
    assert validate_manifest(path, require_supervisions=False) == 3
    with pytest.raises(ManifestValidationError, match="has 0 supervisions, expected 1"):
        validate_manifest(path)


def test_bpe_model_encodes_the_transcripts(prepared):
    lang = prepared["work"] / "data" / f"lang_bpe_{VOCAB_SIZE}"
    transcripts = (lang / "transcript_words.txt").read_text().splitlines()
    expected = prepared["expected"]["train-clean-100"]
    assert transcripts == [expected[u][0] for u in sorted(expected)]
    sp = load_bpe_model(lang / "bpe.model")
    assert sp.get_piece_size() == VOCAB_SIZE
    assert sp.piece_to_id("<blk>") == 0 and sp.piece_to_id("<sos/eos>") == 1
    tokens = read_tokens(lang / "tokens.txt")
    assert len(tokens) == VOCAB_SIZE and tokens["<blk>"] == 0
    for text in transcripts:
        ids = sp.encode(text)
        assert sp.unk_id() not in ids
        assert sp.decode(ids) == text


@pytest.mark.parametrize("subset", list(GIGA_EXPECTED))
def test_gigaspeech_cuts(work, subset):
    cuts = _cuts(work, f"gigaspeech_cuts_{subset}.jsonl.gz")
    got = {c.supervisions[0].id: (c.supervisions[0].text, round(c.duration, 3)) for c in cuts}
    assert got == GIGA_EXPECTED[subset]
    for cut in cuts:
        begin = next(s["begin_time"] for a in GIGA_AUDIOS.values() for s in a[3]
                     if s["sid"] == cut.supervisions[0].id)
        assert cut.start == pytest.approx(begin)
        assert cut.load_features().shape == (cut.num_frames, 80)
        assert abs(cut.num_frames - cut.duration * 100) <= 1


def test_gigaspeech_manifests_follow_the_subset_selection(prepared):
    manifests = prepared["work"] / "data" / "manifests"
    recordings = load_manifest(manifests / "gigaspeech_recordings_S.jsonl.gz")
    supervisions = load_manifest(manifests / "gigaspeech_supervisions_S.jsonl.gz")
    assert list(recordings.ids) == ["POD0000000001"]
    assert recordings[0].duration == 8.0 and recordings[0].sampling_rate == SR
    assert [s.id for s in supervisions] == [f"POD0000000001_S000000{i}" for i in range(3)]
    assert supervisions[0].text == "HELLO <COMMA> WORLD <PERIOD>"  # raw in the manifest


def test_gigaspeech_reader_without_speechcolab(prepared, tmp_path, monkeypatch):
    """Without speechcolab, GigaSpeech.json is read here; the manifests equal those of the
    prepare.sh run (lhotse's prepare_gigaspeech when speechcolab is installed)."""
    monkeypatch.setattr(gigaspeech, "speechcolab_available", lambda: False)
    corpus = prepared["dl_dir"] / "GigaSpeech"
    assert gigaspeech.prepare_manifests(corpus, tmp_path, list(GIGA_EXPECTED)) == \
        list(GIGA_EXPECTED)
    assert not list(tmp_path.glob(".*"))  # the temporary folder is gone
    manifests = prepared["work"] / "data" / "manifests"
    for subset in GIGA_EXPECTED:
        for kind in ("recordings", "supervisions", "cuts"):
            name = f"gigaspeech_{kind}_{subset}.jsonl.gz"
            assert [x.to_dict() for x in load_manifest(tmp_path / name)] == \
                [x.to_dict() for x in load_manifest(manifests / name)], name
    gigaspeech.prepare_manifests(corpus, tmp_path, ["XS"])  # no audio in {XS}
    with pytest.raises(PrepareError, match="GigaSpeech XS: no speech segment"):
        gigaspeech.compute_features(tmp_path, tmp_path / "fbank", ["XS"])
    with pytest.raises(PrepareError, match="unknown GigaSpeech subset"):
        gigaspeech.prepare_manifests(corpus, tmp_path, ["SMALL"])
    with pytest.raises(PrepareError, match="GigaSpeech metadata not found"):
        gigaspeech.prepare_manifests(tmp_path, tmp_path, ["S"])


def test_rerun_skips_finished_stages(prepared):
    outputs = sorted(p for p in (prepared["work"] / "data").rglob("*") if p.is_file())
    before = {p: p.stat().st_mtime_ns for p in outputs}
    proc = run_prepare(prepared["work"], *prepared["args"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in outputs} == before
    for marker in ("data/manifests/.librispeech.done", "data/fbank/.librispeech.done",
                   "data/fbank/musan_cuts.jsonl.gz", "data/fbank/.gigaspeech.done"):
        assert f"{marker} exists: skipping" in proc.stdout
    assert "Stage 8" in proc.stdout


def _write_lines(path: Path, lines: list[dict]) -> None:
    with gzip.open(path, "wt") as f:
        f.writelines(json.dumps(d) + "\n" for d in lines)


def test_validation_catches_broken_manifests(work, tmp_path):
    source = work["fbank"] / "librispeech_cuts_dev-clean.jsonl.gz"
    with gzip.open(source, "rt") as f:
        good = [json.loads(line) for line in f]
    assert validate_manifest(source, read_features=True) == 4
    cut_id = good[2]["id"]
    broken = {  # name: (how to break cut 2 of the list, what the error must say)
        "no-text": (lambda d: d[2]["supervisions"][0].update(text=""), "has no text"),
        "sup-beyond-cut": (lambda d: d[2]["supervisions"][0].update(
            duration=d[2]["duration"] + 0.5), "ends at"),
        "two-sups": (lambda d: d[2]["supervisions"].append(d[2]["supervisions"][0]),
                     "has 2 supervisions, expected 1"),
        "no-features": (lambda d: d[2].pop("features"), "has no features"),
        "40-bins": (lambda d: d[2]["features"].update(num_features=40),
                    "has 40-dim features, expected 80"),
        "longer-than-features": (lambda d: d[2].update(duration=d[2]["duration"] + 0.3),
                                 "but its features"),
        "lost-features": (lambda d: d[2]["features"].update(storage_path="data/gone.lca"),
                          "features not found: data/gone.lca"),
        "duplicate": (lambda d: d.insert(3, d[2]), "appears twice"),
    }
    for name, (breaker, message) in broken.items():
        lines = json.loads(json.dumps(good))
        breaker(lines)
        path = tmp_path / f"librispeech_cuts_{name}.jsonl.gz"
        _write_lines(path, lines)
        with pytest.raises(ManifestValidationError) as e:
            validate_manifest(path)
        assert str(e.value).startswith(f"{path}: cut {cut_id} ") and message in str(e.value)
    # the script: one line naming the manifest and the cut, exit code 1
    proc = subprocess.run([sys.executable, str(PREPARE.parent / "local" / "validate_manifest.py"),
                           str(source), str(tmp_path / "librispeech_cuts_no-text.jsonl.gz")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("validate_manifest.py: error: ")
    assert "no-text" in last and cut_id in last and "has no text" in last
    assert "Traceback" not in proc.stderr


def test_missing_corpus_fails_with_one_line(tmp_path):
    proc = run_prepare(tmp_path, "--stage", "1", "--stop-stage", "1",
                       "--dl-dir", str(tmp_path / "nowhere"))
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        f"prepare.sh: error: LibriSpeech not found: {tmp_path / 'nowhere'}/LibriSpeech "
        "(run stage 0, or pass --dl-dir DIR with DIR/LibriSpeech/<part>/)"]
    empty = tmp_path / "empty" / "LibriSpeech"
    empty.mkdir(parents=True)
    proc = run_prepare(tmp_path, "--stage", "1", "--stop-stage", "1",
                       "--dl-dir", str(empty.parent))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "prepare_manifests.py: error: no LibriSpeech part")


def test_download_keeps_what_is_there_and_survives_no_network(tmp_path, monkeypatch):
    """Stage 0 offline: parts on disk are never fetched; a failed download is logged and
    skipped (its empty archive removed); with nothing at all the error is one line."""
    calls = []

    def offline(target_dir, dataset_parts):
        calls.append(list(dataset_parts))
        (Path(target_dir) / f"{dataset_parts[0]}.tar.gz").touch()
        raise OSError("Name or service not known")

    monkeypatch.setattr(librispeech, "download_librispeech", offline)
    monkeypatch.setattr(musan, "download_musan", offline)
    chapter = tmp_path / "LibriSpeech" / "dev-clean" / "1272" / "128104"
    chapter.mkdir(parents=True)
    (chapter / "1272-128104.trans.txt").write_text("1272-128104-0000 HELLO\n")
    got = librispeech.download_parts(tmp_path, ["dev-clean", "test-other"], timeout=1)
    assert got == ["dev-clean"] and calls == [["test-other"]]
    assert not (tmp_path / "test-other.tar.gz").exists()
    assert musan.download_corpus(tmp_path, timeout=1) is False
    assert gigaspeech.download_corpus(tmp_path) is False  # no password: skipped
    with pytest.raises(PrepareError, match="no LibriSpeech part found in"):
        librispeech.download_parts(tmp_path / "empty", ["dev-clean"], timeout=1)
    (tmp_path / "password").write_text("\n")
    with pytest.raises(PrepareError, match="password is empty"):
        gigaspeech.download_corpus(tmp_path)

    def no_speechcolab(*args, **kwargs):
        raise ImportError("No module named 'speechcolab'")

    (tmp_path / "password").write_text("secret\n")
    monkeypatch.setattr(gigaspeech, "download_gigaspeech", no_speechcolab)
    with pytest.raises(PrepareError, match="needs 'pip install speechcolab'"):
        gigaspeech.download_corpus(tmp_path)


def test_try_download_logs_failures_and_keeps_partial_archives(tmp_path):
    archive = tmp_path / "corpus.tar.gz"

    def unreachable():
        archive.touch()
        raise ConnectionError("Name or service not known")

    def cut_off():
        archive.write_bytes(b"half")
        raise TimeoutError("timed out")

    assert try_download(unreachable, "X", archive, timeout=1) is False
    assert not archive.exists()  # an empty archive is removed
    assert try_download(cut_off, "X", archive, timeout=1) is False
    assert archive.read_bytes() == b"half"  # a partial one is kept for lhotse to resume
    before = socket.getdefaulttimeout()
    seen = []
    assert try_download(lambda: seen.append(socket.getdefaulttimeout()), "X", timeout=7.0)
    assert seen == [7.0] and socket.getdefaulttimeout() == before

    def missing_package():
        raise ImportError("No module named 'speechcolab'")

    with pytest.raises(ImportError):  # a missing package is not a network failure
        try_download(missing_package, "X")


def test_prepare_atomically_publishes_only_finished_manifests(tmp_path):
    out = tmp_path / "manifests"

    def good(tmp: Path) -> None:
        for name in ("a.jsonl.gz", "b.jsonl.gz"):
            (tmp / name).write_text(name)

    def crashing(tmp: Path) -> None:
        (tmp / "c.jsonl.gz").write_text("half")
        raise OSError("No space left on device")

    prepare_atomically(out, "x", good)
    with pytest.raises(OSError, match="No space left"):
        prepare_atomically(out, "x", crashing)
    assert sorted(p.name for p in out.iterdir()) == ["a.jsonl.gz", "b.jsonl.gz"]
    assert (out / "b.jsonl.gz").read_text() == "b.jsonl.gz"


def test_combine_shuffled_is_a_seeded_permutation(tmp_path):
    lines = [json.dumps({"id": f"cut-{i}"}) for i in range(40)]
    with gzip.open(tmp_path / "a.jsonl.gz", "wt") as f:
        f.write("\n".join(lines[:25]) + "\n\n")  # a blank line
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as f:
        f.write("\n".join(lines[25:]))  # no final newline

    def combined(seed: int, name: str) -> list[str]:
        path = combine_shuffled([tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl.gz"],
                                tmp_path / name, seed)
        with gzip.open(path, "rt") as f:
            return f.read().split("\n")

    first = combined(42, "x.jsonl.gz")
    assert first[-1] == "" and sorted(first[:-1]) == sorted(lines)
    assert first[:-1] != lines
    assert combined(42, "y.jsonl.gz") == first
    assert combined(43, "z.jsonl.gz") != first


def test_fbank_parts_make_cuts_only_for_missing_parts(tmp_path):
    done = tmp_path / "demo_cuts_done.jsonl.gz"
    feats = Features(type="kaldi-fbank", num_frames=100, num_features=80, frame_shift=0.01,
                     sampling_rate=16000, start=0.0, duration=1.0, storage_type="numpy_files",
                     storage_path="elsewhere", storage_key="c.npy")
    CutSet.from_cuts([MonoCut("c", 0.0, 1.0, 0, features=feats)]).to_file(done)
    kept = done.read_bytes()
    asked = []

    def make_cuts(part: str) -> CutSet:
        asked.append(part)
        return CutSet.from_cuts([])

    with pytest.raises(PrepareError, match="demo empty: no cut to compute features for"):
        compute_fbank_for_parts(make_cuts, ["done", "empty"], tmp_path, "demo")
    assert asked == ["empty"]
    assert done.read_bytes() == kept
    with pytest.raises(PrepareError, match="demo_cuts_done.jsonl.gz has 80-bin features, "
                                           "not the 40 asked for"):
        compute_fbank_for_parts(make_cuts, ["done"], tmp_path, "demo", num_mel_bins=40)
    assert not (tmp_path / "demo_cuts_empty.jsonl.gz").exists()


def test_bad_options_fail_with_one_line(tmp_path):
    for args, message in ((["--stage"], "option --stage needs a value"),
                          (["--stage", "x"], "expected an integer, got 'x'"),
                          (["--frobnicate", "1"], "unknown option '--frobnicate' (see --help)")):
        proc = run_prepare(tmp_path, *args)
        assert proc.returncode == 1
        assert proc.stderr.splitlines() == [f"prepare.sh: error: {message}"]
    assert not (tmp_path / "data").exists()
    with pytest.raises(ValueError, match="unknown LibriSpeech part: 'train-clean-1'"):
        split_names("dev-clean train-clean-1", librispeech.PARTS, "LibriSpeech part")
    assert split_names("all", ("a", "b"), "x") == ["a", "b"]
    assert split_names("S,DEV", gigaspeech.ALL_SUBSETS, "x") == ["S", "DEV"]
