"""RNN-T losses (full, simple, smoothed, pruned) with k2's names and semantics, in PyTorch.

The functions here take the same arguments as their namesakes in ``k2`` (``k2.rnnt_loss``,
``k2.rnnt_loss_smoothed``, ``k2.get_rnnt_prune_ranges``, ...), so icefall code can import them
from either place. Only k2's ``"regular"`` transducer topology is implemented: any number of
symbols may be emitted on one frame, and the termination (blank) symbol advances to the next frame.

Dimension legend:
  B: batch size.
  T: number of acoustic frames (padded to the longest utterance).
  S: number of symbols per utterance (padded); the lattice has S + 1 symbol positions.
  C: vocabulary size, including the termination (blank) symbol.
  R: ``s_range``, the number of symbol positions kept per frame by pruning.

Every loss reduces to the recursion of ``mutual_information_recursion`` over the
``(S + 1) x (T + 1)`` lattice::

    p[b, 0, 0] = 0
    p[b, s, t] = logaddexp(p[b, s - 1, t] + px[b, s - 1, t],
                           p[b, s, t - 1] + py[b, s, t - 1])

``px[b, s, t]`` (shape ``(B, S, T + 1)``) is the log-prob of emitting ``symbols[b, s]`` on frame
``t`` after the first ``s`` symbols, and ``py[b, s, t]`` (shape ``(B, S + 1, T)``) that of
emitting the termination symbol there, which moves to frame ``t + 1``. ``px[b, :, T_b]`` is
``-inf``: no symbol can follow the last frame. The log-likelihood of utterance ``b`` is
``p[b, S_b, T_b]`` and its loss is the negation. ``boundary`` rows are
``[s_begin, t_begin, S_b, T_b]`` (``[0, 0, S_b, T_b]`` for RNN-T); without it every row is
``[0, 0, S, T]``.

The recursion runs over anti-diagonals ``s + t = d`` (all cells of a diagonal and the whole
batch in one step) inside a custom autograd function whose backward pass runs the matching
beta recursion, so gradients are exact and memory is ``O(B * S * (S + T))`` rather than an
autograd graph per diagonal.

Backend: set ``ICEFALL_RNNT_BACKEND`` to ``torch``, ``k2`` or ``auto`` (the default: ``k2``
when it can be imported, else ``torch``); see :func:`rnnt_backend`.

Devices: every argument is checked, and values that must be read on the host (the boundary
rows, which the recursions use to place their start and end cells) are read from a CPU copy.
``boundary`` may therefore be given on the CPU with the other tensors on a GPU: it is then
copied to the GPU without waiting for it, and the losses never stall the device. A boundary
given on the GPU costs one device synchronisation per recursion. Checking the values of
``symbols`` and ``ranges`` on a GPU also synchronises; a caller that builds them itself (the
transducer model does) can skip those checks with :func:`trusted_inputs`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Iterator
from types import ModuleType

import torch
from torch import Tensor

__all__ = [
    "do_rnnt_pruning",
    "get_rnnt_logprobs",
    "get_rnnt_logprobs_joint",
    "get_rnnt_logprobs_pruned",
    "get_rnnt_logprobs_smoothed",
    "get_rnnt_prune_ranges",
    "mutual_information_recursion",
    "rnnt_backend",
    "rnnt_loss",
    "rnnt_loss_pruned",
    "rnnt_loss_simple",
    "rnnt_loss_smoothed",
]

BACKEND_ENV = "ICEFALL_RNNT_BACKEND"
_REDUCTIONS = ("none", "sum", "mean")
_NEG_INF = float("-inf")


# --------------------------------------------------------------------------- backend choice


@functools.lru_cache(maxsize=1)
def _import_k2() -> ModuleType | None:
    """Returns the ``k2`` module, or None when it cannot be imported (cached)."""
    try:
        import k2
    except (ImportError, OSError):
        return None
    return k2


def rnnt_backend() -> str:
    """The backend the loss functions use now: ``"torch"`` or ``"k2"``.

    Reads ``ICEFALL_RNNT_BACKEND`` on every call: ``auto`` (default) picks ``k2`` when it is
    importable and ``torch`` otherwise; ``torch`` and ``k2`` force one.

    Raises:
      ValueError: for any other value.
      ImportError: when ``k2`` is forced but cannot be imported.
    """
    choice = os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
    if choice not in ("auto", "torch", "k2"):
        raise ValueError(f"{BACKEND_ENV} must be one of auto, torch, k2; got '{choice}'")
    if choice == "torch":
        return "torch"
    if _import_k2() is not None:
        return "k2"
    if choice == "k2":
        raise ImportError(f"{BACKEND_ENV}=k2 but the k2 package cannot be imported")
    return "torch"


def _k2() -> ModuleType | None:
    """The k2 module when the k2 backend is selected, else None."""
    return _import_k2() if rnnt_backend() == "k2" else None


def _for_k2(boundary: Tensor | None, like: Tensor) -> Tensor | None:
    """A checked boundary as k2 takes it: int64 on the device of ``like``."""
    return None if boundary is None else _to_device(boundary.to(torch.int64), like.device)


# --------------------------------------------------------------------------- argument checks

_TRUST = threading.local()


@contextlib.contextmanager
def trusted_inputs() -> Iterator[None]:
    """Within the block, the values of ``symbols`` and ``ranges`` are not checked.

    Shapes and dtypes are still checked, and so are boundary values (read from a CPU copy).
    For callers that build symbols and ranges themselves: reading their values back from a
    GPU to check them would wait for the device on every call.
    """
    previous = getattr(_TRUST, "on", False)
    _TRUST.on = True
    try:
        yield
    finally:
        _TRUST.on = previous


def _check_values() -> bool:
    return not getattr(_TRUST, "on", False)


def _to_device(t: Tensor, device: torch.device) -> Tensor:
    """``t`` on ``device``; from the CPU the copy does not wait for the device."""
    return t.to(device, non_blocking=True)


def _host(boundary: Tensor) -> Tensor:
    """A CPU copy of (small) ``boundary``; free when it is already on the CPU."""
    return boundary if boundary.device.type == "cpu" else boundary.cpu()


def _check_reduction(reduction: str | None) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _check_float(name: str, x: Tensor, ndim: int) -> None:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    if x.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"{name} must be float32 or float64 (cast with .float()), got {x.dtype}")


def _check_symbols(symbols: Tensor, B: int, S: int, C: int, termination_symbol: int) -> None:
    if not isinstance(symbols, Tensor) or symbols.dtype != torch.int64:
        raise ValueError("symbols must be an int64 (Long) tensor")
    if tuple(symbols.shape) != (B, S):
        raise ValueError(f"symbols must have shape (B, S) = {(B, S)}, got {tuple(symbols.shape)}")
    if not 0 <= int(termination_symbol) < C:
        raise ValueError(f"termination_symbol must be in [0, {C}), got {termination_symbol}")
    if _check_values() and symbols.numel() and bool(((symbols < 0) | (symbols >= C)).any()):
        raise ValueError(f"symbols must be in [0, {C}) (C = vocabulary size)")


def _check_boundary(boundary: Tensor | None, B: int, S: int, T: int) -> Tensor | None:
    """Validates ``boundary`` (B, 4) rows ``[s_begin, t_begin, s_end, t_end]`` on a CPU copy;
    returns it as int64 on the device it was given on."""
    if boundary is None:
        return None
    if not isinstance(boundary, Tensor) or boundary.is_floating_point() or boundary.is_complex():
        raise ValueError("boundary must be an integer tensor of shape (B, 4)")
    if tuple(boundary.shape) != (B, 4):
        raise ValueError(f"boundary must have shape (B, 4) = {(B, 4)}, got {tuple(boundary.shape)}")
    boundary = boundary.to(torch.int64)
    s_begin, t_begin, s_end, t_end = _host(boundary).unbind(1)
    if bool((s_begin < 0).any() | (s_begin > s_end).any() | (s_end > S).any()):
        raise ValueError(f"boundary rows need 0 <= s_begin <= s_end <= S = {S}")
    if bool((t_begin < 0).any() | (t_begin > t_end).any() | (t_end > T).any()):
        raise ValueError(f"boundary rows need 0 <= t_begin <= t_end <= T = {T}")
    return boundary


def _check_ranges(ranges: Tensor, B: int, T: int, S: int, s_range: int | None = None) -> None:
    if not isinstance(ranges, Tensor) or ranges.dtype != torch.int64 or ranges.ndim != 3:
        raise ValueError("ranges must be an int64 tensor of shape (B, T, s_range)")
    if ranges.shape[:2] != (B, T) or (s_range is not None and ranges.shape[2] != s_range):
        want = (B, T, s_range if s_range is not None else "s_range")
        raise ValueError(f"ranges must have shape {want}, got {tuple(ranges.shape)}")
    if ranges.shape[2] > S + 1:
        raise ValueError(f"ranges keeps {ranges.shape[2]} positions per frame, more than S+1")
    if _check_values() and ranges.numel() and bool(((ranges < 0) | (ranges > S)).any()):
        raise ValueError(f"ranges values must be symbol positions in [0, S = {S}]")


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    """Applies k2's reduction to per-utterance losses (B,): mean divides by B."""
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.mean()


