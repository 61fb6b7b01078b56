"""Tests for icefall.rnnt_loss: the pure-PyTorch k2 RNN-T losses.

References are independent: a naive O(T * S) Python recursion in float64, and identities
between the full, simple, smoothed and pruned losses.
"""

from __future__ import annotations

import types

import pytest
import torch

import icefall.rnnt_loss as R
from icefall.rnnt_loss import (
    do_rnnt_pruning,
    get_rnnt_logprobs_smoothed,
    get_rnnt_prune_ranges,
    mutual_information_recursion,
    rnnt_loss,
    rnnt_loss_pruned,
    rnnt_loss_simple,
    rnnt_loss_smoothed,
)

BLANK = 0
NEG_INF = float("-inf")


@pytest.fixture(autouse=True)
def _torch_backend(monkeypatch):
    """Runs every test on the pure-PyTorch path unless a test asks for k2."""
    monkeypatch.setenv(R.BACKEND_ENV, "torch")


# ----------------------------------------------------------------------------- references


def naive_loglike(logp: torch.Tensor, y: torch.Tensor, T_b: int, S_b: int) -> torch.Tensor:
    """Textbook RNN-T forward recursion for one utterance.

    logp: (T, S + 1, C) per-cell log-probs; y: (S,) labels. Returns log p(y | x).
    """
    alpha: dict[tuple[int, int], torch.Tensor] = {}
    for t in range(T_b):
        for u in range(S_b + 1):
            if t == 0 and u == 0:
                alpha[t, u] = logp.new_zeros(())
                continue
            terms = []
            if t > 0:
                terms.append(alpha[t - 1, u] + logp[t - 1, u, BLANK])
            if u > 0:
                terms.append(alpha[t, u - 1] + logp[t, u - 1, y[u - 1]])
            alpha[t, u] = torch.logsumexp(torch.stack(terms), 0)
    return alpha[T_b - 1, S_b] + logp[T_b - 1, S_b, BLANK]


def naive_losses(logp: torch.Tensor, y: torch.Tensor, boundary: torch.Tensor) -> torch.Tensor:
    """(B,) negated naive log-likelihoods for a (B, T, S + 1, C) log-prob table."""
    return torch.stack([-naive_loglike(logp[b], y[b], int(boundary[b, 3]), int(boundary[b, 2]))
                        for b in range(logp.shape[0])])


def naive_mutual_information(px, py, row) -> torch.Tensor:
    """The generic lattice recursion for one item with boundary row [s0, t0, s1, t1]."""
    s0, t0, s1, t1 = (int(v) for v in row)
    p: dict[tuple[int, int], torch.Tensor] = {(s0, t0): px.new_zeros(())}
    for s in range(s0, s1 + 1):
        for t in range(t0, t1 + 1):
            if (s, t) == (s0, t0):
                continue
            terms = []
            if s > s0:
                terms.append(p[s - 1, t] + px[s - 1, t])
            if t > t0:
                terms.append(p[s, t - 1] + py[s, t - 1])
            p[s, t] = torch.logsumexp(torch.stack(terms), 0)
    return p[s1, t1]


def make_batch(B=3, T=7, S=4, C=6, dtype=torch.float64, lengths=None):
    """Random am (B, T, C), lm (B, S+1, C), symbols (B, S) and boundary (B, 4)."""
    am = torch.randn(B, T, C, dtype=dtype)
    lm = torch.randn(B, S + 1, C, dtype=dtype)
    symbols = torch.randint(1, C, (B, S))
    if lengths is None:
        lengths = [(S, T)] + [(max(S - 1 - b, 0), max(T - 2 * b, 1)) for b in range(1, B)]
    boundary = torch.tensor([[0, 0, s, t] for s, t in lengths], dtype=torch.int64)
    return am, lm, symbols, boundary


def full_logits(am, lm):
    """(B, T, S + 1, C) joiner-free logits am + lm."""
    return am[:, :, None, :] + lm[:, None, :, :]


# ----------------------------------------------------------------------------- full loss


def test_full_loss_and_grad_match_naive_recursion():
    am, lm, symbols, boundary = make_batch()
    logits = (2 * full_logits(am, lm)).requires_grad_()
    loss = rnnt_loss(logits, symbols, BLANK, boundary, reduction="none")
    ref = naive_losses(logits.log_softmax(-1), symbols, boundary)
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    weights = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
    (grad,) = torch.autograd.grad((loss * weights).sum(), logits)
    (ref_grad,) = torch.autograd.grad((ref * weights).sum(), logits)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)


