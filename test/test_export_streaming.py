"""Streaming ONNX export: the files follow sherpa-onnx's online zipformer2 layout, compute
chunk by chunk what PyTorch's streaming computes (states included, streams batched at
different positions, adapters baked in), and sherpa-onnx's online recognizer, our
onnx_pretrained-streaming.py and streaming_decode.py give the same words on the same audio.

The checkpoints are the causal runs of conftest; the audio is rendered from the corpus's
own utterances (``corpus.speech_from_features``), so that the trained model hears words.
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
from corpus import speech_from_features
from lhotse import CutSet, MonoCut, Recording, SupervisionSegment
from runs import BASE, STREAM_FLAGS, decode_args, model_flags, one_error_line, run_script

from icefall.cli.decode import streaming_main as streaming_decode_main
from icefall.cli.export import streaming_main as export_main
from icefall.data.manifests import save_cuts
from icefall.decode import onnx_streaming as ost
from icefall.decode.report import read_transcripts
from icefall.decode.streaming import (
    get_init_states,
    stack_states,
    state_batch_dim,
    streaming_forward,
    unstack_states,
)
from icefall.inference import load_model

pytestmark = pytest.mark.slow  # the causal runs train for a few minutes

TAG = "epoch-6-avg-1-chunk-8-left-32"


def _tokens(corpus) -> Path:
    return Path(corpus["bpe_model"]).parent / "tokens.txt"


def _export(tmp: Path, checkpoint: Path, corpus, *extra: str):
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / checkpoint.name).symlink_to(checkpoint)
    epoch = checkpoint.stem.split("-")[1]
    return export_main("unused", False, ["--epoch", epoch, "--avg", "1",
                                         "--use-averaged-model", "0", "--exp-dir", str(tmp),
                                         "--tokens", str(_tokens(corpus)), *model_flags(),
                                         *STREAM_FLAGS, *extra])


@pytest.fixture(scope="module")
def base_files(streaming_corpus, causal_run, tmp_path_factory):
    return _export(tmp_path_factory.mktemp("stream_onnx"), causal_run / "epoch-6.pt",
                   streaming_corpus)


@pytest.fixture(scope="module")
def adapter_files(streaming_corpus, causal_adapter_run, tmp_path_factory):
    return _export(tmp_path_factory.mktemp("stream_onnx_adapters"),
                   causal_adapter_run / "epoch-2.pt", streaming_corpus,
                   "--use-adapters", "1", "--adapter-dim", "8", "--int8", "0")


def _model(exp: Path, epoch: int, **extra):
    return load_model({**TRAIN_MODEL, "exp_dir": exp, "epoch": epoch, "iter": 0, "avg": 1,
                       "use_averaged_model": False, "trust_checkpoint": False,
                       "vocab_size": 37, "blank_id": 0, "use_adapters": False,
                       "causal": True, "chunk_size": "8", "left_context_frames": "32",
                       **extra})


def _io(path: Path) -> tuple[list, list, dict]:
    m = onnx.load(str(path))

    def dims(v):
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    return ([(v.name, dims(v)) for v in m.graph.input],
            [(v.name, dims(v)) for v in m.graph.output],
            {p.key: p.value for p in m.metadata_props})


# ---------------------------------------------------------------------------
# Layout
# ---------------------------------------------------------------------------


def test_files_inputs_and_metadata_are_sherpa_onnxs(streaming_corpus, base_files):
    files = base_files
    assert files.encoder.name == f"encoder-{TAG}.onnx"
    assert files.encoder_int8.name == f"encoder-{TAG}.int8.onnx"
    assert files.decoder.name == f"decoder-{TAG}.onnx" and files.joiner.name == f"joiner-{TAG}.onnx"
    assert (files.encoder.parent / "tokens.txt").read_text() == \
        _tokens(streaming_corpus).read_text()
    ins, outs, meta = _io(files.encoder)
    # TRAIN_MODEL: two stacks of one layer (64 channels, 2 heads, kernel 15), ds 1 and 2
    layer = lambda i, L: [  # noqa: E731
        (f"cached_key_{i}", [L, "N", 32]), (f"cached_nonlin_attn_{i}", [1, "N", L, 48]),
        (f"cached_val1_{i}", [L, "N", 16]), (f"cached_val2_{i}", [L, "N", 16]),
        (f"cached_conv1_{i}", ["N", 64, 7]), (f"cached_conv2_{i}", ["N", 64, 7])]
    states = [*layer(0, 32), *layer(1, 16), ("embed_states", ["N", 128, 3, 19]),
              ("processed_lens", ["N"])]
    assert ins == [("x", ["N", 29, 80]), *states]
    assert [n for n, _ in outs] == ["encoder_out", *(f"new_{n}" for n, _ in states)]
    assert outs[0][1][0] == "N" and outs[0][1][2] == 64  # (N, chunk / 2, joiner_dim)
    assert {k: meta[k] for k in ("model_type", "version", "decode_chunk_len", "T",
                                 "num_encoder_layers", "encoder_dims", "cnn_module_kernels",
                                 "left_context_len", "query_head_dims", "value_head_dims",
                                 "num_heads")} == {
        "model_type": "zipformer2", "version": "1", "decode_chunk_len": "16", "T": "29",
        "num_encoder_layers": "1,1", "encoder_dims": "64,64", "cnn_module_kernels": "15,15",
        "left_context_len": "32,16", "query_head_dims": "16,16", "value_head_dims": "8,8",
        "num_heads": "2,2"}
    assert meta["comment"].startswith("streaming zipformer2") and meta["adapters"] == "none"
    m = onnx.load(str(files.encoder))
    assert m.graph.input[-1].type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert _io(files.decoder)[2]["context_size"] == "2" and _io(files.joiner)[2]["joiner_dim"]
    assert files.encoder_int8.stat().st_size < 0.7 * files.encoder.stat().st_size
    # ONNX Runtime reads the state layout from the metadata, as sherpa-onnx does, and
    # checks it against the graph
    model = ost.OnnxStreamingTransducer(files.encoder, files.decoder, files.joiner)
    assert [s.shape for s in model.init_states(3)] == [
        tuple(3 if d == "N" else d for d in dims) for _, dims in states]


# ---------------------------------------------------------------------------
# ONNX == PyTorch, chunk by chunk
# ---------------------------------------------------------------------------


def _assert_streams_match(model, encoder: Path, steps: int = 6) -> None:
    """Three streams starting at chunks 0, 1 and 3 (so the batch mixes processed lengths
    and therefore left-context masks) run through the ONNX encoder and PyTorch's
    streaming_forward; outputs and every state agree after every chunk."""
    sess = ort.InferenceSession(str(encoder), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()][1:]
    rng = np.random.default_rng(0)
    torch_states, onnx_states = {}, {}
    for step in range(steps):
        active = [s for s, start in enumerate((0, 1, 3)) if step >= start]
        for s in active:
            if s not in torch_states:
                torch_states[s] = get_init_states(model, 1)
                onnx_states[s] = [t.numpy() for t in torch_states[s]]
                onnx_states[s][-1] = onnx_states[s][-1].astype(np.int64)
        x = rng.standard_normal((len(active), 29, 80)).astype(np.float32)
        with torch.no_grad():
            out, _, new = streaming_forward(
                torch.from_numpy(x), torch.full((len(active),), 29), model,
                stack_states([torch_states[s] for s in active]), 8, 32)
            ref = model.joiner.encoder_proj(out).numpy()
        n = len(names)
        batch = [np.concatenate([onnx_states[s][i] for s in active], axis=state_batch_dim(i, n))
                 for i in range(n)]
        got = sess.run(None, {"x": x, **dict(zip(names, batch))})
        np.testing.assert_allclose(got[0], ref, atol=2e-4, rtol=0)
        for i, (a, b) in enumerate(zip(got[1:], new)):
            np.testing.assert_allclose(a, b.numpy(), atol=2e-4, rtol=0, err_msg=names[i])
        for k, (s, st) in enumerate(zip(active, unstack_states(new))):  # back into streams
            torch_states[s] = st
            onnx_states[s] = [np.take(a, [k], axis=state_batch_dim(i, n))
                              for i, a in enumerate(got[1:])]


def test_onnx_encoder_streams_as_pytorch(causal_run, base_files, causal_adapter_run,
                                         adapter_files):
    _assert_streams_match(_model(causal_run, 6), base_files.encoder)
    adapted = _model(causal_adapter_run, 2, use_adapters=True, adapter_dim=8)
    _assert_streams_match(adapted, adapter_files.encoder)
    assert _io(adapter_files.encoder)[2]["adapters"] == "8 residual adapters, dim 8"


# ---------------------------------------------------------------------------
# sherpa-onnx, onnx_pretrained-streaming.py and streaming_decode.py on the same audio
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def audio_set(streaming_corpus, tmp_path_factory):
    """Five domain-A valid utterances rendered as 16 kHz sound files, and a manifest of
    them (recordings only: features are computed from the audio)."""
    out = tmp_path_factory.mktemp("stream_audio")
    cuts = CutSet.from_file(streaming_corpus["manifest_dir"] / "doma_cuts_valid.jsonl.gz")
    wavs, new_cuts = [], []
    for i, cut in enumerate(list(cuts)[:5]):
        feats = cut.load_features()
        feats = feats[(feats > -20).all(axis=1)]  # without the corpus's quiet tail
        path = out / f"{cut.id}.wav"
        sf.write(path, speech_from_features(feats, seed=i), 16000)
        rec = Recording.from_file(path)
        sup = SupervisionSegment(id=cut.id, recording_id=rec.id, start=0.0,
                                 duration=rec.duration, text=cut.supervisions[0].text)
        new_cuts.append(MonoCut(id=cut.id, start=0.0, duration=rec.duration, channel=0,
                                recording=rec, supervisions=[sup]))
        wavs.append(path)
    save_cuts(CutSet.from_cuts(new_cuts), out / "wav_cuts_test.jsonl.gz")
    return out, wavs, {c.id: c.supervisions[0].text for c in new_cuts}


def _sherpa(files, tokens: Path, wav: Path, encoder=None) -> str:
    import sherpa_onnx

    recognizer = sherpa_onnx.OnlineRecognizer.from_transducer(
        str(tokens), str(encoder or files.encoder), str(files.decoder), str(files.joiner),
        num_threads=1, decoding_method="greedy_search")
    wave, sr = sf.read(wav, dtype="float32")
    stream = recognizer.create_stream()
    stream.accept_waveform(sr, wave)
    stream.accept_waveform(sr, np.zeros(int(0.66 * sr), dtype=np.float32))
    stream.input_finished()
    while recognizer.is_ready(stream):
        recognizer.decode_stream(stream)
    return recognizer.get_result(stream)


def test_sherpa_onnx_onnx_pretrained_streaming_and_streaming_decode_agree(
        streaming_corpus, causal_run, base_files, audio_set, tmp_path):
    pytest.importorskip("sherpa_onnx")
    pytest.importorskip("kaldi_native_fbank")
    corpus, files = streaming_corpus, base_files
    folder, wavs, refs = audio_set
    tokens = _tokens(corpus)
    sherpa = {w.stem: _sherpa(files, tokens, w) for w in wavs}
    # onnx_pretrained-streaming.py computes what sherpa-onnx computes, fp32 and int8
    for kind in ("fp32", "int8"):
        names = (("encoder", "decoder", "joiner") if kind == "fp32" else
                 ("encoder_int8", "decoder_int8", "joiner_int8"))
        enc, dec, join = (getattr(files, n) for n in names)
        proc = run_script("zipformer", "onnx_pretrained-streaming.py", [
            "--encoder-model-filename", str(enc), "--decoder-model-filename", str(dec),
            "--joiner-model-filename", str(join), "--tokens", str(tokens),
            *(str(w) for w in wavs)])
        assert proc.returncode == 0, proc.stderr
        texts = dict(line.split(": ", 1) for line in proc.stdout.strip().splitlines())
        got = {Path(p).stem: t for p, t in texts.items()}
        if kind == "fp32":
            assert got == sherpa, kind
            continue
        # int8: sherpa-onnx bundles its own ONNX Runtime (1.28 beside the Python package's
        # 1.32 here), whose integer kernels differ by version and CPU (VNNI or not): the
        # same int8 files agree to within one word per utterance, not exactly.
        want = {w.stem: _sherpa(files, tokens, w, enc) for w in wavs}
        assert got.keys() == want.keys()
        edits = {k: kaldialign.edit_distance(want[k].split(), got[k].split())["total"]
                 for k in want}
        assert max(edits.values()) <= 1, (edits, got, want)
    # streaming_decode.py on the same audio (features computed from it, lhotse's fbank)
    args = decode_args(corpus, causal_run, 6, *STREAM_FLAGS, sets="W=wav_cuts_test.jsonl.gz")
    args += ["--manifest-dir", str(folder), "--on-the-fly-feats", "1",
             "--res-dir", str(tmp_path)]
    streaming_decode_main(BASE.decode, args)
    recogs = next(tmp_path.glob("recogs-W-*.txt"))
    torch_words = {cut_id: " ".join(hyp) for cut_id, _, hyp in read_transcripts(recogs)}
    assert torch_words == sherpa
    # ... and the texts are the model hearing words (rendered audio is not the features
    # it was trained on: about half the words come through), not noise
    errors = sum(_edit_distance(refs[k].split(), v.split()) for k, v in sherpa.items())
    assert errors <= 0.6 * sum(len(r.split()) for r in refs.values()), (sherpa, refs)
    assert len(set(sherpa.values())) == len(wavs) and sum(
        len(t.split()) for t in sherpa.values()) >= 5 * len(wavs)


def _edit_distance(a: list[str], b: list[str]) -> int:
    import kaldialign

    return kaldialign.edit_distance(a, b)["total"]


def test_onnx_streaming_module_needs_no_torch():
    code = ("import sys, icefall.decode.onnx_streaming, icefall.cli.onnx; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("flags, message", [
    (["--causal", "1", "--chunk-size", "8,16", "--left-context-frames", "32"],
     "one --chunk-size"),
    (["--use-adapters", "0"], "causal model"),
    (["--epoch", "7", *STREAM_FLAGS], "epoch-7.pt"),
])
def test_bad_export_input_is_one_clear_line(streaming_corpus, causal_run, capsys, flags,
                                            message):
    with pytest.raises(SystemExit) as exc:
        export_main("unused", False, [
            "--epoch", "6", "--avg", "1", "--use-averaged-model", "0", "--exp-dir",
            str(causal_run), "--tokens", str(_tokens(streaming_corpus)), *model_flags(),
            *flags])
    assert exc.value.code == 1
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "error:" in err[0] and message in err[0], err
    assert not list(causal_run.glob("*.onnx"))


def test_bad_onnx_input_is_one_clear_line(streaming_corpus, base_files, tmp_path):
    # an offline export is not a streaming one
    offline = tmp_path / "encoder-offline.onnx"
    offline.write_bytes(b"")
    models = ["--decoder-model-filename", str(base_files.decoder), "--joiner-model-filename",
              str(base_files.joiner), "--tokens", str(_tokens(streaming_corpus))]
    wav = tmp_path / "a.wav"
    sf.write(wav, np.random.default_rng(0).standard_normal(8000).astype(np.float32) * 0.1,
             16000)
    line = one_error_line(run_script("zipformer", "onnx_pretrained-streaming.py", [
        "--encoder-model-filename", str(offline), *models, str(wav)]))
    assert "encoder-offline.onnx" in line
    line = one_error_line(run_script("zipformer", "onnx_pretrained-streaming.py", [
        "--encoder-model-filename", str(base_files.decoder), *models, str(wav)]))
    assert "model_type" in line or "metadata" in line
