"""Tests of icefall.data on a tiny corpus generated here: sine-plus-noise waves with
transcripts from a small word list, featurised, saved as icefall-named manifests and read
back through AsrDataModule."""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import logging
import math
import random
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from lhotse import (
    CutSet,
    MonoCut,
    Recording,
    RecordingSet,
    SupervisionSegment,
    SupervisionSet,
)
from lhotse.features.io import LilcomChunkyWriter

from icefall.cli.dataloading import add_dataloading_arguments
from icefall.data import (
    AsrDataModule,
    CutFilter,
    ManifestError,
    compute_fbank_for_part,
    compute_fbank_for_parts,
    cuts_filename,
    decode,
    default_storage_type,
    encode,
    encode_pieces,
    fbank_executor,
    filter_cuts,
    load_bpe_model,
    load_cuts,
    mux_cuts,
    normalize_cut_texts,
    normalize_text,
    parse_mux_weights,
    read_tokens,
    train_bpe_model,
    zipformer_output_frames,
)
from icefall.data.manifests import load_part_cuts

SR = 16000
WORDS = ["HELLO", "WORLD", "THE", "QUICK", "BROWN", "FOX", "JUMPS", "OVER", "LAZY", "DOG",
         "DON'T", "STOP"]
PREFIX = "demo"


