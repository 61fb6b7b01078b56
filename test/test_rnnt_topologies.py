"""k2's rnnt_type ("regular", "modified", "constrained"), delay_penalty and use_hat_loss in
icefall.rnnt_loss, and prune ranges for utterances with few frames.

The oracle is a float64 brute force: every alignment of an utterance is enumerated and its
log-probability summed from a per-cell table, independently of the lattice recursion.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import icefall.rnnt_loss as R
from icefall.rnnt_loss import (
    do_rnnt_pruning,
    get_rnnt_logprobs,
    get_rnnt_prune_ranges,
    mutual_information_recursion,
    rnnt_loss,
    rnnt_loss_pruned,
    rnnt_loss_simple,
    rnnt_loss_smoothed,
)

BLANK = 0
TYPES = ("regular", "modified", "constrained")


@pytest.fixture(autouse=True)
def _torch_backend(monkeypatch):
    monkeypatch.setenv(R.BACKEND_ENV, "torch")


# ----------------------------------------------------------------------------- brute force


def _alignments(T: int, S: int, rnnt_type: str):
    """Every alignment as a list of moves ("y" symbol, "b" blank) in order.

    Regular: S symbols and T blanks, the last move a blank (nothing follows the last frame).
    Modified/constrained: one move per frame, S of the T frames emit a symbol.
    """
    if rnnt_type == "regular":
        for where in itertools.combinations(range(S + T - 1), S):
            moves = ["b"] * (S + T)
            for i in where:
                moves[i] = "y"
            yield moves
    else:
        for where in itertools.combinations(range(T), S):
            yield ["y" if t in where else "b" for t in range(T)]


def brute_force(logp: torch.Tensor, y: list[int], T: int, rnnt_type: str,
                delay_penalty: float = 0.0) -> torch.Tensor:
    """log p(y) by enumeration. logp: (T, S + 1, C) per-cell log-probs (t, position, symbol);
    a symbol emitted on frame t also gets ``delay_penalty * ((T - 1) / 2 - t)``."""
    S = len(y)
    totals = []
    for moves in _alignments(T, S, rnnt_type):
        t = s = 0
        score = logp.new_zeros(())
        for m in moves:
            if m == "b":
                score = score + logp[t, s, BLANK]
                t += 1
                continue
            score = score + logp[t, s, y[s]] + delay_penalty * ((T - 1) / 2 - t)
            if rnnt_type == "constrained":
                score = score + logp[t, s + 1, BLANK]
            s += 1
            if rnnt_type != "regular":
                t += 1
        totals.append(score)
    return torch.logsumexp(torch.stack(totals), 0)


def brute_losses(logp: torch.Tensor, symbols: torch.Tensor, boundary: torch.Tensor,
                 rnnt_type: str, delay_penalty: float = 0.0) -> torch.Tensor:
    """(B,) negated brute-force log-likelihoods of a (B, T, S + 1, C) table."""
    return torch.stack([
        -brute_force(logp[b], symbols[b, :int(boundary[b, 2])].tolist(), int(boundary[b, 3]),
                     rnnt_type, delay_penalty)
        for b in range(logp.shape[0])])


def make_batch(B=3, T=6, S=4, C=6):
    """am (B, T, C), lm (B, S+1, C), symbols (B, S), boundary with T_b >= S_b."""
    am = torch.randn(B, T, C, dtype=torch.float64)
    lm = torch.randn(B, S + 1, C, dtype=torch.float64)
    symbols = torch.randint(1, C, (B, S))
    lengths = [(S, T), (S - 1, T - 1), (2, 3)][:B]
    boundary = torch.tensor([[0, 0, s, t] for s, t in lengths])
    return am, lm, symbols, boundary


def joint(am, lm):
    return am[:, :, None, :] + lm[:, None, :, :]  # (B, T, S + 1, C)


def hat_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """HAT per-cell log-probs written from their definition: blank ~ Bernoulli(sigmoid(l0)),
    the rest ~ (1 - sigmoid(l0)) * softmax over the non-blank logits."""
    p_blank = torch.sigmoid(logits[..., :1])
    rest = torch.softmax(logits[..., 1:], dim=-1) * (1 - p_blank)
    return torch.cat([p_blank, rest], dim=-1).log()


# ----------------------------------------------------------------------------- full loss


@pytest.mark.parametrize("rnnt_type", TYPES)
@pytest.mark.parametrize("delay_penalty", [0.0, 0.3])
def test_full_loss_and_grad_match_brute_force(rnnt_type, delay_penalty):
    am, lm, symbols, boundary = make_batch()
    logits = (1.5 * joint(am, lm)).requires_grad_()
    loss = rnnt_loss(logits, symbols, BLANK, boundary, rnnt_type=rnnt_type,
                     delay_penalty=delay_penalty, reduction="none")
    ref = brute_losses(logits.log_softmax(-1), symbols, boundary, rnnt_type, delay_penalty)
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    weights = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
    (grad,) = torch.autograd.grad((loss * weights).sum(), logits)
    (ref_grad,) = torch.autograd.grad((ref * weights).sum(), logits)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)


def test_topologies_differ_and_delay_penalty_moves_the_loss():
    """The oracle is not trivially shared: the three topologies give three losses, and a
    penalty changes each of them."""
    am, lm, symbols, boundary = make_batch()
    logits = joint(am, lm)
    losses = {(k, d): rnnt_loss(logits, symbols, BLANK, boundary, rnnt_type=k,
                                delay_penalty=d, reduction="none")
              for k in TYPES for d in (0.0, 0.3)}
    values = torch.stack(list(losses.values()))  # (6, B)
    assert torch.cdist(values, values).add(torch.eye(6)).min() > 1e-3


def test_delay_penalty_without_boundary_uses_the_padded_length():
    am, lm, symbols, _ = make_batch(B=2)
    whole = torch.tensor([[0, 0, 4, 6]] * 2)
    for rnnt_type in TYPES:
        ours = rnnt_loss(joint(am, lm), symbols, BLANK, rnnt_type=rnnt_type, delay_penalty=0.2,
                         reduction="none")
        ref = rnnt_loss(joint(am, lm), symbols, BLANK, whole, rnnt_type=rnnt_type,
                        delay_penalty=0.2, reduction="none")
        torch.testing.assert_close(ours, ref)


# ----------------------------------------------------------------------------- simple, smoothed


@pytest.mark.parametrize("rnnt_type", TYPES)
def test_simple_loss_equals_full_loss_of_the_sum(rnnt_type):
    am, lm, symbols, boundary = make_batch()
    simple = rnnt_loss_simple(lm, am, symbols, BLANK, boundary, rnnt_type, 0.2, "none")
    full = brute_losses(joint(am, lm).log_softmax(-1), symbols, boundary, rnnt_type, 0.2)
    torch.testing.assert_close(simple, full, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rnnt_type", ["modified", "constrained"])
def test_smoothed_loss_matches_brute_force_on_the_interpolated_table(rnnt_type):
    am, lm, symbols, boundary = make_batch()
    lm_scale, am_scale = 0.25, 0.15
    combined = joint(am, lm).log_softmax(-1)
    lm_only = lm.log_softmax(-1)[:, None]
    unigram = lm.softmax(-1).mean(dim=(0, 1))
    am_only = (am + unigram.log()).log_softmax(-1)[:, :, None]
    mixed = (1 - lm_scale - am_scale) * combined + lm_scale * lm_only + am_scale * am_only
    loss = rnnt_loss_smoothed(lm, am, symbols, BLANK, lm_scale, am_scale, boundary, rnnt_type,
                              reduction="none")
    torch.testing.assert_close(loss, brute_losses(mixed, symbols, boundary, rnnt_type),
                               rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("rnnt_type", ["modified", "constrained"])
def test_modified_occupations_are_the_gradients_and_sum_to_one_per_frame(rnnt_type):
    am, lm, symbols, boundary = make_batch()
    _, (px_grad, py_grad) = rnnt_loss_smoothed(lm, am, symbols, BLANK, 0.2, 0.1, boundary,
                                               rnnt_type, reduction="sum", return_grad=True)
    px, py = R.get_rnnt_logprobs_smoothed(lm, am, symbols, BLANK, 0.2, 0.1, boundary, rnnt_type)
    assert px.shape == (3, 4, 6) and px_grad.shape == px.shape and py_grad.shape == py.shape
    px, py = px.detach().requires_grad_(), py.detach().requires_grad_()
    ref_px, ref_py = torch.autograd.grad(mutual_information_recursion(px, py, boundary).sum(),
                                         [px, py])
    torch.testing.assert_close(px_grad, ref_px)
    torch.testing.assert_close(py_grad, ref_py)
    # One move per real frame (a blank or a symbol), each real symbol emitted once.
    frame_real = (torch.arange(6)[None] < boundary[:, 3:]).double()
    symbol_real = (torch.arange(4)[None] < boundary[:, 2:3]).double()
    torch.testing.assert_close(py_grad.sum(1) + px_grad.sum(1), frame_real)
    torch.testing.assert_close(px_grad.sum(2), symbol_real)


def test_modified_recursion_with_offsets_matches_naive_and_gradcheck():
    """The modified recursion written out cell by cell, with start/end offsets."""
    B, S, T = 3, 3, 5
    px = torch.randn(B, S, T, dtype=torch.float64, requires_grad=True)
    py = torch.randn(B, S + 1, T, dtype=torch.float64, requires_grad=True)
    boundary = torch.tensor([[0, 0, 3, 5], [1, 1, 3, 4], [0, 2, 2, 5]])
    scores = mutual_information_recursion(px, py, boundary)
    for b, (s0, t0, s1, t1) in enumerate(boundary.tolist()):
        p = {(s0, t0): px.new_zeros(())}
        for t in range(t0 + 1, t1 + 1):
            for s in range(s0, s1 + 1):
                terms = [p[s, t - 1] + py[b, s, t - 1]] if (s, t - 1) in p else []
                if s > s0 and (s - 1, t - 1) in p:
                    terms.append(p[s - 1, t - 1] + px[b, s - 1, t - 1])
                if terms:
                    p[s, t] = torch.logsumexp(torch.stack(terms), 0)
        torch.testing.assert_close(scores[b], p[s1, t1])
    assert torch.autograd.gradcheck(
        lambda x, y: mutual_information_recursion(x, y, boundary), (px, py))


# ----------------------------------------------------------------------------- pruned, HAT


def _ranges_and_table(am, lm, symbols, boundary, rnnt_type, s_range, log_probs):
    """Prune ranges from the simple loss, the pruned logits, and the per-cell table that the
    brute force reads: the kept cells' log-probs, -inf elsewhere."""
    _, grads = rnnt_loss_simple(lm, am, symbols, BLANK, boundary, rnnt_type,
                                reduction="none", return_grad=True)
    ranges = get_rnnt_prune_ranges(*grads, boundary, s_range)
    am_p, lm_p = do_rnnt_pruning(am, lm, ranges)
    logits = 1.5 * (am_p + lm_p)  # (B, T, R, C)
    B, T, _, C = logits.shape
    table = logits.new_full((B, T, symbols.shape[1] + 1, C), float("-inf"))
    table.scatter_(2, ranges[..., None].expand(-1, -1, -1, C), log_probs(logits))
    return ranges, logits, table