def test_full_loss_without_boundary_uses_whole_lattice():
    am, lm, symbols, _ = make_batch(B=2, T=5, S=3, C=5)
    logits = full_logits(am, lm)
    whole = torch.tensor([[0, 0, 3, 5]] * 2)
    torch.testing.assert_close(rnnt_loss(logits, symbols, BLANK, reduction="none"),
                               naive_losses(logits.log_softmax(-1), symbols, whole))


def test_float32_matches_float64():
    am, lm, symbols, boundary = make_batch(B=2, T=20, S=8, C=10)
    logits = 3 * full_logits(am, lm)
    l64 = rnnt_loss(logits, symbols, BLANK, boundary, reduction="none")
    l32 = rnnt_loss(logits.float(), symbols, BLANK, boundary, reduction="none")
    assert l32.dtype == torch.float32
    torch.testing.assert_close(l32.double(), l64, rtol=1e-5, atol=1e-4)


def test_large_logits_stay_finite():
    am, lm, symbols, boundary = make_batch(B=2, T=9, S=4, C=6, dtype=torch.float32)
    logits = (200 * full_logits(am, lm)).requires_grad_()
    loss = rnnt_loss(logits, symbols, BLANK, boundary, reduction="sum")
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_graph_is_one_node_not_one_per_diagonal():
    """The recursion is one autograd node; the graph size does not grow with T or S."""

    def graph_size(T: int, S: int) -> int:
        am, lm, symbols, boundary = make_batch(B=2, T=T, S=S, C=5)
        loss = rnnt_loss(full_logits(am, lm).requires_grad_(), symbols, BLANK, boundary)
        seen, stack = set(), [loss.grad_fn]
        while stack:
            node = stack.pop()
            if node is not None and node not in seen:
                seen.add(node)
                stack.extend(fn for fn, _ in node.next_functions)
        assert any("_MutualInformation" in type(n).__name__ for n in seen)
        return len(seen)

    small, large = graph_size(4, 2), graph_size(40, 15)
    assert small == large < 40


# ----------------------------------------------------------------------------- simple / smoothed


