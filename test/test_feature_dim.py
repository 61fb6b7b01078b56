"""Models of another input width (--feature-dim, fbank --num-mel-bins): the width is
stored in the checkpoint and read back by decoding, transcription and export; every
feature path (lhotse's fbank, kaldi-native-fbank, sherpa-onnx, TorchScript) computes that
many bins; features of the wrong width are one clear error naming the file or test set.

Dimension legend: T = feature frames, F = mel bins.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import TRAIN_MODEL
from custom_data import make_base_checkpoint, make_bpe
from lhotse import CutSet, Recording
from lhotse.features.io import NumpyFilesWriter

from icefall.checkpoint import CheckpointError
from icefall.data import make_fbank_extractor
from icefall.data.fbank import compute_fbank_for_part
from icefall.data.preparation import PrepareError
from icefall.data.validation import ManifestValidationError, validate_manifest
from icefall.decode.recipe import check_feature_dim
from icefall.decode.search import greedy_search_batch
from icefall.decode.transcribe import transcribe_files
from icefall.inference import model_from_state
from icefall.zipformer import get_model
from icefall.zipformer.build import MODEL_DEFAULTS

F = 40


def _wave(path: Path, seconds: float = 1.5, seed: int = 0) -> np.ndarray:
    """A 16 kHz sound (chirps in noise) written to ``path``; returns its samples (S,)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    x = 0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t) + 0.01 * rng.standard_normal(t.size)
    x = x.astype(np.float32)
    sf.write(str(path), x, 16000, subtype="FLOAT")
    return x


@pytest.fixture(scope="module")
def narrow(tmp_path_factory):
    """A base checkpoint of a 40-bin model (random weights) and its BPE model."""
    root = tmp_path_factory.mktemp("narrow")
    bpe = make_bpe(root)
    ckpt = make_base_checkpoint(root / "base.pt", bpe, dict(TRAIN_MODEL, feature_dim=F))
    return root, bpe, ckpt


def _model(narrow) -> torch.nn.Module:
    root, bpe, ckpt = narrow
    data = torch.load(ckpt, weights_only=True)
    cfg = dict(MODEL_DEFAULTS, **data["params"]["model"])
    return model_from_state(cfg, data["model"], str(ckpt)).eval()


def test_pretrained_reads_the_width_from_the_checkpoint_and_computes_that_many_bins(
        narrow, tmp_path):
    """pretrained.py with no model flag: the stored width, and the text of the model run
    on lhotse's 40-bin fbank by hand; with icefall's default width (no stored flags taken)
    the checkpoint does not fit, and the error names --feature-dim 40."""
    root, bpe, ckpt = narrow
    wave = _wave(tmp_path / "a.wav")
    params = dict(MODEL_DEFAULTS, checkpoint=ckpt, bpe_model=bpe, method="greedy_search",
                  sample_rate=16000, beam_size=4, max_sym_per_frame=1,
                  trust_checkpoint=False, use_adapters=False, given_flags=[],
                  sound_files=[tmp_path / "a.wav"])
    model = _model(narrow)
    feats = torch.as_tensor(np.asarray(make_fbank_extractor(F).extract(wave, 16000)))
    assert feats.shape[1] == F
    with torch.no_grad():
        enc, lens = model.forward_encoder(feats[None], torch.tensor([feats.shape[0]]))
        hyp = greedy_search_batch(model, enc, lens)[0]
    from icefall.data import load_bpe_model

    texts = transcribe_files(params)
    assert texts == [load_bpe_model(bpe).decode(hyp)] and texts[0]  # the random model speaks
    with pytest.raises(CheckpointError, match="--feature-dim 40"):
        transcribe_files(dict(params, given_flags=None))


def _feature_cut(root: Path, cut_id: str, width: int) -> dict:
    """A cut (as a manifest line) with stored (100, width) features."""
    writer = NumpyFilesWriter(root / "feats")
    key = writer.write(cut_id, np.zeros((100, width), dtype=np.float32))
    feats = {"type": "kaldi-fbank", "num_frames": 100, "num_features": width,
             "frame_shift": 0.01, "sampling_rate": 16000, "start": 0.0, "duration": 1.0,
             "storage_type": "numpy_files", "storage_path": str(root / "feats"),
             "storage_key": key}
    sup = {"id": cut_id, "recording_id": cut_id, "start": 0.0, "duration": 1.0,
           "channel": 0, "text": "HELLO"}
    return {"id": cut_id, "start": 0.0, "duration": 1.0, "channel": 0, "features": feats,
            "supervisions": [sup], "type": "MonoCut"}