@pytest.mark.parametrize("rnnt_type", TYPES)
@pytest.mark.parametrize("use_hat_loss", [False, True])
def test_pruned_loss_matches_brute_force_over_the_kept_cells(rnnt_type, use_hat_loss):
    am, lm, symbols, boundary = make_batch(T=7, S=5)
    log_probs = hat_log_probs if use_hat_loss else (lambda x: x.log_softmax(-1))
    s_range = 1 if rnnt_type == "modified" else 2  # constrained reads position s + 1 too
    ranges, logits, table = _ranges_and_table(am, lm, symbols, boundary, rnnt_type, s_range,
                                              log_probs)
    logits.requires_grad_()
    loss = rnnt_loss_pruned(logits, symbols, ranges, BLANK, boundary, rnnt_type, 0.1, "none",
                            use_hat_loss=use_hat_loss)
    ref = brute_losses(table, symbols, boundary, rnnt_type, 0.1)
    assert torch.isfinite(loss).all()
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    loss.sum().backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("rnnt_type", TYPES)
def test_hat_with_full_ranges_matches_brute_force_and_gradcheck(rnnt_type):
    am, lm, symbols, boundary = make_batch(B=2, T=4, S=3, C=5)
    ranges = torch.arange(4).expand(2, 4, 4)
    logits = joint(am, lm).requires_grad_()
    loss = rnnt_loss_pruned(logits, symbols, ranges, BLANK, boundary, rnnt_type,
                            reduction="none", use_hat_loss=True)
    torch.testing.assert_close(loss, brute_losses(hat_log_probs(logits), symbols, boundary,
                                                  rnnt_type), rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda x: rnnt_loss_pruned(x, symbols, ranges, BLANK, boundary, rnnt_type,
                                   reduction="none", use_hat_loss=True), (logits,))


