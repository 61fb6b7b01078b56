"""The lattice recursion under every RNN-T loss, as k2's ``mutual_information_recursion``.

Over the ``(S + 1) x (T + 1)`` lattice of utterance ``b``, for k2's "regular" transducer
(``px`` of shape ``(B, S, T + 1)``)::

    p[b, s_begin, t_begin] = 0
    p[b, s, t] = logaddexp(p[b, s - 1, t] + px[b, s - 1, t],
                           p[b, s, t - 1] + py[b, s, t - 1])

and for the "modified" and "constrained" ones, where a symbol also moves to the next frame
(``px`` of shape ``(B, S, T)``)::

    p[b, s, t] = logaddexp(p[b, s - 1, t - 1] + px[b, s - 1, t - 1],
                           p[b, s, t - 1] + py[b, s, t - 1])

``py`` is ``(B, S + 1, T)`` in both. The score is ``p[b, s_end, t_end]`` with ``boundary``
rows ``[s_begin, t_begin, s_end, t_end]`` (``[0, 0, S, T]`` without one).

The regular recursion runs over anti-diagonals ``s + t = d`` (all cells of a diagonal and the
whole batch in one step) inside a custom autograd function whose backward pass runs the
matching beta recursion, so gradients are exact and memory is ``O(B * S * (S + T))`` rather
than an autograd graph per diagonal. The modified recursion is the regular one on a sheared
lattice: with ``u = t - s`` its two moves are ``(s - 1, u) -> (s, u)`` and ``(s, u - 1) ->
(s, u)``, so ``px``/``py`` are re-indexed by ``(s, u)`` and handed to the same code.

Devices: the boundary rows are read on the host (the recursion places its start and end
cells with them) from a CPU copy; a boundary given on the CPU costs no device
synchronisation, one given on a GPU costs one.

Dimension legend:
  B: batch size.
  S: symbols per utterance (padded); the lattice has S + 1 symbol positions.
  T: acoustic frames (padded).
  D: anti-diagonals of the lattice, S + T.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["check_boundary", "check_float", "host_copy", "mutual_information_recursion",
           "to_device"]

NEG_INF = float("-inf")


# --------------------------------------------------------------------------- argument checks


def to_device(t: Tensor, device: torch.device) -> Tensor:
    """``t`` on ``device``; from the CPU the copy does not wait for the device."""
    return t.to(device, non_blocking=True)


def host_copy(boundary: Tensor) -> Tensor:
    """A CPU copy of (small) ``boundary``; free when it is already on the CPU."""
    return boundary if boundary.device.type == "cpu" else boundary.cpu()


def check_float(name: str, x: Tensor, ndim: int) -> None:
    """Raises ValueError unless ``x`` is a float32/float64 tensor with ``ndim`` dimensions."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    if x.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"{name} must be float32 or float64 (cast with .float()), got {x.dtype}")


def check_boundary(boundary: Tensor | None, B: int, S: int, T: int,
                   modified: bool = False) -> Tensor | None:
    """Validates ``boundary`` (B, 4) rows ``[s_begin, t_begin, s_end, t_end]`` on a CPU copy;
    returns it as int64 on the device it was given on.

    Args:
      modified: the modified/constrained topology, where every symbol takes a frame: then
        ``t_end - t_begin >= s_end - s_begin`` is required too (k2 asserts it).
    """
    if boundary is None:
        return None
    if not isinstance(boundary, Tensor) or boundary.is_floating_point() or boundary.is_complex():
        raise ValueError("boundary must be an integer tensor of shape (B, 4)")
    if tuple(boundary.shape) != (B, 4):
        raise ValueError(f"boundary must have shape (B, 4) = {(B, 4)}, got {tuple(boundary.shape)}")
    boundary = boundary.to(torch.int64)
    s_begin, t_begin, s_end, t_end = host_copy(boundary).unbind(1)
    if bool((s_begin < 0).any() | (s_begin > s_end).any() | (s_end > S).any()):
        raise ValueError(f"boundary rows need 0 <= s_begin <= s_end <= S = {S}")
    if bool((t_begin < 0).any() | (t_begin > t_end).any() | (t_end > T).any()):
        raise ValueError(f"boundary rows need 0 <= t_begin <= t_end <= T = {T}")
    if modified and bool((t_end - t_begin < s_end - s_begin).any()
                         | (t_begin < s_begin).any()):
        raise ValueError("the modified/constrained transducer emits one symbol per frame at "
                         "most: boundary rows need T_b >= S_b (and t_begin >= s_begin)")
    return boundary


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
    steps = px.new_full((B, S + T1 - 1, 2, S + 1), NEG_INF)
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
    alpha = steps.new_full((B, D + 1, S1 + 1), NEG_INF)
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
    beta = steps.new_full((B, D + 1, S1 + 1), NEG_INF)
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