def _manifest(root: Path, widths: list[int]) -> Path:
    path = root / "cuts.jsonl.gz"
    CutSet.from_dicts([_feature_cut(root, f"c{i}", w) for i, w in enumerate(widths)]
                      ).to_file(path)
    return path


def test_a_test_set_of_another_width_is_named_before_decoding(tmp_path):
    """load_test_sets accepts any one width (the model's is known later); a set mixing
    widths, or a set whose width is not the model's, is one error naming it."""
    same = _manifest(tmp_path / "same", [F, F])
    assert validate_manifest(same, num_mel_bins=None) == 2
    with pytest.raises(ManifestValidationError, match=r"cut c1 has 80-dim features, "
                                                      r"expected 40"):
        validate_manifest(_manifest(tmp_path / "mixed", [F, 80]), num_mel_bins=None)
    cuts = {"B": CutSet.from_file(same)}
    check_feature_dim(cuts, F, "the model")
    with pytest.raises(ValueError, match=r"^test set B: its features have 40 mel bins but "
                                         r"the model takes 80"):
        check_feature_dim(cuts, 80, "the model")
    check_feature_dim(cuts, 80, "the model", on_the_fly=True)  # features from the audio


def test_training_refuses_musan_features_of_another_width(tmp_path):
    """--enable-musan 1 mixes MUSAN's stored features into the batches: they must be as wide
    as the model's input (one line naming the file), unless features are made on the fly."""
    from icefall.preflight import check_training_manifests

    _manifest(tmp_path, [F, F]).rename(tmp_path / "train_cuts.jsonl.gz")
    musan = tmp_path / "musan"
    _manifest(musan, [80]).rename(tmp_path / "musan_cuts.jsonl.gz")
    params = {"manifest_dir": tmp_path, "feature_dim": F, "on_the_fly_feats": False,
              "trust_manifest": False, "enable_musan": True}
    with pytest.raises(ValueError, match=r"musan_cuts.jsonl.gz has 80-bin features but the "
                                         r"model takes 40 \(--feature-dim\)"):
        check_training_manifests(params, ["train_cuts.jsonl.gz"])
    check_training_manifests(dict(params, on_the_fly_feats=True), ["train_cuts.jsonl.gz"])
    _manifest(musan, [F]).rename(tmp_path / "musan_cuts.jsonl.gz")
    check_training_manifests(params, ["train_cuts.jsonl.gz"])


def test_features_of_another_width_are_not_reused(tmp_path):
    """compute_fbank_for_part skips a part whose manifest exists only when its features
    have the width asked for; each width's features are what lhotse's fbank gives."""
    wav = tmp_path / "r.wav"
    wave = _wave(wav, seconds=1.0)
    cuts = CutSet.from_manifests(recordings=[Recording.from_file(wav, recording_id="r")])
    out = tmp_path / "fbank"
    manifest = compute_fbank_for_part(cuts, out, "x", "test", progress_bar=False,
                                      num_mel_bins=F, storage_type=NumpyFilesWriter)
    cut = next(iter(CutSet.from_file(manifest)))
    ref = np.asarray(make_fbank_extractor(F).extract(wave, 16000))
    assert np.allclose(cut.load_features(), ref, atol=1e-5) and ref.shape[1] == F
    assert compute_fbank_for_part(cuts, out, "x", "test", num_mel_bins=F) == manifest
    with pytest.raises(PrepareError, match=r"x_cuts_test.jsonl.gz has 40-bin features, "
                                           r"not the 80 asked for"):
        compute_fbank_for_part(cuts, out, "x", "test")


