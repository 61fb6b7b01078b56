"""ONNX export: the exported files compute what the PyTorch model computes, decode to the
same transcripts in ONNX Runtime and in sherpa-onnx, and follow sherpa-onnx's layout.

The checkpoints are the session's trained runs (conftest ``base_run``, ``adapter_run``);
exports go to fresh folders holding links to their checkpoints, so those runs stay as
they are. Export traces with (N, T) = (1, 100); every comparison here uses other shapes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import kaldialign
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import soundfile as sf
import torch
from conftest import ROOT, TRAIN_MODEL
from lhotse import CutSet
from runs import BASE, decode_args, model_flags, one_error_line, run_script

from icefall.checkpoint import save_checkpoint
from icefall.cli.decode import main as decode_main
from icefall.cli.decode import onnx_main as onnx_decode_main
from icefall.cli.export import main as export_main
from icefall.data import make_fbank_extractor
from icefall.decode import onnx_runtime as rt
from icefall.decode.report import read_transcripts, read_wer_summary
from icefall.decode.search import greedy_search_batch
from icefall.inference import load_model
from icefall.zipformer import get_model


def _tokens(corpus) -> Path:
    return Path(corpus["bpe_model"]).parent / "tokens.txt"


def _linked_exp(tmp: Path, checkpoint: Path) -> Path:
    """A fresh exp dir holding a link to ``checkpoint``."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / checkpoint.name).symlink_to(checkpoint)
    return tmp


def _export(exp: Path, epoch: int, corpus, *extra: str):
    return export_main("unused", False, ["--epoch", str(epoch), "--avg", "1",
                                         "--use-averaged-model", "0", "--exp-dir", str(exp),
                                         "--tokens", str(_tokens(corpus)), *model_flags(),
                                         *extra])


def _params(exp: Path, epoch: int, **extra) -> dict:
    return {**TRAIN_MODEL, "exp_dir": exp, "epoch": epoch, "iter": 0, "avg": 1,
            "use_averaged_model": False, "trust_checkpoint": False, "vocab_size": 37,
            "blank_id": 0, "use_adapters": False, **extra}


@pytest.fixture(scope="module")
def base_onnx(corpus, base_run, tmp_path_factory):
    exp = _linked_exp(tmp_path_factory.mktemp("onnx_base"), base_run / "epoch-8.pt")
    return exp, _export(exp, 8, corpus)