def test_simple_and_unsmoothed_losses_equal_full_loss_of_sum():
    am, lm, symbols, boundary = make_batch()
    full = rnnt_loss(full_logits(am, lm), symbols, BLANK, boundary, reduction="none")
    simple = rnnt_loss_simple(lm, am, symbols, BLANK, boundary, reduction="none")
    smoothed = rnnt_loss_smoothed(lm, am, symbols, BLANK, lm_only_scale=0.0, am_only_scale=0.0,
                                  boundary=boundary, reduction="none")
    torch.testing.assert_close(simple, full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(smoothed, full, rtol=1e-12, atol=1e-12)


def test_smoothed_loss_matches_interpolated_naive_recursion():
    """k2's smoothing: mix log_softmax(am+lm), log_softmax(lm), log_softmax(am + log unigram)."""
    am, lm, symbols, boundary = make_batch(B=2, T=6, S=3, C=5)
    lm_scale, am_scale = 0.25, 0.15
    combined = full_logits(am, lm).log_softmax(-1)  # (B, T, S+1, C)
    lm_only = lm.log_softmax(-1)[:, None]  # (B, 1, S+1, C)
    unigram = lm.softmax(-1).mean(dim=(0, 1))  # (C,)
    am_only = (am + unigram.log()).log_softmax(-1)[:, :, None]  # (B, T, 1, C)
    mixed = (1 - lm_scale - am_scale) * combined + lm_scale * lm_only + am_scale * am_only
    loss = rnnt_loss_smoothed(lm, am, symbols, BLANK, lm_only_scale=lm_scale,
                              am_only_scale=am_scale, boundary=boundary, reduction="none")
    torch.testing.assert_close(loss, naive_losses(mixed, symbols, boundary), rtol=1e-10,
                               atol=1e-10)


def test_smoothed_loss_invariant_to_per_frame_and_per_position_offsets():
    am, lm, symbols, boundary = make_batch()
    loss = rnnt_loss_smoothed(lm, am, symbols, BLANK, 0.2, 0.1, boundary, reduction="none")
    shifted = rnnt_loss_smoothed(lm + 3 * torch.randn(3, 5, 1, dtype=torch.float64),
                                 am + 3 * torch.randn(3, 7, 1, dtype=torch.float64),
                                 symbols, BLANK, 0.2, 0.1, boundary, reduction="none")
    torch.testing.assert_close(shifted, loss, rtol=1e-10, atol=1e-10)


def test_return_grad_equals_autograd_of_scores_wrt_px_py():
    am, lm, symbols, boundary = make_batch()
    _, (px_grad, py_grad) = rnnt_loss_smoothed(lm, am, symbols, BLANK, 0.25, 0.1, boundary,
                                               reduction="sum", return_grad=True)
    px, py = get_rnnt_logprobs_smoothed(lm, am, symbols, BLANK, 0.25, 0.1, boundary)
    px, py = px.detach().requires_grad_(), py.detach().requires_grad_()
    scores = mutual_information_recursion(px, py, boundary)
    ref_px, ref_py = torch.autograd.grad(scores.sum(), [px, py])
    torch.testing.assert_close(px_grad, ref_px)
    torch.testing.assert_close(py_grad, ref_py)
    # Occupation identities: each real frame emits exactly one blank and each real symbol is
    # emitted exactly once; nothing outside the utterance is occupied.
    S_b, T_b = boundary[:, 2], boundary[:, 3]
    frame_real = torch.arange(7)[None] < T_b[:, None]  # (B, T)
    symbol_real = torch.arange(4)[None] < S_b[:, None]  # (B, S)
    torch.testing.assert_close(py_grad.sum(1), frame_real.double())
    torch.testing.assert_close(px_grad.sum(2), symbol_real.double())


# ----------------------------------------------------------------------------- pruning


def test_pruned_loss_with_full_range_equals_full_loss():
    am, lm, symbols, boundary = make_batch()
    S = symbols.shape[1]
    full = rnnt_loss(full_logits(am, lm), symbols, BLANK, boundary, reduction="none")
    _, (px_grad, py_grad) = rnnt_loss_simple(lm, am, symbols, BLANK, boundary,
                                             reduction="none", return_grad=True)
    natural = get_rnnt_prune_ranges(px_grad, py_grad, boundary, s_range=S + 3)
    explicit = torch.arange(S + 1).expand(3, 7, S + 1)
    assert torch.equal(natural, explicit)
    am_p, lm_p = do_rnnt_pruning(am, lm, natural)
    assert am_p.shape == lm_p.shape == (3, 7, S + 1, 6)
    pruned = rnnt_loss_pruned(am_p + lm_p, symbols, natural, BLANK, boundary, reduction="none")
    torch.testing.assert_close(pruned, full, rtol=1e-12, atol=1e-12)


def test_pruned_loss_is_a_subset_of_paths():
    """Pruning only removes paths: the pruned loss is >= the full loss, equal cells agree."""
    am, lm, symbols, boundary = make_batch(B=3, T=12, S=6, C=8)
    full = rnnt_loss(full_logits(am, lm), symbols, BLANK, boundary, reduction="none")
    _, grads = rnnt_loss_smoothed(lm, am, symbols, BLANK, 0.1, 0.1, boundary,
                                  reduction="none", return_grad=True)
    ranges = get_rnnt_prune_ranges(*grads, boundary, s_range=3)
    am_p, lm_p = do_rnnt_pruning(am, lm, ranges)
    pruned = rnnt_loss_pruned(am_p + lm_p, symbols, ranges, BLANK, boundary, reduction="none")
    assert torch.isfinite(pruned).all() and (pruned >= full - 1e-12).all()
    # A peaked model whose best path fits in the ranges loses almost nothing by pruning.
    sharp_am, sharp_lm = 30 * am, 30 * lm
    _, grads = rnnt_loss_simple(sharp_lm, sharp_am, symbols, BLANK, boundary,
                                reduction="none", return_grad=True)
    ranges = get_rnnt_prune_ranges(*grads, boundary, s_range=4)
    am_p, lm_p = do_rnnt_pruning(sharp_am, sharp_lm, ranges)
    sharp_full = rnnt_loss(full_logits(sharp_am, sharp_lm), symbols, BLANK, boundary,
                           reduction="none")
    sharp_pruned = rnnt_loss_pruned(am_p + lm_p, symbols, ranges, BLANK, boundary, reduction="none")
    assert ((sharp_pruned - sharp_full) / sharp_full).abs().max() < 0.05


def test_prune_ranges_follow_a_hard_alignment():
    """One-hot occupation of a single path: start = max(row_out(t) - s_range + 1, 0)."""
    S, T, s_range = 6, 8, 3
    symbols_per_frame = [0, 2, 0, 1, 2, 0, 0, 1]  # at most s_range - 1 per frame, sums to S
    px_grad = torch.zeros(1, S, T + 1, dtype=torch.float64)
    py_grad = torch.zeros(1, S + 1, T, dtype=torch.float64)
    row, rows_out = 0, []
    for t, n in enumerate(symbols_per_frame):
        for _ in range(n):
            px_grad[0, row, t] = 1.0
            row += 1
        py_grad[0, row, t] = 1.0
        rows_out.append(row)
    ranges = get_rnnt_prune_ranges(px_grad, py_grad, torch.tensor([[0, 0, S, T]]), s_range)
    expected = torch.tensor([max(r - s_range + 1, 0) for r in rows_out])
    assert torch.equal(ranges[0, :, 0], expected)
    assert torch.equal(ranges[0] - ranges[0, :, :1], torch.arange(s_range).expand(T, s_range))


@pytest.mark.parametrize("s_range", [2, 3, 5])
def test_prune_ranges_are_monotonic_and_in_bounds(s_range):
    B, T, S = 4, 16, 8
    am, lm, symbols, _ = make_batch(B=B, T=T, S=S, C=7)
    boundary = torch.tensor([[0, 0, 8, 16], [0, 0, 5, 11], [0, 0, 1, 9], [0, 0, 7, 8]])
    _, grads = rnnt_loss_smoothed(lm, am, symbols, BLANK, 0.2, 0.1, boundary,
                                  reduction="none", return_grad=True)
    ranges = get_rnnt_prune_ranges(*grads, boundary, s_range)
    assert ranges.shape == (B, T, s_range) and ranges.dtype == torch.int64
    start = ranges[:, :, 0]
    assert torch.equal(ranges - start[:, :, None], torch.arange(s_range).expand(B, T, s_range))
    steps = start[:, 1:] - start[:, :-1]
    assert (start[:, 0] == 0).all() and (steps >= 0).all() and (steps < s_range).all()
    last = (boundary[:, 2] - s_range + 1).clamp(min=0)
    assert (start <= last[:, None]).all() and (ranges <= S).all()
    for b in range(B):  # from the last real frame on, the last symbol is inside the range
        assert (start[b, boundary[b, 3] - 1:] == last[b]).all()


# ----------------------------------------------------------------------------- gradcheck


def test_gradcheck_full_loss():
    am, lm, symbols, boundary = make_batch(B=2, T=3, S=2, C=4, lengths=[(2, 3), (1, 2)])
    symbols[0, 1] = BLANK  # a label equal to the blank picks one logit twice per cell
    logits = full_logits(am, lm).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: rnnt_loss(x, symbols, BLANK, boundary, reduction="none"), (logits,))