def test_onnx_and_sherpa_onnx_compute_the_exported_width(narrow, tmp_path):
    """The exported encoder says its width; ONNX Runtime's pipeline (kaldi-native-fbank at
    that width, the encoder) gives the PyTorch encoder's output on lhotse's fbank, and
    sherpa-onnx, told the width from the file, gives ONNX Runtime's text."""
    pytest.importorskip("kaldi_native_fbank")
    from icefall.decode import onnx_runtime as rt
    from icefall.decode.sherpa import encoder_feature_dim
    from icefall.export.onnx import export_transducer

    root, bpe, ckpt = narrow
    model = _model(narrow)
    files = export_transducer(model, tmp_path, "t", {"model_type": "zipformer2"}, int8=False)
    assert encoder_feature_dim(files.encoder) == F
    onnx_model = rt.OnnxTransducer(files.encoder, files.decoder, files.joiner)
    assert onnx_model.feature_dim == F
    wave = _wave(tmp_path / "a.wav", seed=3)
    x, x_lens = rt.pad_features([rt.compute_features(wave, 16000, F)])
    enc, _ = onnx_model.run_encoder(x, x_lens)
    feats = torch.as_tensor(np.asarray(make_fbank_extractor(F).extract(wave, 16000)))
    with torch.no_grad():
        ref, _ = model.forward_encoder(feats[None], torch.tensor([feats.shape[0]]))
        ref = model.joiner.encoder_proj(ref)  # sherpa-onnx's encoder output is projected
    assert enc.shape == tuple(ref.shape)
    assert np.abs(enc - ref.numpy()).max() < 2e-3
    sherpa_onnx = pytest.importorskip("sherpa_onnx")
    tokens = root / "lang_bpe" / "tokens.txt"  # train_bpe_model wrote it
    table = rt.read_token_table(tokens)
    # the lowest blank penalty at which the random model speaks (none: the test fails)
    penalty = next(p for p in (0.0, 2.0, 4.0, 8.0, 16.0)
                   if rt.transcribe(onnx_model, table, [wave], 16000, p)[0])
    recognizer = sherpa_onnx.OfflineRecognizer.from_transducer(
        str(files.encoder), str(files.decoder), str(files.joiner), str(tokens),
        num_threads=1, feature_dim=encoder_feature_dim(files.encoder),
        decoding_method="greedy_search", blank_penalty=penalty)
    stream = recognizer.create_stream()
    stream.accept_waveform(16000, wave)
    recognizer.decode_stream(stream)
    assert stream.result.text == rt.transcribe(onnx_model, table, [wave], 16000, penalty)[0]


def test_torchscript_keeps_the_width_for_jit_pretrained(narrow, tmp_path):
    """export.py --jit 1 of a 40-bin model: the file says 40, and jit_pretrained.py's
    pipeline gives the PyTorch model's text."""
    from icefall.decode.jit import transcribe_jit_files
    from icefall.export.torchscript import save_jit, script_model
    from icefall.token_table import read_token_table, tokens_to_text

    root, bpe, ckpt = narrow
    model = _model(narrow)
    path = tmp_path / "jit_script.pt"
    save_jit(script_model(model), path)
    assert torch.jit.load(str(path)).encoder.feature_dim == F
    tokens = root / "lang_bpe" / "tokens.txt"
    wave = _wave(tmp_path / "a.wav", seed=4)
    feats = torch.as_tensor(np.asarray(make_fbank_extractor(F).extract(wave, 16000)))
    with torch.no_grad():
        enc, lens = model.forward_encoder(feats[None], torch.tensor([feats.shape[0]]))
        hyp = greedy_search_batch(model, enc, lens)[0]
    texts = transcribe_jit_files({"nn_model_filename": path, "tokens": tokens,
                                  "sound_files": [tmp_path / "a.wav"]})
    assert texts == [tokens_to_text(hyp, read_token_table(tokens))] and texts[0]


def test_a_model_of_another_width_refuses_icefalls_80_bins():
    model = get_model(dict(MODEL_DEFAULTS, **TRAIN_MODEL, feature_dim=F, vocab_size=24))
    with pytest.raises(ValueError, match=r"features must have shape \(N, T, 40\)"):
        model.forward_encoder(torch.zeros(1, 50, 80), torch.tensor([50]))