def test_modified_prune_ranges_step_by_at_most_one():
    am, lm, symbols, _ = make_batch(B=3, T=12, S=6, C=7)
    boundary = torch.tensor([[0, 0, 6, 12], [0, 0, 5, 7], [0, 0, 2, 9]])
    _, grads = rnnt_loss_simple(lm, am, symbols, BLANK, boundary, "modified", reduction="none",
                                return_grad=True)
    ranges = get_rnnt_prune_ranges(*grads, boundary, 2)
    start = ranges[:, :, 0]
    steps = start[:, 1:] - start[:, :-1]
    assert (start[:, 0] == 0).all() and ((steps == 0) | (steps == 1)).all()
    assert (ranges <= 6).all()


# ----------------------------------------------------------------------------- short utterances


def test_one_frame_and_nine_symbols_keep_a_finite_pruned_loss():
    """k2 widens s_range so that every symbol is reachable: 1 frame and 9 symbols at
    s_range=2 need 10 positions; the pruned loss then equals the full loss (the only path)."""
    am, lm, symbols, _ = make_batch(B=1, T=1, S=9, C=12)
    boundary = torch.tensor([[0, 0, 9, 1]])
    _, grads = rnnt_loss_simple(lm, am, symbols, BLANK, boundary, reduction="none",
                                return_grad=True)
    ranges = get_rnnt_prune_ranges(*grads, boundary, s_range=2)
    assert ranges.shape == (1, 1, 10)
    am_p, lm_p = do_rnnt_pruning(am, lm, ranges)
    pruned = rnnt_loss_pruned(am_p + lm_p, symbols, ranges, BLANK, boundary, reduction="none")
    full = rnnt_loss(joint(am, lm), symbols, BLANK, boundary, reduction="none")
    assert torch.isfinite(pruned).all()
    torch.testing.assert_close(pruned, full, rtol=1e-12, atol=1e-12)