# --------------------------------------------------------------------------- lattice layout
#
# The recursions walk anti-diagonals d = s + t. A cell (s, t) of a (B, R, L) lattice tensor
# lives at [b, s + t, s] of a "skewed" (B, R + L - 1, R) tensor, so one diagonal is one
# contiguous row per utterance. A skewed tensor with strides (sb, sd, 1) read through the
# strides (sb, sd + 1, sd) is the lattice again, which is how values move in and out of it
# with a single strided copy.


def _lattice_view(skewed: Tensor, R: int, L: int, offset: int = 0) -> Tensor:
    """(B, R, L) view of a skewed tensor: ``view[b, s, t] = flat_b[offset + (s + t) * sd + s]``.

    ``skewed`` may be any tensor whose last two logical axes are (diagonal, position) with
    the position axis of stride 1; ``offset`` selects a sub-row (in elements).
    """
    sb, sd = skewed.stride(0), skewed.stride(1)
    return skewed.as_strided((skewed.shape[0], R, L), (sb, sd + 1, sd),
                             skewed.storage_offset() + offset)


def _skewed_steps(px: Tensor, py: Tensor, for_beta: bool) -> Tensor:
    """Packs px, py by diagonal for the recursions.

    Args:
      px: (B, S, T + 1); py: (B, S + 1, T).
      for_beta: layout for :func:`_beta` instead of :func:`_alpha`.
    Returns:
      (B, D, 2, S + 1) with ``D = S + T``, ``-inf`` off the lattice. Alpha layout:
      ``[:, d, 0, s] = px[s - 1, d - s + 1]`` (the move into s along the symbol axis) and
      ``[:, d, 1, s] = py[s, d - s]``. Beta layout: ``[:, d, 0, s] = py[s, d - s]`` and
      ``[:, d, 1, s] = px[s, d - s]`` (the moves out of cell (s, d - s)).
    """
    B, S, T1 = px.shape
    steps = px.new_full((B, S + T1 - 1, 2, S + 1), _NEG_INF)
    W = S + 1  # elements per (diagonal, row)
    px_offset = 1 if not for_beta else W  # alpha: row 0 shifted by one position
    py_offset = W if not for_beta else 0
    # Strides are in elements of `steps`; one diagonal spans 2 * W of them.
    flat = steps.view(B, S + T1 - 1, 2 * W)
    _lattice_view(flat, S, T1, px_offset).copy_(px)
    _lattice_view(flat, S + 1, T1 - 1, py_offset).copy_(py)
    return steps


def _diagonal_masks(rows: Tensor, cols: Tensor, D1: int, S1: int) -> Tensor:
    """(B, D1, S1) bool: True at the skewed cell of ``(rows[b], cols[b])``."""
    B = rows.shape[0]
    mask = torch.zeros(B, D1, S1, dtype=torch.bool, device=rows.device)
    mask[torch.arange(B, device=rows.device), rows + cols, rows] = True
    return mask


