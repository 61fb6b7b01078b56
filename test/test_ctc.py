"""CTC decoding (ctc_decode.py: ctc-greedy-search, ctc-prefix-beam-search) and the CTC
ONNX export (export-onnx-ctc.py) for --use-ctc 1 models.

Oracles: a naive best-path collapse, a float64 brute force over every alignment, WERs
recomputed from the written transcripts with kaldialign, and the PyTorch model's
log-probabilities for the ONNX model's.
"""

from __future__ import annotations

import itertools
import math

import kaldialign
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from lhotse import CutSet
from runs import BASE, model_flags, train_args
from test_export import _linked_exp, _sound, _tokens

from icefall.cli.decode import ctc_main
from icefall.cli.export import ctc_onnx_main
from icefall.cli.train import main as train_main
from icefall.decode import onnx_runtime as rt
from icefall.decode.ctc import ctc_greedy_search, ctc_prefix_beam_search
from icefall.decode.report import read_transcripts, read_wer_summary
from icefall.inference import load_model


def _log_probs(N: int, T: int, V: int, sharp: float = 2.0) -> torch.Tensor:
    return (sharp * torch.randn(N, T, V, dtype=torch.float64)).log_softmax(-1)


def test_greedy_search_is_the_collapsed_best_path():
    lp = _log_probs(4, 12, 5)
    lens = torch.tensor([12, 7, 1, 10])
    expected = []
    for n, length in enumerate(lens.tolist()):
        path = lp[n, :length].argmax(-1).tolist()
        collapsed = [s for i, s in enumerate(path) if i == 0 or s != path[i - 1]]
        expected.append([s for s in collapsed if s != 0])
    assert ctc_greedy_search(lp, lens) == expected
    assert any(expected)


def _brute_force(lp: torch.Tensor, blank: int = 0) -> dict[tuple[int, ...], float]:
    """log p(labels) of every label sequence, summed over all V^T alignments."""
    T, V = lp.shape
    totals: dict[tuple[int, ...], float] = {}
    for path in itertools.product(range(V), repeat=T):
        collapsed = [s for i, s in enumerate(path) if i == 0 or s != path[i - 1]]
        key = tuple(s for s in collapsed if s != blank)
        score = float(sum(lp[t, s] for t, s in enumerate(path)))
        old = totals.get(key, -math.inf)
        totals[key] = max(old, score) + math.log1p(math.exp(-abs(old - score)))
    return totals


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_prefix_beam_search_with_a_full_beam_finds_the_most_probable_labels(seed):
    torch.manual_seed(seed)
    lp = _log_probs(2, 6, 3, sharp=1.0)
    lens = torch.tensor([6, 4])
    hyps, scores = ctc_prefix_beam_search(lp, lens, beam=3 ** 6, return_scores=True)
    for n, length in enumerate(lens.tolist()):
        totals = _brute_force(lp[n, :length])
        best = max(totals, key=totals.get)
        assert tuple(hyps[n]) == best
        assert abs(scores[n] - totals[best]) < 1e-9
    # A small beam still returns a label sequence with a true probability no higher.
    small, small_scores = ctc_prefix_beam_search(lp, lens, beam=2, return_scores=True)
    for n, length in enumerate(lens.tolist()):
        totals = _brute_force(lp[n, :length])
        best_total = max(totals.values())
        assert small_scores[n] <= totals[tuple(small[n])] + 1e-9 <= best_total + 1e-9


def test_prefix_beam_search_merges_repeats_and_separates_them_across_blanks():
    """a a -> 'a'; a blank a -> 'a a': one-hot frames leave no doubt."""
    def one_hot(path):
        lp = torch.full((1, len(path), 3), -50.0, dtype=torch.float64)
        for t, s in enumerate(path):
            lp[0, t, s] = 0.0
        return lp.log_softmax(-1)

    lens = torch.tensor([3])
    assert ctc_prefix_beam_search(one_hot([1, 1, 2]), lens) == [[1, 2]]
    assert ctc_prefix_beam_search(one_hot([1, 0, 1]), lens) == [[1, 1]]
    assert ctc_greedy_search(one_hot([1, 0, 1]), lens) == [[1, 1]]


# ----------------------------------------------------------------------------- recipes


@pytest.fixture(scope="module")
def ctc_run(corpus, base_run, tmp_path_factory):
    """A transducer+CTC model: base_run's epoch-8.pt with a CTC head trained briefly on
    domain A's valid set (which the tests decode: the head learns it quickly)."""
    exp = tmp_path_factory.mktemp("ctc")
    modules = "encoder_embed,encoder,decoder,joiner,simple_am_proj,simple_lm_proj"
    train_main(BASE.train, train_args(
        corpus, exp, "a", 6, "--use-ctc", "1", "--do-finetune", "1", "--finetune-ckpt",
        str(base_run / "epoch-8.pt"), "--init-modules", modules, "--train-cuts",
        "doma_cuts_valid.jsonl.gz", "--drop-last", "0", "--ctc-loss-scale", "1.0",
        "--base-lr", "0.04"))
    return exp


def _valid(corpus) -> tuple[np.ndarray, np.ndarray]:
    cuts = CutSet.from_file(corpus["manifest_dir"] / "doma_cuts_valid.jsonl.gz")
    return rt.pad_features([c.load_features() for c in cuts])