def test_a_short_utterance_widens_the_ranges_of_its_batch():
    """A batch with a 2-frame, 5-symbol utterance: s_range 2 becomes (5 - 1) // 2 + 2 = 4 for
    every utterance; each pruned loss is finite and no smaller than its full loss."""
    am, lm, symbols, _ = make_batch(B=2, T=6, S=6, C=9)
    boundary = torch.tensor([[0, 0, 5, 2], [0, 0, 6, 6]])
    _, grads = rnnt_loss_smoothed(lm, am, symbols, BLANK, 0.1, 0.1, boundary,
                                  reduction="none", return_grad=True)
    ranges = get_rnnt_prune_ranges(*grads, boundary, s_range=2)
    assert ranges.shape == (2, 6, 4)
    am_p, lm_p = do_rnnt_pruning(am, lm, ranges)
    pruned = rnnt_loss_pruned(am_p + lm_p, symbols, ranges, BLANK, boundary, reduction="none")
    full = rnnt_loss(joint(am, lm), symbols, BLANK, boundary, reduction="none")
    assert torch.isfinite(pruned).all() and (pruned >= full - 1e-12).all()
    table = (am_p + lm_p).log_softmax(-1)
    kept = torch.full((2, 6, 7, 9), float("-inf"), dtype=torch.float64)
    kept.scatter_(2, ranges[..., None].expand(-1, -1, -1, 9), table)
    torch.testing.assert_close(pruned, brute_losses(kept, symbols, boundary, "regular"))


def test_logprob_builders_take_k2s_positional_order():
    """get_rnnt_logprobs(lm, am, symbols, termination_symbol, rnnt_type, boundary), as k2."""
    am, lm, symbols, boundary = make_batch()
    px, py = get_rnnt_logprobs(lm, am, symbols, BLANK, "modified", boundary)
    assert px.shape == (3, 4, 6) and py.shape == (3, 5, 6)
    px, _ = get_rnnt_logprobs(lm, am, symbols, BLANK, "regular", boundary)
    assert px.shape == (3, 4, 7) and torch.isneginf(px[1, :, 5]).all()