def _pair_windows(lattice: Tensor) -> Tensor:
    """(B, D + 1, S + 2) -> (B, D + 1, 2, S + 1) view of overlapping column windows.

    ``out[b, d, k, s] = lattice[b, d, s + k]``: row 0 starts at column 0, row 1 at column 1.
    """
    B, D1, W = lattice.shape
    sb, sd, _ = lattice.stride()
    return lattice.as_strided((B, D1, 2, W - 1), (sb, sd, 1, 1))


def _alpha(steps: Tensor, start: Tensor, last_start: int) -> Tensor:
    """Forward (alpha) recursion, one anti-diagonal per step.

    Args:
      steps: (B, D, 2, S + 1) from ``_skewed_steps(px, py, for_beta=False)``.
      start: (B, 2) int64 ``[s_begin, t_begin]``.
      last_start: ``max(s_begin + t_begin)`` over the batch (read on the host).
    Returns:
      (B, D + 1, S + 2) ``alpha[b, s + t, s + 1] = p[b, s, t]``; column 0 and cells off the
      lattice hold ``-inf``.
    """
    B, D, _, S1 = steps.shape
    alpha = steps.new_full((B, D + 1, S1 + 1), _NEG_INF)
    windows = _pair_windows(alpha)  # windows[:, d, 0, s] = p[s - 1], windows[:, d, 1, s] = p[s]
    start_mask = _diagonal_masks(start[:, 0], start[:, 1], D + 1, S1)
    alpha[:, 0, 1:].masked_fill_(start_mask[:, 0], 0.0)
    for d in range(1, D + 1):
        both = windows[:, d - 1] + steps[:, d - 1]  # (B, 2, S + 1)
        torch.logaddexp(both[:, 0], both[:, 1], out=alpha[:, d, 1:])
        if d <= last_start:
            alpha[:, d, 1:].masked_fill_(start_mask[:, d], 0.0)
    return alpha


def _beta(steps: Tensor, end: Tensor, end_diagonals: frozenset[int]) -> Tensor:
    """Backward (beta) recursion: log-sum of path scores from each cell to the end cell.

    Args:
      steps: (B, D, 2, S + 1) from ``_skewed_steps(px, py, for_beta=True)``.
      end: (B, 2) int64 ``[s_end, t_end]``.
      end_diagonals: the values of ``s_end + t_end`` in the batch (read on the host).
    Returns:
      (B, D + 1, S + 2) ``beta[b, s + t, s]`` for cell (s, t); the last column and cells that
      cannot reach the end cell hold ``-inf``.
    """
    B, D, _, S1 = steps.shape
    beta = steps.new_full((B, D + 1, S1 + 1), _NEG_INF)
    windows = _pair_windows(beta)  # windows[:, d, 0, s] = beta[s], windows[:, d, 1, s] = beta[s+1]
    end_mask = _diagonal_masks(end[:, 0], end[:, 1], D + 1, S1)
    for d in range(D, -1, -1):
        if d < D:
            both = windows[:, d + 1] + steps[:, d]  # (B, 2, S + 1)
            torch.logaddexp(both[:, 0], both[:, 1], out=beta[:, d, :-1])
        if d in end_diagonals:
            beta[:, d, :-1].masked_fill_(end_mask[:, d], 0.0)
    return beta


def _occupation(px: Tensor, py: Tensor, steps: Tensor, alpha: Tensor, total: Tensor,
                end: Tensor, end_diagonals: frozenset[int]) -> tuple[Tensor, Tensor]:
    """d total / d px and d total / d py (occupation probabilities) from alpha and beta.

    Args:
      px (B, S, T + 1), py (B, S + 1, T): the recursion inputs; steps, alpha: from
      :func:`_alpha`; total: (B,) log-likelihoods; end: (B, 2) ``[s_end, t_end]``;
      end_diagonals: as :func:`_beta` takes them.
    Returns:
      px_grad (B, S, T + 1) and py_grad (B, S + 1, T); zero for utterances whose total is
      ``-inf`` (no complete path).
    """
    _, S, T1 = px.shape
    beta = _beta(_skewed_steps(px, py, for_beta=True), end, end_diagonals)
    norm = total.reshape(-1, 1, 1)  # (B, 1, 1)
    dead = torch.isneginf(norm)
    grads = []
    # px out of (s, t): alpha at s, the step stored at position s + 1 of row 0, beta at s + 1.
    # py out of (s, t): alpha at s, the step at position s of row 1, beta at s (next diagonal).
    # alpha column j holds s = j - 1; beta column j holds s = j.
    for row, alpha_cols, beta_cols in ((0, slice(1, -1), slice(1, -1)),
                                       (1, slice(1, None), slice(None, -1))):
        g = alpha[:, :-1, alpha_cols] + steps[:, :, row, 1 - row:]  # (B, D, S or S + 1)
        g += beta[:, 1:, beta_cols]
        g -= norm
        grads.append(g.exp_().masked_fill_(dead, 0.0))
    px_grad = _lattice_view(grads[0], S, T1).contiguous()  # (B, S, T + 1)
    py_grad = _lattice_view(grads[1], S + 1, T1 - 1).contiguous()  # (B, S + 1, T)
    return px_grad, py_grad