def _shear_index(rows: int, cols: int, device: torch.device) -> Tensor:
    """(rows, cols) int64 ``index[s, u] = s + u``: the frame t of sheared cell (s, u)."""
    return (torch.arange(rows, device=device).reshape(rows, 1)
            + torch.arange(cols, device=device).reshape(1, cols))


def _shear(px: Tensor, py: Tensor, boundary: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The modified recursion's inputs as a regular recursion's, on cells (s, u = t - s).

    Args:
      px: (B, S, T); py: (B, S + 1, T); boundary: (B, 4) rows ``[s0, t0, s1, t1]``.
    Returns:
      px (B, S, T + 1) and py (B, S + 1, T) with ``out[b, s, u] = in[b, s, u + s]`` (``-inf``
      past frame T - 1), and the boundary rows ``[s0, t0 - s0, s1, t1 - s1]``.
    """
    B, S, T = px.shape
    pad = S + 1  # u + s reaches T + S; frames from T on are -inf
    px_pad = torch.cat([px, px.new_full((B, S, pad), NEG_INF)], dim=2)  # (B, S, T + S + 1)
    py_pad = torch.cat([py, py.new_full((B, S + 1, pad), NEG_INF)], dim=2)
    px_u = torch.gather(px_pad, 2, _shear_index(S, T + 1, px.device).expand(B, S, T + 1))
    py_u = torch.gather(py_pad, 2, _shear_index(S + 1, T, py.device).expand(B, S + 1, T))
    sheared = boundary.clone()
    sheared[:, 1::2] -= boundary[:, 0::2]
    return px_u, py_u, sheared


def _unshear(grad: Tensor, T: int) -> Tensor:
    """Occupations of sheared cells (B, R, L) back on (s, t) cells: (B, R, T)."""
    B, R, L = grad.shape
    index = _shear_index(R, L, grad.device).expand(B, R, L)
    return grad.new_zeros(B, R, L + R).scatter_(2, index, grad)[:, :, :T]


def _check_pair(px: Tensor, py: Tensor) -> bool:
    """Validates px/py shapes and dtypes; returns True for the modified topology."""
    check_float("px", px, 3)
    check_float("py", py, 3)
    B, S, T1 = px.shape
    T = py.shape[2]
    if py.shape[:2] != (B, S + 1) or T1 not in (T, T + 1) or T1 < 1:
        raise ValueError(f"px (B, S, T+1) or (B, S, T) and py (B, S+1, T) disagree: "
                         f"{tuple(px.shape)}, {tuple(py.shape)}")
    if py.dtype != px.dtype:
        raise ValueError(f"px and py must have one dtype, got {px.dtype} and {py.dtype}")
    return T1 == T


def mutual_information_recursion(
    px: Tensor, py: Tensor, boundary: Tensor | None = None, return_grad: bool = False
) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]:
    """Log-sum over all monotonic lattice paths (the recursions in the module docstring).

    Args:
      px: (B, S, T + 1) log-probs of moving one step along s (regular transducer), or
        (B, S, T) for the modified/constrained one, where that move also takes a frame.
      py: (B, S + 1, T) log-probs of moving one step along t.
      boundary: optional (B, 4) int64 rows ``[s_begin, t_begin, s_end, t_end]``; the
        recursion starts at ``p[b, s_begin, t_begin] = 0`` and the score is ``p[b, s_end, t_end]``.
      return_grad: also return the occupation probabilities, i.e. the gradients of
        ``scores.sum()`` with respect to ``px`` and ``py``.
    Returns:
      scores (B,), or ``(scores, (px_grad, py_grad))`` shaped as px and py.
    """
    modified = _check_pair(px, py)
    B, S, T = py.shape[0], px.shape[1], py.shape[2]
    boundary = check_boundary(boundary, B, S, T, modified)
    if boundary is None:
        if modified and T < S:
            raise ValueError(f"the modified/constrained transducer needs T >= S, got T={T} "
                             f"and S={S}")
        boundary = torch.tensor([[0, 0, S, T]], dtype=torch.int64).expand(B, 4)
    if modified:
        px, py, boundary = _shear(px, py, boundary)
    diagonals = _start_and_end_diagonals(host_copy(boundary))
    boundary = to_device(boundary, px.device).contiguous()
    scores, px_grad, py_grad = _MutualInformation.apply(px, py, boundary, bool(return_grad),
                                                        diagonals)
    if not return_grad:
        return scores
    if modified:
        px_grad, py_grad = _unshear(px_grad, T), _unshear(py_grad, T)
    return scores, (px_grad, py_grad)
