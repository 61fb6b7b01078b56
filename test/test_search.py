"""Transducer search on a small random Decoder + Joiner, checked against independent oracles.

Dimension legend: N = utterances, T = frames, C = encoder dim, V = vocab size, K = context size.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from icefall.decode.search import (
    DecodingResults,
    beam_search,
    decode_batch,
    decoding_key,
    fast_beam_search_one_best,
    greedy_search,
    greedy_search_batch,
    k2_available,
    modified_beam_search,
)
from icefall.zipformer.decoder import Decoder
from icefall.zipformer.joiner import Joiner

C = 8


class TinyTransducer(nn.Module):
    """Decoder + joiner with sharpened outputs (random init alone is nearly uniform) and a
    blank bias, so that about 40% of the frames emit a symbol."""

    def __init__(self, vocab_size: int, context_size: int, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.decoder = Decoder(vocab_size, 16, blank_id=0, context_size=context_size)
        self.joiner = Joiner(C, 16, 24, vocab_size)
        with torch.no_grad():
            self.joiner.output_linear.weight.mul_(4.0)
            self.decoder.embedding.weight.mul_(2.0)
            self.joiner.output_linear.bias[0] += 1.0
        self.eval()


def _batch(N: int, T: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = 2.0 * torch.randn(N, T, C, generator=g)
    lens = torch.randint(1, T + 1, (N,), generator=g)
    lens[0] = T
    return x, lens


# ---------------------------------------------------------------------------
# Independent scorers used as oracles
# ---------------------------------------------------------------------------


def _frame_log_probs(model: TinyTransducer, frame: torch.Tensor, context: tuple[int, ...]):
    """(V,) log-probabilities on one frame after ``context`` (the last K ids)."""
    # The padded convolution path, not the search's one-step tables.
    dec = model.decoder(torch.tensor([context]), need_pad=True)[:, -1:]  # (1, 1, D)
    logits = model.joiner(frame.view(1, 1, C), dec, project_input=True)  # (1, 1, V)
    return logits[0, 0].log_softmax(-1)


@torch.no_grad()
def one_symbol_per_frame_scores(model: TinyTransducer, enc: torch.Tensor) -> dict:
    """Enumerates all V^T alignments with at most one symbol per frame (modified beam
    search's topology) and returns label sequence -> total log-probability."""
    V, K = model.decoder.vocab_size, model.decoder.context_size
    cache: dict = {}
    per_seq: dict = {}
    for ali in itertools.product(range(V), repeat=enc.size(0)):
        ys, lp = [-1] * (K - 1) + [0], 0.0
        for t, a in enumerate(ali):
            key = (t, tuple(ys[-K:]))
            if key not in cache:
                cache[key] = _frame_log_probs(model, enc[t], key[1])
            lp += float(cache[key][a])
            if a != 0:
                ys.append(a)
        per_seq.setdefault(tuple(ys[K:]), []).append(lp)
    return {seq: float(torch.tensor(lps, dtype=torch.float64).logsumexp(0))
            for seq, lps in per_seq.items()}


@torch.no_grad()
def rnnt_log_likelihood(model: TinyTransducer, enc: torch.Tensor, y: list[int]) -> float:
    """log P(y | enc) summed over all RNN-T alignments (any number of symbols per frame),
    using the decoder's padded whole-sequence path rather than the search's contexts."""
    T, U = enc.size(0), len(y)
    dec = model.decoder(torch.tensor([[0] + y]), need_pad=True)  # (1, U+1, D)
    logits = model.joiner(enc.view(1, T, 1, C), dec.view(1, 1, U + 1, -1))  # (1, T, U+1, V)
    lp = logits[0].double().log_softmax(-1)
    alpha = torch.full((T, U + 1), -math.inf, dtype=torch.float64)
    for t in range(T):
        for u in range(U + 1):
            if t == 0 and u == 0:
                alpha[t, u] = 0.0
                continue
            a = alpha[t - 1, u] + lp[t - 1, u, 0] if t > 0 else torch.tensor(-math.inf)
            b = alpha[t, u - 1] + lp[t, u - 1, y[u - 1]] if u > 0 else torch.tensor(-math.inf)
            alpha[t, u] = torch.logaddexp(a, b)
    return float(alpha[T - 1, U] + lp[T - 1, U, 0])


# ---------------------------------------------------------------------------
# Greedy search
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("context_size", [1, 2])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_batch_equals_modified_beam_search_with_beam_one(context_size, seed):
    model = TinyTransducer(vocab_size=7, context_size=context_size, seed=seed)
    x, lens = _batch(N=6, T=12, seed=seed)
    greedy = greedy_search_batch(model, x, lens)
    assert greedy == modified_beam_search(model, x, lens, beam=1)
    assert sum(len(h) for h in greedy) > 0  # the model does emit symbols
    penalised = greedy_search_batch(model, x, lens, blank_penalty=1.5)
    assert penalised == modified_beam_search(model, x, lens, beam=1, blank_penalty=1.5)
    assert sum(map(len, penalised)) > sum(map(len, greedy))


@pytest.mark.parametrize("max_sym_per_frame", [1, 3])
def test_greedy_batch_equals_per_utterance_greedy(max_sym_per_frame):
    model = TinyTransducer(vocab_size=7, context_size=2, seed=3)
    x, lens = _batch(N=7, T=10, seed=3)
    batched = greedy_search_batch(model, x, lens, max_sym_per_frame=max_sym_per_frame,
                                  return_timestamps=True)
    for n in range(7):
        one = greedy_search(model, x[n:n + 1, :lens[n]], max_sym_per_frame=max_sym_per_frame,
                            return_timestamps=True)
        assert batched.hyps[n] == one.hyps[0]
        assert batched.timestamps[n] == one.timestamps[0]
        assert batched.scores[n] == pytest.approx(one.scores[0], abs=1e-5)
    # batch composition and order do not change results
    perm = torch.tensor([4, 0, 6, 2, 1, 5, 3])
    shuffled = greedy_search_batch(model, x[perm], lens[perm], max_sym_per_frame=max_sym_per_frame)
    assert shuffled == [batched.hyps[i] for i in perm.tolist()]
    if max_sym_per_frame > 1:  # some frame really emits several symbols
        assert any(len(set(ts)) < len(ts) for ts in batched.timestamps)


def test_greedy_timestamps_and_scores_are_consistent():
    model = TinyTransducer(vocab_size=6, context_size=2, seed=4)
    x, lens = _batch(N=5, T=9, seed=4)
    res = greedy_search_batch(model, x, lens, return_timestamps=True)
    assert isinstance(res, DecodingResults)
    for hyp, ts, sc, n in zip(res.hyps, res.timestamps, res.scores, lens.tolist()):
        assert len(hyp) == len(ts) == len(sc)
        assert ts == sorted(set(ts)) and all(0 <= t < n for t in ts)
        assert all(-math.log(6) * 3 < s < 0 for s in sc)


def test_huge_blank_penalty_emits_on_every_frame():
    model = TinyTransducer(vocab_size=5, context_size=2, seed=5)
    x, lens = _batch(N=4, T=6, seed=5)
    hyps = greedy_search_batch(model, x, lens, blank_penalty=1e4)
    assert [len(h) for h in hyps] == lens.tolist()
    hyps2 = greedy_search_batch(model, x, lens, blank_penalty=1e4, max_sym_per_frame=2)
    assert [len(h) for h in hyps2] == (2 * lens).tolist()


def test_unk_is_never_emitted():
    model = TinyTransducer(vocab_size=5, context_size=2, seed=6)
    x, lens = _batch(N=6, T=10, seed=6)
    plain = greedy_search_batch(model, x, lens, blank_penalty=2.0)
    unk = max({tok for h in plain for tok in h}, key=lambda v: sum(h.count(v) for h in plain))
    model.unk_id = unk
    for hyps in (greedy_search_batch(model, x, lens, blank_penalty=2.0),
                 modified_beam_search(model, x, lens, beam=3, blank_penalty=2.0),
                 [greedy_search(model, x[n:n + 1, :lens[n]], 2, 2.0) for n in range(6)]):
        assert all(unk not in h for h in hyps)
    assert greedy_search_batch(model, x, lens, blank_penalty=2.0) == modified_beam_search(
        model, x, lens, beam=1, blank_penalty=2.0)


# ---------------------------------------------------------------------------
# Modified beam search
# ---------------------------------------------------------------------------


def test_modified_beam_search_finds_the_exhaustive_argmax():
    """With a beam wider than all candidates nothing is pruned, so merged hypotheses carry
    exact total probabilities: the result must be the argmax over all label sequences."""
    model = TinyTransducer(vocab_size=3, context_size=2, seed=21)
    x, lens = _batch(N=12, T=4, seed=21)
    by_total = modified_beam_search(model, x, lens, beam=128, length_norm=False)
    by_norm = modified_beam_search(model, x, lens, beam=128, length_norm=True)
    greedy = greedy_search_batch(model, x, lens)
    greedy_is_wrong = norm_matters = 0
    for n in range(12):
        scores = one_symbol_per_frame_scores(model, x[n, :lens[n]])
        assert len(scores) == sum(2 ** k for k in range(int(lens[n]) + 1))
        best = max(scores, key=scores.get)
        assert by_total[n] == list(best)
        # icefall normalises by len(ys), which counts the K = 2 context slots
        best_norm = max(scores, key=lambda s: scores[s] / (2 + len(s)))
        assert by_norm[n] == list(best_norm)
        greedy_is_wrong += greedy[n] != list(best)
        norm_matters += best_norm != max(scores, key=lambda s: scores[s] / (1 + len(s)))
    assert greedy_is_wrong > 0  # the oracle is not just greedy search
    assert norm_matters > 0  # and the normaliser's constant is really tested


def test_modified_beam_search_is_independent_of_batch_composition():
    model = TinyTransducer(vocab_size=7, context_size=2, seed=8)
    x, lens = _batch(N=6, T=11, seed=8)
    batched = modified_beam_search(model, x, lens, beam=4, return_timestamps=True)
    for n in range(6):
        alone = modified_beam_search(model, x[n:n + 1, :lens[n]], lens[n:n + 1], beam=4)
        assert batched.hyps[n] == alone[0]
        ts = batched.timestamps[n]
        assert len(ts) == len(batched.hyps[n])
        assert ts == sorted(set(ts)) and all(0 <= t < int(lens[n]) for t in ts)
    assert batched.hyps != greedy_search_batch(model, x, lens)  # the beam matters here


# ---------------------------------------------------------------------------
# Standard beam search
# ---------------------------------------------------------------------------


def test_beam_search_scores_no_worse_than_greedy():
    model = TinyTransducer(vocab_size=5, context_size=2, seed=9)
    x, lens = _batch(N=8, T=6, seed=9)
    better = 0
    for n in range(8):
        enc = x[n, :lens[n]]
        hyp = beam_search(model, enc[None], beam=4, length_norm=False)
        beam_score = rnnt_log_likelihood(model, enc, hyp)
        for max_sym in (1, 3):
            greedy = greedy_search(model, enc[None], max_sym_per_frame=max_sym)
            greedy_score = rnnt_log_likelihood(model, enc, greedy)
            assert beam_score >= greedy_score - 1e-6
            better += beam_score > greedy_score + 1e-6
    assert better > 0  # beam search does find better sequences on this model


def test_beam_search_with_timestamps_and_length_norm():
    model = TinyTransducer(vocab_size=5, context_size=2, seed=10)
    x, _ = _batch(N=1, T=6, seed=10)
    res = beam_search(model, x, beam=3, return_timestamps=True)
    assert isinstance(res, DecodingResults)
    assert len(res.hyps[0]) == len(res.timestamps[0])
    assert res.timestamps[0] == sorted(res.timestamps[0])
    assert res.hyps[0] == beam_search(model, x, beam=3)


# ---------------------------------------------------------------------------
# Dispatch and bad input
# ---------------------------------------------------------------------------


def test_decode_batch_dispatches_by_method_name():
    model = TinyTransducer(vocab_size=6, context_size=2, seed=11)
    x, lens = _batch(N=3, T=5, seed=11)
    assert decode_batch(model, x, lens, "greedy_search") == greedy_search_batch(model, x, lens)
    assert decode_batch(model, x, lens, "modified_beam_search", beam_size=3) == \
        modified_beam_search(model, x, lens, beam=3)
    assert decode_batch(model, x, lens, "beam_search", beam_size=2) == \
        [beam_search(model, x[n:n + 1, :lens[n]], beam=2) for n in range(3)]
    assert decoding_key("greedy_search") == "greedy_search"
    assert decoding_key("modified_beam_search", beam_size=4) == "beam_size_4"
    assert decoding_key("fast_beam_search", beam=20.0, max_contexts=8, max_states=64) == \
        "beam_20.0_max_contexts_8_max_states_64"
    with pytest.raises(ValueError, match="unknown decoding method 'viterbi'"):
        decode_batch(model, x, lens, "viterbi")


def test_bad_input_raises_clear_errors():
    model = TinyTransducer(vocab_size=5, context_size=2, seed=12)
    x, lens = _batch(N=3, T=5, seed=12)
    with pytest.raises(ValueError, match="longer than encoder_out"):
        greedy_search_batch(model, x, torch.tensor([5, 6, 2]))
    with pytest.raises(ValueError, match="longer than encoder_out"):
        modified_beam_search(model, x, torch.tensor([5, 9, 2]))
    with pytest.raises(ValueError, match="must be positive"):
        modified_beam_search(model, x, torch.tensor([5, 0, 2]))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        greedy_search_batch(model, x, torch.tensor([5, 2]))
    with pytest.raises(ValueError, match=r"\(N, T, C\)"):
        greedy_search_batch(model, x[0], lens)
    with pytest.raises(ValueError, match="one utterance"):
        greedy_search(model, x, max_sym_per_frame=1)
    with pytest.raises(ValueError, match="one utterance"):
        beam_search(model, x)
    with pytest.raises(ValueError, match="beam must be a positive integer"):
        modified_beam_search(model, x, lens, beam=0)
    with pytest.raises(ValueError, match="max_sym_per_frame"):
        greedy_search(model, x[:1], max_sym_per_frame=0)


@pytest.mark.skipif(k2_available(), reason="k2 is installed")
def test_fast_beam_search_without_k2_says_what_is_missing():
    model = TinyTransducer(vocab_size=5, context_size=2, seed=13)
    x, lens = _batch(N=2, T=4, seed=13)
    with pytest.raises(ImportError, match="fast_beam_search needs k2"):
        fast_beam_search_one_best(model, None, x, lens, beam=4.0, max_states=8,
                                  max_contexts=4)