class _MutualInformation(torch.autograd.Function):
    """Scores of the lattice recursion; backward runs the beta recursion."""

    @staticmethod
    def forward(ctx, px: Tensor, py: Tensor, boundary: Tensor, return_grad: bool,
                diagonals: tuple[int, frozenset[int]]):
        """boundary: (B, 4) on px's device; diagonals: (last start, end diagonals)."""
        last_start, end_diagonals = diagonals
        steps = _skewed_steps(px, py, for_beta=False)  # (B, S + T, 2, S + 1)
        alpha = _alpha(steps, boundary[:, :2], last_start)
        B = px.shape[0]
        s_end, t_end = boundary[:, 2], boundary[:, 3]
        total = alpha[torch.arange(B, device=px.device), s_end + t_end, s_end + 1]  # (B,)
        ctx.have_grads = bool(return_grad)
        ctx.end_diagonals = end_diagonals
        if return_grad:
            px_grad, py_grad = _occupation(px, py, steps, alpha, total, boundary[:, 2:],
                                           end_diagonals)
            ctx.save_for_backward(px_grad, py_grad)
        else:
            px_grad, py_grad = px.new_empty(0), py.new_empty(0)
            ctx.save_for_backward(px, py, steps, alpha, total, boundary)
        ctx.mark_non_differentiable(px_grad, py_grad)
        return total, px_grad, py_grad

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, total_grad: Tensor, _unused_x: Tensor, _unused_y: Tensor):
        if ctx.have_grads:
            px_grad, py_grad = ctx.saved_tensors
        else:
            px, py, steps, alpha, total, boundary = ctx.saved_tensors
            px_grad, py_grad = _occupation(px, py, steps, alpha, total, boundary[:, 2:],
                                           ctx.end_diagonals)
        scale = total_grad.reshape(-1, 1, 1)  # (B, 1, 1)
        return px_grad * scale, py_grad * scale, None, None, None


def _start_and_end_diagonals(host_boundary: Tensor) -> tuple[int, frozenset[int]]:
    """(max of s_begin + t_begin, set of s_end + t_end) of a CPU (B, 4) boundary."""
    if host_boundary.shape[0] == 0:
        return 0, frozenset()
    diagonal = host_boundary[:, 0::2] + host_boundary[:, 1::2]  # (B, 2): start, end
    return int(diagonal[:, 0].max()), frozenset(diagonal[:, 1].tolist())


def mutual_information_recursion(
    px: Tensor, py: Tensor, boundary: Tensor | None = None, return_grad: bool = False
) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]:
    """Log-sum over all monotonic lattice paths (the recursion in the module docstring).

    Args:
      px: (B, S, T + 1) log-probs of moving one step along s.
      py: (B, S + 1, T) log-probs of moving one step along t.
      boundary: optional (B, 4) int64 rows ``[s_begin, t_begin, s_end, t_end]``; the
        recursion starts at ``p[b, s_begin, t_begin] = 0`` and the score is ``p[b, s_end, t_end]``.
      return_grad: also return the occupation probabilities, i.e. the gradients of
        ``scores.sum()`` with respect to ``px`` and ``py``.
    Returns:
      scores (B,), or ``(scores, (px_grad (B, S, T + 1), py_grad (B, S + 1, T)))``.
    """
    _check_float("px", px, 3)
    _check_float("py", py, 3)
    B, S, T1 = px.shape
    if tuple(py.shape) != (B, S + 1, T1 - 1) or T1 < 1:
        raise ValueError(f"px (B, S, T+1) and py (B, S+1, T) disagree: {tuple(px.shape)}, "
                         f"{tuple(py.shape)}")
    if py.dtype != px.dtype:
        raise ValueError(f"px and py must have one dtype, got {px.dtype} and {py.dtype}")
    boundary = _check_boundary(boundary, B, S, T1 - 1)
    if boundary is None:
        boundary = torch.tensor([[0, 0, S, T1 - 1]], dtype=torch.int64).expand(B, 4)
    diagonals = _start_and_end_diagonals(_host(boundary))
    boundary = _to_device(boundary, px.device).contiguous()
    scores, px_grad, py_grad = _MutualInformation.apply(px, py, boundary, bool(return_grad),
                                                        diagonals)
    return (scores, (px_grad, py_grad)) if return_grad else scores


# --------------------------------------------------------------------------- log-prob builders


def _fix_for_boundary(px: Tensor, boundary: Tensor | None) -> Tensor:
    """Sets ``px[b, :, T_b]`` to ``-inf`` (no symbol after the last frame). px: (B, S, T + 1)."""
    if boundary is None:
        return px
    B, _, T1 = px.shape
    frames = torch.arange(T1, device=px.device).reshape(1, 1, T1)
    after_last = frames == _to_device(boundary[:, 3], px.device).reshape(B, 1, 1)  # (B, 1, T+1)
    return px.masked_fill(after_last, _NEG_INF)


def _append_no_symbol_frame(px: Tensor) -> Tensor:
    """(B, S, T) -> (B, S, T + 1) with ``-inf`` on the one-past-the-last frame."""
    return torch.cat([px, px.new_full((px.shape[0], px.shape[1], 1), _NEG_INF)], dim=2)


def _check_lm_am(lm: Tensor, am: Tensor, symbols: Tensor, termination_symbol: int,
                 boundary: Tensor | None) -> tuple[int, int, int, int, Tensor | None]:
    """Validates the simple-loss inputs; returns (B, T, S, C, boundary)."""
    _check_float("lm", lm, 3)
    _check_float("am", am, 3)
    B, T, C = am.shape
    if lm.shape[0] != B or lm.shape[2] != C or lm.shape[1] < 1:
        raise ValueError(f"lm must have shape (B, S+1, C) with B={B}, C={C}; am is (B, T, C) = "
                         f"{tuple(am.shape)}, lm is {tuple(lm.shape)}")
    if lm.dtype != am.dtype:
        raise ValueError(f"lm and am must have one dtype, got {lm.dtype} and {am.dtype}")
    S = lm.shape[1] - 1
    _check_symbols(symbols, B, S, C, termination_symbol)
    return B, T, S, C, _check_boundary(boundary, B, S, T)