@pytest.fixture(scope="module")
def adapter_onnx(corpus, adapter_run, tmp_path_factory):
    """Exports of adapter_run's epoch-2.pt: adapters baked in ("on"), and left out ("off")."""
    out = {}
    for mode in ("on", "off"):
        exp = _linked_exp(tmp_path_factory.mktemp(f"onnx_adapter_{mode}"),
                          adapter_run / "epoch-2.pt")
        out[mode] = (exp, _export(exp, 2, corpus, "--use-adapters",
                                  "1" if mode == "on" else "0", "--adapter-dim", "8"))
    return out


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _torch_encoder(model, x: np.ndarray, x_lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        enc, lens = model.forward_encoder(torch.from_numpy(x), torch.from_numpy(x_lens))
        return model.joiner.encoder_proj(enc).numpy(), lens.numpy()


def _assert_encoder_matches(model, encoder: Path, shapes, atol: float = 1e-3) -> None:
    """ONNX encoder == PyTorch forward_encoder + encoder_proj on the valid frames."""
    sess, rng = _session(encoder), np.random.default_rng(0)
    for lens in shapes:
        x_lens = np.array(lens, dtype=np.int64)
        x = rng.standard_normal((len(lens), max(lens), 80)).astype(np.float32)
        out, out_lens = sess.run(None, {"x": x, "x_lens": x_lens})
        ref, ref_lens = _torch_encoder(model, x, x_lens)
        assert out.shape == ref.shape and (out_lens == ref_lens).all(), lens
        for n, m in enumerate(ref_lens):
            np.testing.assert_allclose(out[n, :m], ref[n, :m], atol=atol, rtol=0)


def _valid_batch(corpus, domain: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Features (N, T, 80) padded with log(1e-10), lengths and texts of a valid set."""
    cuts = CutSet.from_file(corpus["manifest_dir"] / f"dom{domain}_cuts_valid.jsonl.gz")
    feats = [c.load_features() for c in cuts]
    x, x_lens = rt.pad_features(feats)
    return x, x_lens, [c.supervisions[0].text for c in cuts]


def _sound(path: Path, seconds: float = 3.0, seed: int = 0) -> np.ndarray:
    """A 16 kHz test sound: gliding tones in noise, no digital silence."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    wave = 0.05 * rng.standard_normal(t.size)
    for f0, f1 in ((200, 900), (1500, 400), (3000, 3500)):
        wave += 0.1 * np.sin(2 * np.pi * (f0 + (f1 - f0) * t / (2 * seconds)) * t)
    wave = (wave * (0.6 + 0.4 * np.sin(2 * np.pi * 1.3 * t))).astype(np.float32)
    sf.write(path, wave, 16000)
    return wave


# ---------------------------------------------------------------------------
# Layout
# ---------------------------------------------------------------------------


def _io(path: Path) -> tuple[list, list, dict]:
    """[(name, elem type, dims)] of inputs and outputs, and the metadata of a model."""
    m = onnx.load(str(path))

    def dims(v):
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    ins = [(v.name, v.type.tensor_type.elem_type, dims(v)) for v in m.graph.input]
    outs = [(v.name, v.type.tensor_type.elem_type, dims(v)) for v in m.graph.output]
    return ins, outs, {p.key: p.value for p in m.metadata_props}


def test_files_names_shapes_and_metadata_are_sherpa_onnxs(corpus, base_onnx):
    exp, files = base_onnx
    F, I64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
    assert files.encoder.name == "encoder-epoch-8-avg-1.onnx"
    assert files.encoder_int8.name == "encoder-epoch-8-avg-1.int8.onnx"
    assert (exp / "tokens.txt").read_text() == _tokens(corpus).read_text()
    for path in (files.encoder, files.encoder_int8):
        ins, outs, meta = _io(path)
        assert ins == [("x", F, ["N", "T", 80]), ("x_lens", I64, ["N"])]
        assert [(n, t) for n, t, _ in outs] == [("encoder_out", F), ("encoder_out_lens", I64)]
        assert outs[0][2][:2] == ["N", "T"] and outs[0][2][2] == 64  # joiner_dim
        assert meta["model_type"] == "zipformer2" and meta["adapters"] == "none"
        assert {"version", "model_author", "comment"} <= set(meta)
    for path in (files.decoder, files.decoder_int8):
        ins, outs, meta = _io(path)
        assert ins == [("y", I64, ["N", 2])] and outs == [("decoder_out", F, ["N", 64])]
        assert meta["context_size"] == "2" and meta["vocab_size"] == "37"
    for path in (files.joiner, files.joiner_int8):
        ins, outs, meta = _io(path)
        assert ins == [("encoder_out", F, ["N", 64]), ("decoder_out", F, ["N", 64])]
        assert outs == [("logit", F, ["N", 37])] and meta["joiner_dim"] == "64"
    assert onnx.load(str(files.encoder)).opset_import[0].version == 13
    # int8: every MatMul with a weight matrix became MatMulInteger with int8 weights;
    # only activation x activation products (attention) stay float
    m = onnx.load(str(files.encoder_int8))
    weights = {t.name for t in m.graph.initializer}
    assert not [n for n in m.graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    assert sum(n.op_type == "MatMulInteger" for n in m.graph.node) >= 30
    assert files.encoder_int8.stat().st_size < 0.7 * files.encoder.stat().st_size


# ---------------------------------------------------------------------------
# Numerical equality with PyTorch
# ---------------------------------------------------------------------------


def test_onnx_equals_pytorch_on_other_batch_sizes_and_lengths(base_run, base_onnx,
                                                             adapter_run, adapter_onnx):
    base = load_model(_params(base_run, 8))
    # 2100 frames: beyond the 1000-frame positional table PyTorch starts with (the export
    # computes the table in the graph, so long utterances work)
    _assert_encoder_matches(base, base_onnx[1].encoder,
                            [(157, 120, 61), (333,), (40, 23), (2100,)])
    adapted = load_model(_params(adapter_run, 2, use_adapters=True, adapter_dim=8))
    _assert_encoder_matches(adapted, adapter_onnx["on"][1].encoder, [(211, 64, 180)])
    # decoder and joiner, including the start context [-1, blank]
    files, rng = base_onnx[1], np.random.default_rng(1)
    y = np.stack([rng.integers(0, 37, 7), rng.integers(0, 37, 7)], axis=1)
    y[0] = (-1, 0)
    dec = _session(files.decoder).run(None, {"y": y})[0]
    with torch.no_grad():
        ref_dec = base.joiner.decoder_proj(base.decoder(torch.from_numpy(y), need_pad=False)
                                           .squeeze(1)).numpy()
        np.testing.assert_allclose(dec, ref_dec, atol=1e-5, rtol=0)
        enc = rng.standard_normal((7, 64)).astype(np.float32)
        logit = _session(files.joiner).run(None, {"encoder_out": enc, "decoder_out": dec})[0]
        ref = base.joiner(torch.from_numpy(enc), torch.from_numpy(dec), project_input=False)
        np.testing.assert_allclose(logit, ref.numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("which", ["base", "adapter"])
def test_greedy_transcripts_equal_pytorch(corpus, which, base_run, base_onnx, adapter_run,
                                          adapter_onnx):
    if which == "base":
        model, files, domain = load_model(_params(base_run, 8)), base_onnx[1], "a"
    else:
        model = load_model(_params(adapter_run, 2, use_adapters=True, adapter_dim=8))
        files, domain = adapter_onnx["on"][1], "b"
    x, x_lens, texts = _valid_batch(corpus, domain)
    with torch.no_grad():
        enc, enc_lens = model.forward_encoder(torch.from_numpy(x), torch.from_numpy(x_lens))
        ref = greedy_search_batch(model, enc, enc_lens)
    onnx_model = rt.OnnxTransducer(files.encoder, files.decoder, files.joiner)
    out, out_lens = onnx_model.run_encoder(x, x_lens)
    hyps = rt.greedy_search(onnx_model, out, out_lens)
    assert hyps == ref
    tokens = rt.read_token_table(_tokens(corpus))
    words = [rt.tokens_to_text(h, tokens) for h in hyps]
    errors = sum(kaldialign.edit_distance(t.split(), w.split())["total"]
                 for w, t in zip(words, texts))
    assert errors < 0.35 * sum(len(t.split()) for t in texts)  # a trained model, not noise


def test_onnx_decode_writes_decode_pys_reports_and_int8_decodes(corpus, base_run, base_onnx,
                                                                tmp_path):
    files = base_onnx[1]
    sets = "A=doma_cuts_valid.jsonl.gz"
    torch_wers = decode_main(BASE.decode, decode_args(corpus, base_run, 8, "--res-dir",
                                                      str(tmp_path / "torch"), sets=sets))
    common = ["--tokens", str(_tokens(corpus)), "--manifest-dir", str(corpus["manifest_dir"]),
              "--test-sets", sets, "--num-workers", "0", "--max-duration", "30"]
    wers = {}
    for kind in ("fp32", "int8"):
        enc, dec, join = ((files.encoder, files.decoder, files.joiner) if kind == "fp32" else
                          (files.encoder_int8, files.decoder_int8, files.joiner_int8))
        wers[kind] = onnx_decode_main(BASE.decode, [
            "--encoder-model-filename", str(enc), "--decoder-model-filename", str(dec),
            "--joiner-model-filename", str(join), "--res-dir", str(tmp_path / kind), *common])
    tag = "greedy_search-epoch-8-avg-1"
    onnx_recogs = read_transcripts(tmp_path / "fp32" / f"recogs-A-{tag}.txt")
    torch_recogs = read_transcripts(next((tmp_path / "torch").glob("recogs-A-*.txt")))
    assert onnx_recogs == torch_recogs and len(onnx_recogs) == 16
    assert wers["fp32"]["A"] == torch_wers["A"]
    summary = read_wer_summary(tmp_path / "int8" / f"wer-summary-A-{tag}.int8.txt")
    assert summary == wers["int8"]["A"]
    assert abs(wers["int8"]["A"][0][1] - wers["fp32"]["A"][0][1]) <= 5.0, wers


def test_export_without_adapters_equals_the_base_export(base_onnx, adapter_onnx):
    base, off, on = base_onnx[1], adapter_onnx["off"][1], adapter_onnx["on"][1]
    for name in ("encoder", "decoder", "joiner"):
        a, b = onnx.load(str(getattr(base, name))), onnx.load(str(getattr(off, name)))
        init_a = {t.name: onnx.numpy_helper.to_array(t) for t in a.graph.initializer}
        init_b = {t.name: onnx.numpy_helper.to_array(t) for t in b.graph.initializer}
        assert init_a.keys() == init_b.keys(), name
        for key, value in init_a.items():
            assert np.array_equal(value, init_b[key]), (name, key)
        assert [n.op_type for n in a.graph.node] == [n.op_type for n in b.graph.node], name
    rng = np.random.default_rng(2)
    feeds = {"x": rng.standard_normal((2, 150, 80)).astype(np.float32),
             "x_lens": np.array([150, 97], dtype=np.int64)}
    out_base = _session(base.encoder).run(None, feeds)[0]
    assert np.array_equal(_session(off.encoder).run(None, feeds)[0], out_base)
    # ... while the export with adapters on computes something else, with more weights
    assert np.abs(_session(on.encoder).run(None, feeds)[0] - out_base).max() > 1e-3
    assert _io(on.encoder)[2]["adapters"] == "8 residual adapters, dim 8"
    n_on = len(onnx.load(str(on.encoder)).graph.initializer)
    assert n_on > len(onnx.load(str(base.encoder)).graph.initializer)


def test_causal_model_exports_and_matches_pytorch(corpus, tmp_path):
    cfg = {**TRAIN_MODEL, "causal": True, "chunk_size": "8,-1",
           "left_context_frames": "32,-1", "vocab_size": 37}
    torch.manual_seed(3)
    model = get_model(cfg)
    with torch.no_grad():  # the edge scales start at zero; make them matter
        for name, p in model.named_parameters():
            if "chunkwise_conv_scale" in name:
                p.normal_(0.0, 0.5)
    save_checkpoint(tmp_path / "epoch-1.pt", model=model.state_dict())
    files = _export(tmp_path, 1, corpus, "--causal", "1", "--chunk-size", "8,-1",
                    "--left-context-frames", "32,-1")
    meta = _io(files.encoder)[2]
    assert meta["causal"] == "1" and meta["chunk_size"] == "8"
    # utterances longer and shorter than a chunk (8 frames = 23 input frames)
    _assert_encoder_matches(model.eval(), files.encoder, [(180, 97, 23), (17,), (64, 40)])


# ---------------------------------------------------------------------------
# Features, onnx_pretrained.py and sherpa-onnx
# ---------------------------------------------------------------------------


def test_kaldi_native_fbank_agrees_with_the_training_fbank(tmp_path):
    """Both are Kaldi's fbank with the same options (lhotse's Fbank defaults: 25/10 ms
    povey windows, pre-emphasis 0.97, DC removal, 80 bins from 20 Hz to Nyquist-400, no
    snip_edges, log floored at FLT_EPSILON); they differ only in float32 rounding (FFT
    and mel sums in another order). 1e-3 in log energy is a 0.1% energy difference, far
    below what changes a model's output, while any option mismatch (window, high_freq,
    pre-emphasis, frame count) moves bins by 0.05 or more."""
    pytest.importorskip("kaldi_native_fbank")
    wave = _sound(tmp_path / "s.wav")
    ours = rt.compute_features(wave, 16000)
    ref = np.asarray(make_fbank_extractor().extract(wave, 16000))
    assert ours.shape == ref.shape == (300, 80)
    assert np.abs(ours - ref).max() < 1e-3


def _pytorch_text(model, tokens: list[str], wave: np.ndarray, penalty: float) -> str:
    """pretrained.py's pipeline (lhotse fbank, PyTorch greedy search) with a blank penalty;
    <unk> acts as blank, as in sherpa-onnx."""
    model.unk_id = tokens.index("<unk>")
    feats = torch.as_tensor(np.asarray(make_fbank_extractor().extract(wave, 16000)))
    with torch.no_grad():
        enc, lens = model.forward_encoder(feats[None], torch.tensor([feats.shape[0]]))
        hyp = greedy_search_batch(model, enc, lens, blank_penalty=penalty)[0]
    return rt.tokens_to_text(hyp, tokens)


def test_sherpa_onnx_onnx_pretrained_and_pytorch_give_the_same_text(corpus, base_run,
                                                                    base_onnx, tmp_path):
    pytest.importorskip("kaldi_native_fbank")
    sherpa_onnx = pytest.importorskip("sherpa_onnx")
    files = base_onnx[1]
    wav = tmp_path / "sound.wav"
    wave = _sound(wav, seed=5)
    model = rt.OnnxTransducer(files.encoder, files.decoder, files.joiner)
    tokens = rt.read_token_table(_tokens(corpus))
    # The model knows only synthetic features: raise the blank penalty until it speaks.
    p0 = next(p for p in (0.0, 1.0, 2.0, 4.0, 8.0, 16.0)
              if rt.transcribe(model, tokens, [wave], 16000, p)[0])
    torch_model = load_model(_params(base_run, 8))
    for kind, penalty in (("fp32", p0), ("fp32", p0 + 2.0), ("int8", p0)):
        enc, dec, join = ((files.encoder, files.decoder, files.joiner) if kind == "fp32" else
                          (files.encoder_int8, files.decoder_int8, files.joiner_int8))
        proc = run_script("zipformer", "onnx_pretrained.py", [
            "--encoder-model-filename", str(enc), "--decoder-model-filename", str(dec),
            "--joiner-model-filename", str(join), "--tokens", str(_tokens(corpus)),
            "--blank-penalty", str(penalty), str(wav)])
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith(f"{wav}: ")
        text = proc.stdout.strip().split(": ", 1)[1]
        assert text and set(text.split()) <= corpus_words()
        recognizer = sherpa_onnx.OfflineRecognizer.from_transducer(
            str(enc), str(dec), str(join), str(_tokens(corpus)), num_threads=1,
            decoding_method="greedy_search", blank_penalty=penalty)
        stream = recognizer.create_stream()
        stream.accept_waveform(16000, wave)
        recognizer.decode_stream(stream)
        if kind == "int8":
            # sherpa-onnx bundles an ONNX Runtime of its own, whose dynamic int8 kernels may
            # round differently from the Python package's, and this model's outputs are
            # fragile (it speaks only under a blank penalty): at most a quarter of the words
            # apart, against the 100% of a recogniser that emits nothing
            edits = kaldialign.edit_distance(text.split(), stream.result.text.split())
            assert edits["total"] <= 0.25 * len(text.split()), (stream.result.text, text)
            continue
        assert stream.result.text == text, (kind, penalty)
        if kind == "fp32":
            assert _pytorch_text(torch_model, tokens, wave, penalty) == text, penalty


def corpus_words() -> set[str]:
    from corpus import WORDS

    return set(WORDS)


def test_onnx_runtime_module_needs_no_torch():
    code = ("import sys, icefall.decode.onnx_runtime; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------


def test_bad_input_is_one_clear_line(corpus, base_onnx, tmp_path):
    exp, files = base_onnx
    common = ["--avg", "1", "--use-averaged-model", "0", "--exp-dir", str(exp), *model_flags()]
    line = one_error_line(run_script("zipformer_adapter", "export-onnx.py", [
        "--epoch", "5", "--tokens", str(_tokens(corpus)), *common]))
    assert "epoch-5.pt" in line
    line = one_error_line(run_script("zipformer", "export-onnx.py", [
        "--epoch", "8", "--tokens", str(tmp_path / "no-tokens.txt"), *common]))
    assert "no-tokens.txt" in line
    models = ["--decoder-model-filename", str(files.decoder), "--joiner-model-filename",
              str(files.joiner), "--tokens", str(_tokens(corpus))]
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF....not really a wave file")
    line = one_error_line(run_script("zipformer_adapter", "onnx_pretrained.py", [
        "--encoder-model-filename", str(files.encoder), *models, str(bad)]))
    assert "cannot read sound file" in line and "broken.wav" in line
    line = one_error_line(run_script("zipformer", "onnx_pretrained.py", [
        "--encoder-model-filename", str(tmp_path / "missing.onnx"), *models, str(bad)]))
    assert "missing.onnx" in line
    line = one_error_line(run_script("zipformer_adapter", "onnx_decode.py", [
        "--encoder-model-filename", str(files.encoder), *models, "--manifest-dir",
        str(corpus["manifest_dir"]), "--test-sets", "X=missing_cuts_test.jsonl.gz"]))
    assert "missing_cuts_test.jsonl.gz" in line