def _make_cuts(root: Path, name: str, n: int, rng: np.random.Generator,
               durations: list[float] | None = None) -> CutSet:
    """``n`` utterances of 0.6 to 3.0 s: a sine with noise, text of 2 to 6 words."""
    root.mkdir(parents=True, exist_ok=True)
    recordings, supervisions = [], []
    for i in range(n):
        duration = durations[i] if durations else float(rng.choice(np.arange(0.6, 3.01, 0.2)))
        t = np.arange(int(round(duration * SR))) / SR
        wave = 0.2 * np.sin(2 * np.pi * rng.uniform(150, 400) * t)
        wave += 0.02 * rng.standard_normal(t.size)
        path = root / f"{name}-{i:03d}.wav"
        sf.write(path, wave.astype(np.float32), SR)
        rec = Recording.from_file(path, recording_id=f"{name}-{i:03d}")
        text = " ".join(rng.choice(WORDS, size=int(rng.integers(2, 7))))
        recordings.append(rec)
        supervisions.append(SupervisionSegment(id=rec.id, recording_id=rec.id, start=0.0,
                                               duration=rec.duration, channel=0, text=text))
    return CutSet.from_manifests(recordings=RecordingSet.from_recordings(recordings),
                                 supervisions=SupervisionSet.from_segments(supervisions))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """``<root>/fbank`` with demo_cuts_{train,dev}.jsonl.gz and musan_cuts.jsonl.gz."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    fbank = root / "fbank"
    for part, n in (("train", 32), ("dev", 8)):
        cuts = _make_cuts(root / "wav", part, n, rng)
        compute_fbank_for_part(cuts, fbank, PREFIX, part, progress_bar=False)
    # Like MUSAN's, the noise cuts carry no supervisions: mixed-in noise adds no text.
    noise = _make_cuts(root / "wav", "noise", 3, rng, durations=[4.0, 4.0, 4.0])
    noise = CutSet.from_manifests(recordings=RecordingSet.from_recordings(
        c.recording for c in noise))
    compute_fbank_for_part(noise, fbank, "", "musan_tmp", progress_bar=False)
    (fbank / cuts_filename("", "musan_tmp")).rename(fbank / "musan_cuts.jsonl.gz")
    return fbank


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory) -> Path:
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8))) for _ in range(300)]
    lang = tmp_path_factory.mktemp("lang_bpe_40")
    train_bpe_model(texts, lang, vocab_size=40)
    return lang


def _module(corpus: Path, **overrides) -> AsrDataModule:
    args = dict(manifest_dir=corpus, max_duration=6.0, num_buckets=2, num_workers=0,
                enable_musan=False, enable_spec_aug=False, shuffle=True, drop_last=False)
    args.update(overrides)
    return AsrDataModule(argparse.Namespace(**args))


def _cuts(corpus: Path, part: str) -> CutSet:
    """The lazy cuts of ``<corpus>/demo_cuts_<part>.jsonl.gz``."""
    return load_cuts(corpus / cuts_filename(PREFIX, part))


def _batch_ids(batch: dict) -> list[str]:
    return [c.id for c in batch["supervisions"]["cut"]]


# ----- features and manifests --------------------------------------------------------------

def test_features_stored_and_manifests_named_like_icefall(corpus):
    for part in ("train", "dev"):
        assert (corpus / f"{PREFIX}_cuts_{part}.jsonl.gz").is_file()
    cuts = _cuts(corpus, "train")
    assert cuts.is_lazy
    cuts = cuts.to_eager()
    assert len(cuts) == 32
    for c in cuts:
        assert c.has_features and c.num_features == 80
        assert c.num_frames == round(c.duration * 100)
        feats = c.load_features()
        assert feats.shape == (c.num_frames, 80) and np.isfinite(feats).all()
    storage = cuts[0].features.storage_type
    assert storage == default_storage_type().name


def test_part_cuts_load_back_from_lhotse_named_recordings_and_supervisions(tmp_path):
    """load_part_cuts pairs <prefix>_recordings_<part> with <prefix>_supervisions_<part>:
    the same cuts (ids, audio, texts) as those the two manifests were written from."""
    cuts = _make_cuts(tmp_path / "wav", "p", 4, np.random.default_rng(5))
    recs, sups = cuts.decompose()[:2]
    recs.to_file(tmp_path / f"{PREFIX}_recordings_dev.jsonl.gz")
    sups.to_file(tmp_path / f"{PREFIX}_supervisions_dev.jsonl.gz")
    loaded = load_part_cuts(tmp_path, PREFIX, "dev")
    assert [(c.recording.sources[0].source, c.supervisions[0].text, c.duration)
            for c in loaded] == [(c.recording.sources[0].source, c.supervisions[0].text,
                                  c.duration) for c in cuts]


def test_parts_in_one_shared_pool_equal_features_computed_in_process(tmp_path,
                                                                    monkeypatch):
    """compute_fbank_for_parts computes two parts in one two-process pool (it outlives the
    first part), and their features are exactly those of the same cuts computed in this
    process."""
    import icefall.data.fbank as fbank

    rng = np.random.default_rng(3)
    parts = {p: _make_cuts(tmp_path / "wav", p, 5, rng) for p in ("x", "y")}
    pools = []

    @contextlib.contextmanager
    def counted(num_jobs):
        with fbank_executor(num_jobs) as pool:
            pools.append(pool)
            yield pool

    monkeypatch.setattr(fbank, "fbank_executor", counted)
    compute_fbank_for_parts(parts.__getitem__, list(parts), tmp_path / "pooled", PREFIX,
                            num_jobs=2, progress_bar=False, num_mel_bins=24)
    monkeypatch.undo()
    assert len(pools) == 1 and pools[0] is not None
    for part, cuts in parts.items():
        compute_fbank_for_part(cuts, tmp_path / "local", PREFIX, part, num_jobs=1,
                               progress_bar=False, num_mel_bins=24)
        pooled = {c.id: c.load_features() for c in
                  load_cuts(tmp_path / "pooled" / cuts_filename(PREFIX, part))}
        local = {c.id: c.load_features() for c in
                 load_cuts(tmp_path / "local" / cuts_filename(PREFIX, part))}
        assert sorted(pooled) == sorted(local) == sorted(c.id for c in cuts)
        for cid, feats in local.items():
            assert feats.shape[1] == 24
            np.testing.assert_array_equal(pooled[cid], feats)


def test_train_batches_have_icefall_keys_and_shapes(corpus):
    dm = _module(corpus, enable_musan=True, enable_spec_aug=True)
    dl = dm.train_dataloaders(_cuts(corpus, "train"))
    n_batches = 0
    for batch in dl:
        x, sup = batch["inputs"], batch["supervisions"]
        N = len(sup["text"])
        assert x.ndim == 3 and x.shape[0] == N and x.shape[2] == 80 and x.dtype == torch.float32
        assert all(isinstance(t, str) and t for t in sup["text"])
        assert sup["num_frames"].shape == (N,) and sup["start_frame"].shape == (N,)
        assert int(sup["num_frames"].max()) == x.shape[1]
        assert len(sup["cut"]) == N
        n_batches += 1
    assert n_batches >= 5


@pytest.mark.parametrize("method", ["valid_dataloaders", "test_dataloaders"])
def test_eval_batches_are_complete_fixed_and_unaugmented(corpus, method):
    dm = _module(corpus, enable_musan=True, enable_spec_aug=True)
    dl = getattr(dm, method)(_cuts(corpus, "dev"))
    first = [b for b in dl]
    ids = [i for b in first for i in _batch_ids(b)]
    assert sorted(ids) == sorted(c.id for c in _cuts(corpus, "dev"))
    assert ids == [i for b in dl for i in _batch_ids(b)]  # same order every pass
    batch = first[0]
    cut = batch["supervisions"]["cut"][0]
    stored = torch.from_numpy(cut.load_features())
    assert torch.equal(batch["inputs"][0, : cut.num_frames], stored)


def test_sampler_respects_max_duration(corpus):
    """lhotse's samplers bound the padded batch (cuts x longest cut) by --max-duration.

    SimpleCutSampler takes back a cut that would exceed it, so even the sum of durations
    stays within. DynamicBucketingSampler stops once one more cut as long as the longest so
    far would not fit, so the last cut may overshoot by its excess over that longest cut
    (at most the width of a duration bucket); everything before it leaves that room.
    """
    max_duration = 5.0
    simple = _module(corpus, max_duration=max_duration, bucketing_sampler=False)
    batches = list(simple.train_sampler(_cuts(corpus, "train")))
    assert len(batches) >= 6 and sum(len(b) for b in batches) == 32
    for b in batches:
        d = [c.duration for c in b]
        assert sum(d) <= len(d) * max(d) <= max_duration + 1e-6

    bucketing = _module(corpus, max_duration=max_duration, num_buckets=4)
    batches = list(bucketing.train_sampler(_cuts(corpus, "train")))
    assert len(batches) >= 6 and sum(len(b) for b in batches) == 32
    for b in batches:
        d = [c.duration for c in b]
        if len(d) > 1:
            assert sum(d[:-1]) + max(d[:-1]) <= max_duration + 1e-6
            assert sum(d) <= max_duration + d[-1] - max(d[:-1]) + 1e-6


def test_sampler_state_dict_round_trip_resumes_at_same_batch(corpus):
    dm = _module(corpus, max_duration=4.0)
    cuts = _cuts(corpus, "train")
    dl = dm.train_dataloaders(cuts)
    dl.sampler.set_epoch(3)
    reference, state = [], None
    for i, batch in enumerate(dl):
        reference.append(_batch_ids(batch))
        if i == 2:
            buf = io.BytesIO()
            torch.save(dl.sampler.state_dict(), buf)  # as it goes into a checkpoint
    assert len(reference) > 4
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    resumed = [_batch_ids(b) for b in dm.train_dataloaders(cuts, sampler_state_dict=state)]
    assert resumed == reference[3:]


# ----- filters -----------------------------------------------------------------------------

def _cut(i: int, duration: float, text: str) -> MonoCut:
    rec = Recording(id=f"r{i}", sources=[], sampling_rate=SR,
                    num_samples=int(duration * SR), duration=duration)
    sup = SupervisionSegment(id=f"s{i}", recording_id=rec.id, start=0.0, duration=duration,
                             text=text)
    return MonoCut(id=f"c{i}", start=0.0, duration=duration, channel=0, recording=rec,
                   supervisions=[sup])


def test_zipformer_output_frames_formula():
    assert [zipformer_output_frames(t) for t in (7, 8, 9, 10, 11, 100)] == [0, 0, 1, 1, 1, 23]


def test_filter_drops_the_right_cuts_and_reports_the_count(bpe_dir, caplog):
    sp = load_bpe_model(bpe_dir / "bpe.model")
    many_words = " ".join(["A", "B", "C", "D", "E", "F"] * 5)  # >= 30 tokens > 23 frames
    cuts = CutSet.from_cuts([
        _cut(0, 1.0, "HELLO WORLD"),  # kept: 23 encoder frames, a few tokens
        _cut(1, 0.9, "HELLO"),        # too short (< 1 s)
        _cut(2, 20.5, "HELLO"),       # too long (> 20 s)
        _cut(3, 1.0, many_words),     # fewer encoder frames than tokens
        _cut(4, 20.0, "STOP"),        # kept: the bounds are inclusive
    ])
    with caplog.at_level(logging.INFO):
        kept = filter_cuts(cuts, sp)
    assert [c.id for c in kept] == ["c0", "c4"]
    assert "Dropped 3 of 5 cuts" in caplog.text
    assert "too_few_frames: 1" in caplog.text and "too_long: 1" in caplog.text

    f = CutFilter(sp=None, min_duration=0.0)  # without text only T' >= 1 counts
    assert f.reason(_cut(5, 0.08, "")) == "too_few_frames"  # 8 frames -> 0
    assert f.reason(_cut(6, 0.11, "")) is None               # 11 frames -> 1
    assert CutFilter(sp=None, min_duration=0.0, subsampling=lambda t: t // 20).reason(
        _cut(7, 0.11, "")) == "too_few_frames"


def test_filter_on_lazy_cuts_counts_per_pass(corpus, bpe_dir, caplog):
    sp = load_bpe_model(bpe_dir / "bpe.model")
    cuts = _cuts(corpus, "train")
    f = CutFilter(sp)
    kept = filter_cuts(cuts, cut_filter=f)
    assert kept.is_lazy
    with caplog.at_level(logging.INFO):
        ids = [c.id for c in kept]
        ids_again = [c.id for c in kept]
    expected = [c.id for c in cuts if c.duration >= 1.0]  # tokens fit easily here
    assert ids == ids_again == expected
    assert f.stats.total == 32 and f.stats.kept == len(expected)
    assert f.stats.dropped == {"too_short": 32 - len(expected)}
    assert caplog.text.count(f"Dropped {32 - len(expected)} of 32 cuts") == 2


# ----- BPE ---------------------------------------------------------------------------------

def test_bpe_model_tokens_txt_and_round_trip(bpe_dir):
    sp = load_bpe_model(bpe_dir / "bpe.model")
    assert sp.get_piece_size() == 40
    lines = (bpe_dir / "tokens.txt").read_text(encoding="utf-8").splitlines()
    assert lines[:3] == ["<blk> 0", "<sos/eos> 1", "<unk> 2"]
    assert [int(line.split()[1]) for line in lines] == list(range(40))
    assert all(len(line.split()) == 2 for line in lines)
    assert read_tokens(bpe_dir / "tokens.txt")["<unk>"] == sp.unk_id() == 2
    texts = ["HELLO WORLD", "THE QUICK BROWN FOX DON'T STOP"]
    ids = encode(sp, texts)
    assert all(0 not in seq and 1 not in seq for seq in ids)  # no blank, no sos/eos
    assert decode(sp, ids) == texts


def test_encode_one_text_at_a_time_equals_sentencepieces_batch_encode(bpe_dir):
    """encode / encode_pieces call sentencepiece once per text (its list form starts
    threads per call); the result is its list form's, unknown characters and an empty
    text included."""
    sp = load_bpe_model(bpe_dir / "bpe.model")
    texts = ["HELLO WORLD", "", "ZQX ÉTÉ HELLO", "THE LAZY DOG DON'T STOP", "FOX"]
    assert encode(sp, texts) == sp.encode(texts, out_type=int)
    assert encode_pieces(sp, texts) == sp.encode(texts, out_type=str)
    assert encode(sp, []) == []


def test_bpe_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.model"):
        load_bpe_model(tmp_path / "missing.model")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="bad.model"):
        load_bpe_model(bad)
    with pytest.raises(ValueError, match="Vocabulary size"):
        train_bpe_model(["HELLO WORLD"] * 10, tmp_path / "lang", vocab_size=5000)


# ----- mux, errors, text, flags ------------------------------------------------------------

def test_mux_mixes_both_sources_at_the_given_weights():
    new = CutSet.from_cuts([_cut(i, 2.0, "NEW") for i in range(400)])
    orig = CutSet.from_cuts([_cut(1000 + i, 2.0, "ORIG") for i in range(400)])
    mixed = [c.supervisions[0].text for c in mux_cuts(new, orig, weights=[1.0, 3.0])]
    share = mixed.count("ORIG") / len(mixed)
    # ~530 draws until ORIG runs out; binomial sd of the share is 0.019: allow 3.5 sd.
    assert abs(share - 0.75) < 0.07 and mixed.count("NEW") > 0
    assert len(mixed) < 800  # stop_early: ends when the first source is exhausted

    dm = AsrDataModule({"use_mux": False})
    assert dm.mux_train_cuts(new, orig) is new
    dm = AsrDataModule({"use_mux": True, "mux_weights": "1,1"})
    half = [c.supervisions[0].text for c in dm.mux_train_cuts(new, orig)]
    assert abs(half.count("ORIG") / len(half) - 0.5) < 0.1
    assert parse_mux_weights("") is None and parse_mux_weights("1,19") == [1.0, 19.0]
    with pytest.raises(ValueError, match="--mux-weights"):
        parse_mux_weights("1,x")


def test_missing_or_bad_manifest_gives_a_clear_error(tmp_path, corpus):
    with pytest.raises(FileNotFoundError, match=r"librispeech_cuts_dev-clean\.jsonl\.gz"):
        load_cuts(tmp_path / "librispeech_cuts_dev-clean.jsonl.gz")
    with gzip.open(tmp_path / "librispeech_cuts_test-clean.jsonl.gz", "wt") as f:
        f.write("")
    with pytest.raises(ManifestError, match="test-clean.*empty"):
        load_cuts(tmp_path / "librispeech_cuts_test-clean.jsonl.gz")
    (tmp_path / "librispeech_cuts_test-other.jsonl.gz").write_bytes(b"garbage")
    with pytest.raises(ManifestError, match="test-other"):
        load_cuts(tmp_path / "librispeech_cuts_test-other.jsonl.gz")
    # MUSAN enabled but absent: named when the training loader is built.
    train = _cuts(corpus, "train")
    with pytest.raises(FileNotFoundError, match="musan_cuts.jsonl.gz"):
        _module(tmp_path, enable_musan=True).train_dataloaders(train)


def test_on_the_fly_features_equal_precomputed(corpus):
    cuts = _cuts(corpus, "dev")
    stored = {i: b for b in _module(corpus).test_dataloaders(cuts) for i in _batch_ids(b)}
    fly = {i: b for b in _module(corpus, on_the_fly_feats=True).test_dataloaders(cuts)
           for i in _batch_ids(b)}
    assert stored.keys() == fly.keys()
    # The same extractor runs on the same samples one utterance at a time, so only storage
    # can differ. Lilcom rounds to integer multiples of 2^tick_power (2^-5 in lhotse's
    # LilcomChunkyWriter): at most half a tick, 2^-6, off. Uncompressed float32 storage is
    # exact. 1e-5 on top leaves room for float rounding of a differently threaded FFT.
    atol = (2.0**-6 if default_storage_type() is LilcomChunkyWriter else 0.0) + 1e-5
    for cut_id, b in stored.items():
        k = _batch_ids(b).index(cut_id)
        kf = _batch_ids(fly[cut_id]).index(cut_id)
        n = int(b["supervisions"]["num_frames"][k])
        assert int(fly[cut_id]["supervisions"]["num_frames"][kf]) == n
        a, c = b["inputs"][k, :n], fly[cut_id]["inputs"][kf, :n]
        assert torch.allclose(a, c, atol=atol, rtol=0), float((a - c).abs().max())


def test_normalize_text_librispeech_form():
    assert normalize_text("Hello, world!") == "HELLO WORLD"
    assert normalize_text("don\u2019t  stop -- the boys' well-known 'quote'") == (
        "DON'T STOP THE BOYS' WELL KNOWN QUOTE")
    assert normalize_text("WHAT <COMMA> IS THIS <QUESTIONMARK>") == "WHAT IS THIS"
    assert normalize_text("  ") == ""
    cuts = CutSet.from_cuts([_cut(0, 2.0, "it's <COMMA> fine"), _cut(1, 2.0, "<MUSIC>")])
    normalized = normalize_cut_texts(cuts)
    assert [c.supervisions[0].text for c in normalized] == ["IT'S FINE"]


def test_data_flags_have_icefall_defaults_and_keep_recipe_flags():
    parser = argparse.ArgumentParser()
    parser.add_argument("--use-mux", type=int, default=7)  # defined by the recipe itself
    add_dataloading_arguments(parser)
    a = parser.parse_args([])
    assert a.manifest_dir == Path("data/fbank") and a.max_duration == 200.0
    assert a.bucketing_sampler and a.num_buckets == 30 and not a.concatenate_cuts
    assert a.duration_factor == 1.0 and a.gap == 1.0 and not a.on_the_fly_feats
    assert a.shuffle and a.drop_last and a.return_cuts and a.num_workers == 2
    assert a.enable_spec_aug and a.spec_aug_time_warp_factor == 80 and a.enable_musan
    assert a.input_strategy == "PrecomputedFeatures" and a.use_mux == 7
    assert parser.parse_args(["--bucketing-sampler", "0"]).bucketing_sampler is False
    assert math.isclose(parser.parse_args(["--max-duration", "12.5"]).max_duration, 12.5)


def test_data_module_defaults_are_the_flags_defaults():
    """The library's DATA_DEFAULTS and the command line's defaults are one set of values."""
    from icefall.data.datamodule import DATA_DEFAULTS

    parser = argparse.ArgumentParser()
    add_dataloading_arguments(parser)
    assert vars(parser.parse_args([])) == DATA_DEFAULTS
    assert vars(AsrDataModule({"max_duration": 5.0}).args) == {**DATA_DEFAULTS,
                                                               "max_duration": 5.0}