def test_gradcheck_smoothed_loss():
    am, lm, symbols, boundary = make_batch(B=2, T=4, S=2, C=4, lengths=[(2, 4), (1, 3)])
    am.requires_grad_()
    lm.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, m: rnnt_loss_smoothed(m, a, symbols, BLANK, 0.3, 0.2, boundary, reduction="none"),
        (am, lm))


def test_gradcheck_pruned_loss():
    _, _, symbols, boundary = make_batch(B=2, T=4, S=3, C=4, lengths=[(3, 4), (2, 3)])
    symbols[1, 0] = BLANK
    ranges = torch.tensor([[0, 0, 1, 2], [0, 1, 1, 1]])[:, :, None] + torch.arange(2)
    logits = torch.randn(2, 4, 2, 4, dtype=torch.float64, requires_grad=True)
    loss = rnnt_loss_pruned(logits, symbols, ranges, BLANK, boundary, reduction="none")
    assert torch.isfinite(loss).all()
    assert torch.autograd.gradcheck(
        lambda x: rnnt_loss_pruned(x, symbols, ranges, BLANK, boundary,
                                   reduction="none"), (logits,))


def test_mutual_information_with_offsets_matches_naive_and_gradcheck():
    B, S, T = 3, 3, 4
    px = torch.randn(B, S, T + 1, dtype=torch.float64, requires_grad=True)
    py = torch.randn(B, S + 1, T, dtype=torch.float64, requires_grad=True)
    boundary = torch.tensor([[0, 0, 3, 4], [1, 0, 3, 3], [1, 2, 2, 4]])
    scores = mutual_information_recursion(px, py, boundary)
    ref = torch.stack([naive_mutual_information(px[b], py[b], boundary[b]) for b in range(B)])
    torch.testing.assert_close(scores, ref)
    assert torch.autograd.gradcheck(
        lambda x, y: mutual_information_recursion(x, y, boundary), (px, py))