def _simple_terms(lm: Tensor, am: Tensor, symbols: Tensor, termination_symbol: int
                  ) -> dict[str, Tensor]:
    """Pieces shared by the simple and smoothed losses (joiner = addition).

    Returns a dict of tensors: ``normalizers`` (B, S+1, T) = log sum_c exp(lm + am);
    ``px_am`` (B, S, T) = am[b, t, y_s]; ``px_lm`` (B, S, 1) = lm[b, s, y_s];
    ``py_am`` (B, 1, T); ``py_lm`` (B, S+1, 1); plus the max-shifted ``am_probs`` (B, T, C),
    ``lm_probs`` (B, S+1, C), ``am_max`` (B, T, 1) and ``lm_max`` (B, S+1, 1).
    """
    B, T, C = am.shape
    S = lm.shape[1] - 1
    am_max = am.max(dim=2, keepdim=True).values  # (B, T, 1)
    lm_max = lm.max(dim=2, keepdim=True).values  # (B, S + 1, 1)
    am_probs = (am - am_max).exp()
    lm_probs = (lm - lm_max).exp()
    tiny = torch.finfo(am.dtype).tiny
    normalizers = (torch.matmul(lm_probs, am_probs.transpose(1, 2)) + tiny).log()
    normalizers = normalizers + lm_max + am_max.transpose(1, 2)  # (B, S + 1, T)
    # Gather from (B, T, C) with a (B, T, S) index: the backward stays (B, T, C)-sized.
    px_am = torch.gather(am, 2, symbols.unsqueeze(1).expand(B, T, S)).transpose(1, 2)
    return {
        "normalizers": normalizers, "px_am": px_am,  # px_am: (B, S, T)
        "px_lm": torch.gather(lm[:, :S], 2, symbols.unsqueeze(2)),  # (B, S, 1)
        "py_am": am[:, :, termination_symbol].unsqueeze(1),  # (B, 1, T)
        "py_lm": lm[:, :, termination_symbol].unsqueeze(2),  # (B, S + 1, 1)
        "am_probs": am_probs, "lm_probs": lm_probs, "am_max": am_max, "lm_max": lm_max,
    }