@pytest.mark.parametrize("method, key", [("ctc-greedy-search", "ctc-greedy-search"),
                                         ("ctc-prefix-beam-search", "prefix-beam-search")])
def test_ctc_decode_writes_decode_pys_reports(corpus, ctc_run, tmp_path, method, key):
    wers = ctc_main(BASE.decode, [
        "--epoch", "6", "--avg", "1", "--use-averaged-model", "0", "--exp-dir", str(ctc_run),
        "--bpe-model", str(corpus["bpe_model"]), "--manifest-dir", str(corpus["manifest_dir"]),
        "--test-sets", "A=doma_cuts_valid.jsonl.gz", "--num-workers", "0",
        "--max-duration", "30", "--decoding-method", method, "--res-dir", str(tmp_path),
        *model_flags()])
    suffix = "epoch-6-avg-1" + ("-beam-4" if "prefix" in method else "")
    recogs = read_transcripts(tmp_path / f"recogs-A-{key}-{suffix}.txt")
    assert len(recogs) == 16
    errors = sum(kaldialign.edit_distance(ref, hyp)["total"] for _, ref, hyp in recogs)
    words = sum(len(ref) for _, ref, _ in recogs)
    wer = round(100 * errors / words, 2)
    assert read_wer_summary(tmp_path / f"wer-summary-A-{key}-{suffix}.txt") == [(key, wer)]
    assert wers["A"] == [(key, wer)] and wer < 60  # the head has learnt these
    assert (tmp_path / f"errs-A-{key}-{suffix}.txt").read_text().startswith(f"%WER = {wer:.2f}")


def test_ctc_decode_of_a_model_without_a_ctc_head_is_one_clear_error(corpus, base_run,
                                                                      capsys):
    with pytest.raises(SystemExit):
        ctc_main(BASE.decode, ["--epoch", "8", "--avg", "1", "--use-averaged-model", "0",
                               "--exp-dir", str(base_run), "--bpe-model",
                               str(corpus["bpe_model"]), "--manifest-dir",
                               str(corpus["manifest_dir"]), "--test-sets",
                               "A=doma_cuts_valid.jsonl.gz", *model_flags()])
    assert "missing key 'ctc_output" in capsys.readouterr().err


def test_ctc_onnx_export_computes_the_models_log_probs(corpus, ctc_run, tmp_path):
    exp = _linked_exp(tmp_path / "exp", ctc_run / "epoch-6.pt")
    path, int8 = ctc_onnx_main("unused", [
        "--epoch", "6", "--avg", "1", "--use-averaged-model", "0", "--exp-dir", str(exp),
        "--tokens", str(_tokens(corpus)), *model_flags()])
    assert (path.name, int8.name) == ("model.onnx", "model.int8.onnx")
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["model_type"] == "zipformer2_ctc"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["x", "x_lens"]
    x, x_lens = _valid(corpus)
    log_probs, lens = session.run(["log_probs", "log_probs_len"], {"x": x, "x_lens": x_lens})
    model = load_model({**_ctc_params(exp)})
    with torch.no_grad():
        enc, ref_lens = model.forward_encoder(torch.from_numpy(x), torch.from_numpy(x_lens))
        ref = model.ctc_output(enc)
    assert np.array_equal(lens, ref_lens.numpy())
    for n, m in enumerate(lens.tolist()):
        np.testing.assert_allclose(log_probs[n, :m], ref[n, :m].numpy(), atol=1e-3, rtol=0)
    hyps = ctc_greedy_search(torch.from_numpy(log_probs), torch.from_numpy(lens))
    assert hyps == ctc_greedy_search(ref, ref_lens) and any(hyps)


def _ctc_params(exp) -> dict:
    from conftest import TRAIN_MODEL

    return {**TRAIN_MODEL, "exp_dir": exp, "epoch": 6, "iter": 0, "avg": 1,
            "use_averaged_model": False, "trust_checkpoint": False, "vocab_size": 37,
            "blank_id": 0, "use_adapters": False, "use_ctc": True}


def test_sherpa_onnx_decodes_the_ctc_export_as_onnx_runtime_does(corpus, ctc_run, tmp_path):
    pytest.importorskip("kaldi_native_fbank")
    sherpa_onnx = pytest.importorskip("sherpa_onnx")
    exp = _linked_exp(tmp_path / "exp", ctc_run / "epoch-6.pt")
    path, _ = ctc_onnx_main("unused", [
        "--epoch", "6", "--avg", "1", "--use-averaged-model", "0", "--exp-dir", str(exp),
        "--tokens", str(_tokens(corpus)), *model_flags()])
    tokens = rt.read_token_table(_tokens(corpus))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    recognizer = sherpa_onnx.OfflineRecognizer.from_zipformer_ctc(str(path),
                                                                  str(exp / "tokens.txt"))
    for seed in range(3):
        wave = _sound(tmp_path / f"{seed}.wav", seconds=2.0, seed=seed)
        x, x_lens = rt.pad_features([rt.compute_features(wave, 16000)])
        log_probs, lens = session.run(None, {"x": x, "x_lens": x_lens})
        hyp = ctc_greedy_search(torch.from_numpy(log_probs), torch.from_numpy(lens))[0]
        stream = recognizer.create_stream()
        stream.accept_waveform(16000, wave)
        recognizer.decode_stream(stream)
        assert stream.result.text == rt.tokens_to_text(hyp, tokens)