# ----------------------------------------------------------------------------- padding


def test_padding_does_not_change_per_utterance_losses():
    am, lm, symbols, boundary = make_batch(B=3, T=10, S=5, C=6,
                                           lengths=[(5, 10), (3, 6), (2, 4)])
    am[1, 6:] += 40 * torch.randn(4, 6, dtype=torch.float64)  # junk in the padding
    lm[2, 3:] -= 40
    s_range = 3
    _, grads = rnnt_loss_simple(lm, am, symbols, BLANK, boundary,
                                reduction="none", return_grad=True)
    ranges = get_rnnt_prune_ranges(*grads, boundary, s_range)
    am_p, lm_p = do_rnnt_pruning(am, lm, ranges)
    batch = {
        "full": rnnt_loss(full_logits(am, lm), symbols, BLANK, boundary, reduction="none"),
        "simple": rnnt_loss_simple(lm, am, symbols, BLANK, boundary, reduction="none"),
        "pruned": rnnt_loss_pruned(am_p + lm_p, symbols, ranges, BLANK, boundary, reduction="none"),
    }
    for b in range(3):
        S_b, T_b = int(boundary[b, 2]), int(boundary[b, 3])
        a, m, y = am[b:b + 1, :T_b], lm[b:b + 1, :S_b + 1], symbols[b:b + 1, :S_b]
        r = ranges[b:b + 1, :T_b]
        a_p, m_p = do_rnnt_pruning(a, m, r)
        alone = {
            "full": rnnt_loss(full_logits(a, m), y, BLANK, reduction="none"),
            "simple": rnnt_loss_simple(m, a, y, BLANK, reduction="none"),
            "pruned": rnnt_loss_pruned(a_p + m_p, y, r, BLANK, reduction="none"),
        }
        for name, value in alone.items():
            torch.testing.assert_close(batch[name][b:b + 1], value, rtol=1e-12, atol=1e-12)


def test_utterance_without_a_path_has_infinite_loss_and_zero_grad():
    am, lm, symbols, _ = make_batch(B=2, T=4, S=2, C=5)
    boundary = torch.tensor([[0, 0, 2, 4], [0, 0, 2, 0]])  # 2 symbols in 0 frames
    logits = full_logits(am, lm).requires_grad_()
    loss = rnnt_loss(logits, symbols, BLANK, boundary, reduction="none")
    assert torch.isfinite(loss[0]) and torch.isinf(loss[1])
    loss[0].backward()
    assert torch.isfinite(logits.grad).all() and logits.grad[1].abs().sum() == 0


# ----------------------------------------------------------------------------- reductions


def test_reductions():
    am, lm, symbols, boundary = make_batch()
    logits = full_logits(am, lm)
    ranges = torch.zeros(3, 7, 2, dtype=torch.int64) + torch.arange(2)
    calls = {
        "full": lambda red: rnnt_loss(logits, symbols, BLANK, boundary, reduction=red),
        "simple": lambda red: rnnt_loss_simple(lm, am, symbols, BLANK, boundary, reduction=red),
        "smoothed": lambda red: rnnt_loss_smoothed(lm, am, symbols, BLANK, 0.1, 0.1, boundary,
                                                   reduction=red),
        "pruned": lambda red: rnnt_loss_pruned(logits[:, :, :2], symbols, ranges, BLANK,
                                               boundary, reduction=red),
    }
    for fn in calls.values():
        none = fn("none")
        assert none.shape == (3,)
        torch.testing.assert_close(fn("sum"), none.sum())
        torch.testing.assert_close(fn("mean"), none.sum() / 3)


# ----------------------------------------------------------------------------- argument errors