def get_rnnt_logprobs(lm: Tensor, am: Tensor, symbols: Tensor, termination_symbol: int,
                      boundary: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """px, py of the simple loss, whose joiner is ``lm[b, s] + am[b, t]`` then log-softmax.

    Args:
      lm: (B, S + 1, C) unnormalised prediction-network scores.
      am: (B, T, C) unnormalised encoder scores.
      symbols: (B, S) int64 labels in ``[0, C)``.
      termination_symbol: the blank id.
      boundary: optional (B, 4) rows ``[0, 0, S_b, T_b]``.
    Returns:
      px (B, S, T + 1) and py (B, S + 1, T), as taken by :func:`mutual_information_recursion`.
    """
    _, T, S, _, boundary = _check_lm_am(lm, am, symbols, termination_symbol, boundary)
    parts = _simple_terms(lm, am, symbols, termination_symbol)
    norm = parts["normalizers"]
    px = parts["px_am"] + parts["px_lm"] - norm[:, :S]  # (B, S, T)
    py = parts["py_am"] + parts["py_lm"] - norm  # (B, S + 1, T)
    return _fix_for_boundary(_append_no_symbol_frame(px), boundary), py.contiguous()


def get_rnnt_logprobs_smoothed(
    lm: Tensor, am: Tensor, symbols: Tensor, termination_symbol: int,
    lm_only_scale: float = 0.1, am_only_scale: float = 0.1, boundary: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """px, py of the smoothed simple loss (k2's interpolation of three log-prob sources).

    Each log-prob is ``(1 - lm_only_scale - am_only_scale) * combined + lm_only_scale * lm_only
    + am_only_scale * am_only`` where ``combined = log_softmax(lm + am)``,
    ``lm_only = log_softmax(lm)`` and ``am_only = log_softmax(am + log unigram)``; the unigram
    is ``softmax(lm)`` averaged over all B * (S + 1) positions, padding included (as in k2),
    so it depends on the whole batch.

    Args: as :func:`get_rnnt_logprobs`, plus the two scales (floats).
    Returns:
      px (B, S, T + 1) and py (B, S + 1, T).
    """
    B, T, S, C, boundary = _check_lm_am(lm, am, symbols, termination_symbol, boundary)
    parts = _simple_terms(lm, am, symbols, termination_symbol)
    lm_probs, tiny = parts["lm_probs"], torch.finfo(lm.dtype).tiny
    lm_sums = lm_probs.sum(dim=2, keepdim=True)  # (B, S + 1, 1)
    unigram = (lm_probs / lm_sums).mean(dim=(0, 1)) + tiny  # (C,)
    am_only_norm = (parts["am_probs"] @ unigram).log() + parts["am_max"].squeeze(2)  # (B, T)
    am_only_norm = am_only_norm.unsqueeze(1)  # (B, 1, T)
    log_unigram = unigram.log()
    lm_only_norm = lm_sums.log() + parts["lm_max"]  # (B, S + 1, 1)
    norm = parts["normalizers"]

    px = parts["px_am"] + parts["px_lm"] - norm[:, :S]  # (B, S, T)
    px_am_only = parts["px_am"] + log_unigram[symbols].unsqueeze(2) - am_only_norm
    px_lm_only = parts["px_lm"] - lm_only_norm[:, :S]  # (B, S, 1)
    py = parts["py_am"] + parts["py_lm"] - norm  # (B, S + 1, T)
    py_am_only = parts["py_am"] + log_unigram[termination_symbol] - am_only_norm  # (B, 1, T)
    py_lm_only = parts["py_lm"] - lm_only_norm  # (B, S + 1, 1)

    w = 1.0 - lm_only_scale - am_only_scale
    px = w * px + lm_only_scale * px_lm_only + am_only_scale * px_am_only  # (B, S, T)
    py = w * py + lm_only_scale * py_lm_only + am_only_scale * py_am_only  # (B, S + 1, T)
    return _fix_for_boundary(_append_no_symbol_frame(px), boundary), py.contiguous()


def _check_logits(logits: Tensor, symbols: Tensor, termination_symbol: int,
                  boundary: Tensor | None, S: int) -> Tensor | None:
    """Validates (B, T, *, C) logits against (B, S) symbols; returns the checked boundary."""
    _check_float("logits", logits, 4)
    B, T, _, C = logits.shape
    _check_symbols(symbols, B, S, C, termination_symbol)
    return _check_boundary(boundary, B, S, T)


def _check_joint(logits: Tensor, symbols: Tensor, termination_symbol: int,
                 boundary: Tensor | None) -> Tensor | None:
    """Validates full-loss arguments; logits (B, T, S + 1, C). Returns the checked boundary."""
    if not isinstance(logits, Tensor) or logits.ndim != 4:
        raise ValueError("logits must be a 4-D tensor (B, T, S+1, C)")
    return _check_logits(logits, symbols, termination_symbol, boundary, logits.shape[2] - 1)


def _check_pruned(logits: Tensor, symbols: Tensor, ranges: Tensor, termination_symbol: int,
                  boundary: Tensor | None) -> Tensor | None:
    """Validates pruned-loss arguments; logits (B, T, R, C). Returns the checked boundary."""
    if not isinstance(logits, Tensor) or logits.ndim != 4:
        raise ValueError("logits must be a 4-D tensor (B, T, s_range, C)")
    S = symbols.shape[1] if isinstance(symbols, Tensor) and symbols.ndim == 2 else -1
    boundary = _check_logits(logits, symbols, termination_symbol, boundary, S)
    _check_ranges(ranges, logits.shape[0], logits.shape[1], S, logits.shape[2])
    return boundary


class _LogSoftmaxPick(torch.autograd.Function):
    """``log_softmax(logits, -1).gather(-1, index)`` without keeping the log-softmax.

    The backward builds one logits-sized tensor (the gradient itself) instead of the several
    that autograd would keep for logsumexp, gather and select.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, index: Tensor) -> Tensor:
        lse = torch.logsumexp(logits, dim=3, keepdim=True)  # (B, T, K, 1)
        ctx.save_for_backward(logits, index, lse)
        return torch.gather(logits, 3, index) - lse  # (B, T, K, J)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        logits, index, lse = ctx.saved_tensors
        out = torch.sub(logits, lse).exp_()  # softmax, (B, T, K, C)
        out.mul_(-grad.sum(dim=3, keepdim=True))
        return out.scatter_add_(3, index, grad), None


def _pick_symbol_and_blank(logits: Tensor, symbols: Tensor, termination_symbol: int
                           ) -> tuple[Tensor, Tensor]:
    """Log-softmax of ``logits`` (B, T, K, C) at ``symbols`` (B, T, K) and at the blank.

    Returns:
      Two (B, T, K) tensors: the symbol log-probs and the blank log-probs.
    """
    blank = torch.full_like(symbols, termination_symbol)
    index = torch.stack([symbols, blank], dim=3)  # (B, T, K, 2)
    picked = _LogSoftmaxPick.apply(logits, index)  # (B, T, K, 2)
    return picked[..., 0], picked[..., 1]


def get_rnnt_logprobs_joint(logits: Tensor, symbols: Tensor, termination_symbol: int,
                            boundary: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """px, py of the full loss from joiner output.

    Args:
      logits: (B, T, S + 1, C) joiner output (unnormalised).
      symbols: (B, S) int64; termination_symbol: blank id; boundary: optional (B, 4).
    Returns:
      px (B, S, T + 1) and py (B, S + 1, T).
    """
    boundary = _check_joint(logits, symbols, termination_symbol, boundary)
    B, T, S1, _ = logits.shape
    S = S1 - 1
    # Position S has no symbol to emit: it picks the blank there and that column is dropped.
    blank = symbols.new_full((B, 1), termination_symbol)
    per_cell = torch.cat([symbols, blank], dim=1).unsqueeze(1).expand(B, T, S + 1)
    px, py = _pick_symbol_and_blank(logits, per_cell, termination_symbol)  # (B, T, S + 1)
    px = _append_no_symbol_frame(px[:, :, :S].transpose(1, 2))  # (B, S, T + 1)
    return _fix_for_boundary(px, boundary), py.transpose(1, 2).contiguous()


def get_rnnt_logprobs_pruned(logits: Tensor, symbols: Tensor, ranges: Tensor,
                             termination_symbol: int, boundary: Tensor | None = None
                             ) -> tuple[Tensor, Tensor]:
    """px, py of the pruned loss: cells outside ``ranges`` get ``-inf``.

    Args:
      logits: (B, T, R, C) joiner output on the kept positions; ``logits[b, t, k]`` belongs to
        symbol position ``ranges[b, t, k]``.
      symbols: (B, S) int64; ranges: (B, T, R) int64 positions in ``[0, S]``.
      termination_symbol: blank id; boundary: optional (B, 4).
    Returns:
      px (B, S, T + 1) and py (B, S + 1, T).
    """
    boundary = _check_pruned(logits, symbols, ranges, termination_symbol, boundary)
    B, T, R, _ = logits.shape
    S = symbols.shape[1]
    blank = symbols.new_full((B, 1), termination_symbol)
    with_blank = torch.cat([symbols, blank], dim=1)  # (B, S + 1)
    kept = torch.gather(with_blank, 1, ranges.reshape(B, T * R)).reshape(B, T, R)
    px_kept, py_kept = _pick_symbol_and_blank(logits, kept, termination_symbol)  # (B, T, R)
    lattice = logits.new_full((B, T, S + 1), _NEG_INF)
    px = lattice.scatter(2, ranges, px_kept)[:, :, :S]  # (B, T, S); position S has no symbol
    py = lattice.scatter(2, ranges, py_kept)  # (B, T, S + 1)
    px = _append_no_symbol_frame(px.transpose(1, 2))  # (B, S, T + 1)
    return _fix_for_boundary(px, boundary), py.transpose(1, 2).contiguous()


# --------------------------------------------------------------------------- losses


def _loss_from_logprobs(px: Tensor, py: Tensor, boundary: Tensor | None, reduction: str,
                        return_grad: bool = False):
    """Negated recursion scores, reduced; with the occupation grads when asked."""
    out = mutual_information_recursion(px.contiguous(), py, boundary, return_grad)
    scores, grads = out if return_grad else (out, None)
    loss = _reduce(-scores, reduction)
    return (loss, grads) if return_grad else loss


def rnnt_loss(logits: Tensor, symbols: Tensor, termination_symbol: int,
              boundary: Tensor | None = None, reduction: str = "mean") -> Tensor:
    """Full RNN-T loss on joiner output.

    Args:
      logits: (B, T, S + 1, C) joiner output (unnormalised).
      symbols: (B, S) int64 labels; termination_symbol: blank id.
      boundary: optional (B, 4) int64 rows ``[0, 0, S_b, T_b]``.
      reduction: ``"none"`` (B,), ``"sum"`` or ``"mean"`` (sum / B) scalar.
    Returns:
      The negated log-likelihood, reduced.
    """
    _check_reduction(reduction)
    k2 = _k2()
    if k2 is not None:
        boundary = _for_k2(_check_joint(logits, symbols, termination_symbol, boundary), logits)
        return k2.rnnt_loss(logits=logits, symbols=symbols, termination_symbol=termination_symbol,
                            boundary=boundary, reduction=reduction)
    px, py = get_rnnt_logprobs_joint(logits, symbols, termination_symbol, boundary)
    return _loss_from_logprobs(px, py, boundary, reduction)


def rnnt_loss_simple(lm: Tensor, am: Tensor, symbols: Tensor, termination_symbol: int,
                     boundary: Tensor | None = None, reduction: str = "mean",
                     return_grad: bool = False):
    """RNN-T loss whose joiner is plain addition ``lm[b, s] + am[b, t]``.

    Args:
      lm: (B, S + 1, C); am: (B, T, C); symbols: (B, S) int64; termination_symbol: blank id.
      boundary: optional (B, 4); reduction: ``"none"``, ``"sum"`` or ``"mean"``.
      return_grad: also return ``(px_grad (B, S, T + 1), py_grad (B, S + 1, T))``, the
        gradient of the summed log-likelihood w.r.t. px and py (occupation probabilities).
    Returns:
      loss, or ``(loss, (px_grad, py_grad))``.
    """
    _check_reduction(reduction)
    k2 = _k2()
    if k2 is not None:
        boundary = _for_k2(_check_lm_am(lm, am, symbols, termination_symbol, boundary)[4], am)
        return k2.rnnt_loss_simple(lm=lm, am=am, symbols=symbols,
                                   termination_symbol=termination_symbol, boundary=boundary,
                                   reduction=reduction, return_grad=return_grad)
    px, py = get_rnnt_logprobs(lm, am, symbols, termination_symbol, boundary)
    return _loss_from_logprobs(px, py, boundary, reduction, return_grad)


def rnnt_loss_smoothed(lm: Tensor, am: Tensor, symbols: Tensor, termination_symbol: int,
                       lm_only_scale: float = 0.1, am_only_scale: float = 0.1,
                       boundary: Tensor | None = None, reduction: str = "mean",
                       return_grad: bool = False):
    """Simple loss with LM-only / AM-only smoothing (see :func:`get_rnnt_logprobs_smoothed`).

    Args:
      lm: (B, S + 1, C); am: (B, T, C); symbols: (B, S) int64; termination_symbol: blank id.
      lm_only_scale, am_only_scale: interpolation weights (icefall's ``lm_scale``, ``am_scale``).
      boundary: optional (B, 4); reduction: ``"none"``, ``"sum"`` or ``"mean"``.
      return_grad: also return ``(px_grad (B, S, T + 1), py_grad (B, S + 1, T))`` for
        :func:`get_rnnt_prune_ranges`.
    Returns:
      loss, or ``(loss, (px_grad, py_grad))``.
    """
    _check_reduction(reduction)
    k2 = _k2()
    if k2 is not None:
        boundary = _for_k2(_check_lm_am(lm, am, symbols, termination_symbol, boundary)[4], am)
        return k2.rnnt_loss_smoothed(
            lm=lm, am=am, symbols=symbols, termination_symbol=termination_symbol,
            lm_only_scale=lm_only_scale, am_only_scale=am_only_scale, boundary=boundary,
            reduction=reduction, return_grad=return_grad)
    px, py = get_rnnt_logprobs_smoothed(lm, am, symbols, termination_symbol,
                                        lm_only_scale, am_only_scale, boundary)
    return _loss_from_logprobs(px, py, boundary, reduction, return_grad)


def rnnt_loss_pruned(logits: Tensor, symbols: Tensor, ranges: Tensor, termination_symbol: int,
                     boundary: Tensor | None = None, reduction: str = "mean") -> Tensor:
    """RNN-T loss on joiner output evaluated only at the pruned positions.

    Args:
      logits: (B, T, R, C) joiner output on ``do_rnnt_pruning``'s am/lm.
      symbols: (B, S) int64; ranges: (B, T, R) from :func:`get_rnnt_prune_ranges`.
      termination_symbol: blank id; boundary: optional (B, 4).
      reduction: ``"none"`` (B,), ``"sum"`` or ``"mean"`` (sum / B).
    Returns:
      The negated log-likelihood over paths that stay inside ``ranges``, reduced.
    """
    _check_reduction(reduction)
    k2 = _k2()
    if k2 is not None:
        boundary = _for_k2(_check_pruned(logits, symbols, ranges, termination_symbol, boundary),
                           logits)
        return k2.rnnt_loss_pruned(logits=logits, symbols=symbols, ranges=ranges,
                                   termination_symbol=termination_symbol, boundary=boundary,
                                   reduction=reduction)
    px, py = get_rnnt_logprobs_pruned(logits, symbols, ranges, termination_symbol, boundary)
    return _loss_from_logprobs(px, py, boundary, reduction)


# --------------------------------------------------------------------------- pruning


def _monotonic_lower_bound(x: Tensor) -> Tensor:
    """(B, T) -> (B, T): ``out[b, t] = min(x[b, t:])``, the largest non-decreasing lower bound."""
    return torch.flip(torch.cummin(torch.flip(x, dims=[1]), dim=1).values, dims=[1])


def _adjust_pruning_lower_bound(s_begin: Tensor, s_range: int) -> Tensor:
    """Makes (B, T) range starts non-decreasing, 0 on frame 0, and stepping by < ``s_range``.

    The step limit uses ``u[t] = (s_range - 1) * t - s_begin[t]``: ``u`` non-decreasing is the
    same as ``s_begin[t + 1] - s_begin[t] <= s_range - 1``. Clamping ``u >= 0`` forces
    ``s_begin[t] <= (s_range - 1) * t``, hence ``s_begin[0] == 0``.
    """
    s_begin = _monotonic_lower_bound(s_begin)
    slope = (s_range - 1) * torch.arange(s_begin.shape[1], device=s_begin.device)  # (T,)
    u = _monotonic_lower_bound(slope - s_begin).clamp(min=0)
    return slope - u


def _check_prune_args(px_grad: Tensor, py_grad: Tensor, boundary: Tensor, s_range: int
                      ) -> tuple[int, int, int, Tensor]:
    """Validates :func:`get_rnnt_prune_ranges` arguments; returns (B, S, T, boundary)."""
    _check_float("px_grad", px_grad, 3)
    _check_float("py_grad", py_grad, 3)
    B, S, T1 = px_grad.shape
    T = py_grad.shape[2]
    if T1 != T + 1 or tuple(py_grad.shape) != (B, S + 1, T):
        raise ValueError("expected px_grad (B, S, T+1) and py_grad (B, S+1, T) of the regular "
                         f"RNN-T, got {tuple(px_grad.shape)} and {tuple(py_grad.shape)}")
    if isinstance(s_range, bool) or not isinstance(s_range, int) or s_range < 2:
        raise ValueError(f"s_range must be an int >= 2 for the regular RNN-T, got {s_range!r}")
    boundary = _check_boundary(boundary, B, S, T)
    if boundary is None:
        raise ValueError("boundary (B, 4) is required by get_rnnt_prune_ranges")
    return B, S, T, _to_device(boundary, px_grad.device)


def get_rnnt_prune_ranges(px_grad: Tensor, py_grad: Tensor, boundary: Tensor,
                          s_range: int) -> Tensor:
    """Chooses, for each frame, ``s_range`` consecutive symbol positions to keep.

    For frame t the start ``k`` maximises ``sum(py_grad[b, k : k + s_range, t]) -
    px_grad[b, k - 1, t]`` (the occupation of the window, minus paths that enter it from below
    on that frame; arXiv 2206.13236, sec. 3.2). From frame ``T_b - 1`` on the start is
    ``max(S_b - s_range + 1, 0)`` so that the last symbol is reached. Starts are then made
    non-decreasing, 0 on frame 0, and never jump by ``s_range`` or more (no symbol skipped).
    ``s_range > S`` keeps all ``S + 1`` positions.

    Args:
      px_grad: (B, S, T + 1) and py_grad: (B, S + 1, T), from ``return_grad=True``.
      boundary: (B, 4) int64 rows ``[0, 0, S_b, T_b]``.
      s_range: positions kept per frame, >= 2.
    Returns:
      (B, T, R) int64 ranges, ``ranges[b, t] = start[b, t] + arange(R)``, R = min(s_range, S+1).
    """
    B, S, T, boundary = _check_prune_args(px_grad, py_grad, boundary, s_range)
    k2 = _k2()
    if k2 is not None:
        return k2.get_rnnt_prune_ranges(px_grad=px_grad, py_grad=py_grad, boundary=boundary,
                                        s_range=s_range)
    if s_range > S:
        s_range = S + 1
    num_starts = S + 2 - s_range
    window = py_grad.unfold(1, s_range, 1).sum(dim=3)  # (B, num_starts, T)
    entering = torch.cat([px_grad.new_zeros(B, 1, T), px_grad[:, : num_starts - 1, :T]], dim=1)
    s_begin = torch.argmax(window - entering, dim=1)  # (B, T)

    frames = torch.arange(T, device=px_grad.device).reshape(1, T)
    free = frames < boundary[:, 3].reshape(B, 1) - 1  # (B, T)
    last_start = (boundary[:, 2].reshape(B, 1) - s_range + 1).clamp(min=0)  # (B, 1)
    s_begin = torch.where(free, s_begin, last_start)
    s_begin = _adjust_pruning_lower_bound(s_begin, s_range)
    offsets = torch.arange(s_range, device=px_grad.device)
    return s_begin.unsqueeze(2) + offsets  # (B, T, R)


def do_rnnt_pruning(am: Tensor, lm: Tensor, ranges: Tensor) -> tuple[Tensor, Tensor]:
    """Picks the encoder / decoder vectors of the kept lattice cells.

    Args:
      am: (B, T, Ca) encoder output (e.g. ``joiner.encoder_proj(encoder_out)``).
      lm: (B, S + 1, Cl) decoder output (e.g. ``joiner.decoder_proj(decoder_out)``).
      ranges: (B, T, R) int64 from :func:`get_rnnt_prune_ranges`.
    Returns:
      am_pruned (B, T, R, Ca) (an expanded view) and lm_pruned (B, T, R, Cl) with
      ``lm_pruned[b, t, k] = lm[b, ranges[b, t, k]]``.
    """
    if not isinstance(am, Tensor) or am.ndim != 3 or not isinstance(lm, Tensor) or lm.ndim != 3:
        raise ValueError("am must be (B, T, C) and lm (B, S+1, C)")
    B, T, Ca = am.shape
    if lm.shape[0] != B:
        raise ValueError(f"am and lm disagree on B: {tuple(am.shape)} vs {tuple(lm.shape)}")
    _check_ranges(ranges, B, T, lm.shape[1] - 1)
    k2 = _k2()
    if k2 is not None:
        return k2.do_rnnt_pruning(am=am, lm=lm, ranges=ranges)
    R, Cl = ranges.shape[2], lm.shape[2]
    am_pruned = am.unsqueeze(2).expand(B, T, R, Ca)
    # Gather rows of lm itself (not of an expanded copy) so the backward stays (B, S+1, Cl).
    index = ranges.reshape(B, T * R, 1).expand(B, T * R, Cl)
    lm_pruned = torch.gather(lm, 1, index).reshape(B, T, R, Cl)  # (B, T, R, Cl)
    return am_pruned, lm_pruned