def _bad_calls():
    am, lm, symbols, boundary = make_batch(dtype=torch.float32)
    logits = full_logits(am, lm)
    ranges = torch.zeros(3, 7, 2, dtype=torch.int64) + torch.arange(2)
    px_grad, py_grad = torch.zeros(3, 4, 8), torch.zeros(3, 5, 7)
    return {
        "logits 3-D": lambda: rnnt_loss(logits[0], symbols, BLANK),
        "symbols shape": lambda: rnnt_loss(logits, symbols[:, :3], BLANK),
        "symbols dtype": lambda: rnnt_loss(logits, symbols.float(), BLANK),
        "symbol value": lambda: rnnt_loss(logits, symbols + 10, BLANK),
        "termination": lambda: rnnt_loss(logits, symbols, 6),
        "reduction": lambda: rnnt_loss(logits, symbols, BLANK, reduction="avg"),
        "half": lambda: rnnt_loss(logits.half(), symbols, BLANK),
        "boundary shape": lambda: rnnt_loss(logits, symbols, BLANK, boundary[:, :3]),
        "boundary S": lambda: rnnt_loss(logits, symbols, BLANK, boundary + torch.tensor(
            [0, 0, 1, 0])),
        "boundary T": lambda: rnnt_loss(logits, symbols, BLANK, boundary + torch.tensor(
            [0, 0, 0, 1])),
        "boundary float": lambda: rnnt_loss(logits, symbols, BLANK, boundary.float()),
        "lm/am C": lambda: rnnt_loss_simple(lm[:, :, :5], am, symbols, BLANK),
        "lm/am dtype": lambda: rnnt_loss_simple(lm.double(), am, symbols, BLANK),
        "s_range": lambda: get_rnnt_prune_ranges(px_grad, py_grad, boundary, 1),
        "grads shape": lambda: get_rnnt_prune_ranges(px_grad[:, :, :6], py_grad, boundary, 2),
        "modified s_range": lambda: get_rnnt_prune_ranges(px_grad[:, :, :7], py_grad, boundary,
                                                          0),
        "rnnt_type": lambda: rnnt_loss(logits, symbols, BLANK, rnnt_type="pruned"),
        "delay_penalty": lambda: rnnt_loss(logits, symbols, BLANK, delay_penalty="0.1"),
        "modified T < S": lambda: rnnt_loss(logits[:, :3], symbols, BLANK, rnnt_type="modified"),
        "modified T_b < S_b": lambda: rnnt_loss(logits, symbols, BLANK, torch.tensor(
            [[0, 0, 4, 3]] * 3), rnnt_type="constrained"),
        "hat blank": lambda: rnnt_loss_pruned(logits[:, :, :2], symbols, ranges, 1,
                                              use_hat_loss=True),
        "no boundary": lambda: get_rnnt_prune_ranges(px_grad, py_grad, None, 2),
        "ranges value": lambda: do_rnnt_pruning(am, lm, ranges + 4),
        "ranges shape": lambda: rnnt_loss_pruned(logits[:, :, :3], symbols, ranges, BLANK),
        "px/py": lambda: mutual_information_recursion(px_grad, py_grad[:, :4]),
    }


@pytest.mark.parametrize("case", sorted(_bad_calls()))
def test_bad_arguments_raise_value_error(case):
    with pytest.raises(ValueError):
        _bad_calls()[case]()


def test_trusted_inputs_skip_only_the_value_checks_that_read_the_device():
    """Inside trusted_inputs() symbols and ranges values are not read back (a GPU would
    wait); shapes and boundary values (read from a CPU copy) are still checked."""
    from icefall import rnnt_loss as module

    calls = _bad_calls()
    with module.trusted_inputs():
        with pytest.raises(RuntimeError):  # not our ValueError: torch's own index check
            calls["ranges value"]()
        for case in ("symbols shape", "boundary S", "boundary T", "s_range"):
            with pytest.raises(ValueError):
                calls[case]()
    with pytest.raises(ValueError):
        calls["ranges value"]()


# ----------------------------------------------------------------------------- backend choice


def test_backend_selection(monkeypatch):
    assert R.rnnt_backend() == "torch"
    monkeypatch.setenv(R.BACKEND_ENV, "bogus")
    with pytest.raises(ValueError, match=R.BACKEND_ENV):
        R.rnnt_backend()
    monkeypatch.setenv(R.BACKEND_ENV, "auto")
    assert R.rnnt_backend() == ("k2" if R._import_k2() is not None else "torch")
    if R._import_k2() is None:
        monkeypatch.setenv(R.BACKEND_ENV, "k2")
        with pytest.raises(ImportError):
            R.rnnt_backend()


def test_k2_backend_passes_k2_keyword_arguments(monkeypatch):
    """With k2 selected, each function forwards k2's keyword names (checked by a stand-in)."""
    calls: dict[str, dict] = {}

    def recorder(name):
        def call(**kwargs):
            calls[name] = kwargs
            return name
        return call

    names = ["rnnt_loss", "rnnt_loss_simple", "rnnt_loss_smoothed", "rnnt_loss_pruned",
             "get_rnnt_prune_ranges", "do_rnnt_pruning"]
    monkeypatch.setattr(R, "_import_k2", lambda: types.SimpleNamespace(
        **{n: recorder(n) for n in names}))
    monkeypatch.setenv(R.BACKEND_ENV, "auto")
    assert R.rnnt_backend() == "k2"
    am, lm, symbols, boundary = make_batch(dtype=torch.float32)
    boundary = boundary.int()  # converted to int64 for k2
    ranges = torch.zeros(3, 7, 2, dtype=torch.int64) + torch.arange(2)
    grads = (torch.zeros(3, 4, 8), torch.zeros(3, 5, 7))
    results = [
        rnnt_loss(full_logits(am, lm), symbols, BLANK, boundary, "modified", 0.5, "sum"),
        rnnt_loss_simple(lm, am, symbols, BLANK, boundary, reduction="sum", return_grad=True),
        rnnt_loss_smoothed(lm, am, symbols, BLANK, 0.25, 0.0, boundary,
                           reduction="sum", return_grad=True),
        rnnt_loss_pruned(full_logits(am, lm)[:, :, :2], symbols, ranges, BLANK, boundary),
        get_rnnt_prune_ranges(*grads, boundary, 2),
        do_rnnt_pruning(am, lm, ranges),
    ]
    assert results == names
    common = {"symbols", "termination_symbol", "boundary", "reduction", "rnnt_type",
              "delay_penalty"}
    assert set(calls["rnnt_loss"]) == common | {"logits"}
    assert set(calls["rnnt_loss_simple"]) == common | {"lm", "am", "return_grad"}
    assert set(calls["rnnt_loss_smoothed"]) == common | {"lm", "am", "return_grad",
                                                        "lm_only_scale", "am_only_scale"}
    assert set(calls["rnnt_loss_pruned"]) == common | {"logits", "ranges", "use_hat_loss"}
    assert set(calls["get_rnnt_prune_ranges"]) == {"px_grad", "py_grad", "boundary", "s_range"}
    assert set(calls["do_rnnt_pruning"]) == {"am", "lm", "ranges"}
    assert calls["rnnt_loss_smoothed"]["lm_only_scale"] == 0.25
    assert (calls["rnnt_loss"]["rnnt_type"], calls["rnnt_loss"]["delay_penalty"]) == \
        ("modified", 0.5)  # k2's positional order
    assert all(c["boundary"].dtype == torch.int64 for c in calls.values() if "boundary" in c)
    with pytest.raises(ValueError):  # arguments are still checked before reaching k2
        rnnt_loss(full_logits(am, lm), symbols[:, :2], BLANK)


def test_k2_and_torch_backends_agree(monkeypatch):
    if R._import_k2() is None:
        pytest.skip("k2 is not importable here; the k2 backend is compared where it exists")
    am, lm, symbols, boundary = make_batch(B=3, T=12, S=5, C=8)

    def run():
        loss, grads = rnnt_loss_smoothed(lm, am, symbols, BLANK, 0.25, 0.1, boundary,
                                         reduction="none", return_grad=True)
        ranges = get_rnnt_prune_ranges(*grads, boundary, 3)
        am_p, lm_p = do_rnnt_pruning(am, lm, ranges)
        return (loss, *grads, ranges,
                rnnt_loss(full_logits(am, lm), symbols, BLANK, boundary, reduction="none"),
                rnnt_loss_simple(lm, am, symbols, BLANK, boundary, reduction="none"),
                rnnt_loss_pruned(am_p + lm_p, symbols, ranges, BLANK, boundary, reduction="none"))

    ours = run()
    monkeypatch.setenv(R.BACKEND_ENV, "k2")
    theirs = run()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.cpu(), b.cpu(), rtol=1e-6, atol=1e-6)
