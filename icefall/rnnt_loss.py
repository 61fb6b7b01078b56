"""RNN-T losses (full, simple, smoothed, pruned, HAT) with k2's names and semantics, in PyTorch.

The functions here take the same arguments, in the same order, as their namesakes in ``k2``
(``k2.rnnt_loss``, ``k2.rnnt_loss_smoothed``, ``k2.get_rnnt_prune_ranges``, ...), so icefall
code can import them from either place.

Dimension legend:
  B: batch size.
  T: number of acoustic frames (padded to the longest utterance).
  S: number of symbols per utterance (padded); the lattice has S + 1 symbol positions.
  C: vocabulary size, including the termination (blank) symbol.
  R: ``s_range``, the number of symbol positions kept per frame by pruning.

Every loss reduces to :func:`icefall.mutual_information.mutual_information_recursion` over
the ``(S + 1) x (T + 1)`` lattice. ``px[b, s, t]`` is the log-prob of emitting
``symbols[b, s]`` on frame ``t`` after the first ``s`` symbols, and ``py[b, s, t]`` (shape
``(B, S + 1, T)``) that of emitting the termination symbol there, which moves to frame
``t + 1``. The log-likelihood of utterance ``b`` is ``p[b, S_b, T_b]`` and its loss is the
negation. ``boundary`` rows are ``[0, 0, S_b, T_b]``; without it every row is ``[0, 0, S, T]``.

``rnnt_type`` is k2's choice of topology:

- ``"regular"``: any number of symbols on one frame; only the termination symbol moves to the
  next frame. ``px`` is ``(B, S, T + 1)`` with ``px[b, :, T_b] = -inf`` (no symbol after the
  last frame).
- ``"modified"``: every symbol also moves to the next frame (one symbol per frame at most, so
  ``T_b >= S_b``). ``px`` is ``(B, S, T)``.
- ``"constrained"``: the modified topology, where emitting a symbol is also charged the
  termination symbol's log-prob in the *next* context on the *same* frame:
  ``px[b, s, t] += py[b, s + 1, t]``.

``delay_penalty`` (k2's, for training with time masking) adds ``delay_penalty * ((T_b - 1) / 2
- t)`` to every ``px[b, s, t]``: emitting a symbol early is rewarded, late is penalised, and the
reward sums to zero over an utterance's frames. ``use_hat_loss`` (pruned loss only) models
the blank as a Bernoulli variable, ``log sigmoid(logit_blank)``, and the other symbols by a
softmax over the non-blank logits scaled by ``1 - sigmoid(logit_blank)`` (the Hybrid
Autoregressive Transducer, arXiv 2003.07705); as in k2, the blank must be symbol 0.

Backend: set ``ICEFALL_RNNT_BACKEND`` to ``torch``, ``k2`` or ``auto`` (the default: ``k2``
when it can be imported, else ``torch``); see :func:`rnnt_backend`.

Devices: every argument is checked, and values that must be read on the host (the boundary
rows, which the recursions use to place their start and end cells, and from which the
smallest workable prune range is found) are read from a CPU copy. ``boundary`` may therefore
be given on the CPU with the other tensors on a GPU: it is then copied to the GPU without
waiting for it, and the losses never stall the device. A boundary given on the GPU costs one
device synchronisation per recursion. Checking the values of ``symbols`` and ``ranges`` on a
GPU also synchronises; a caller that builds them itself (the transducer model does) can skip
those checks with :func:`trusted_inputs`.
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

from icefall.mutual_information import (
    NEG_INF,
    check_boundary,
    check_float,
    host_copy,
    mutual_information_recursion,
    to_device,
)

__all__ = [
    "RNNT_TYPES",
    "do_rnnt_pruning",
    "get_hat_logprobs_pruned",
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
RNNT_TYPES = ("regular", "modified", "constrained")
_REDUCTIONS = ("none", "sum", "mean")


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
    return None if boundary is None else to_device(boundary.to(torch.int64), like.device)


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


def _check_reduction(reduction: str | None) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _check_options(rnnt_type: str, delay_penalty: float = 0.0) -> None:
    if rnnt_type not in RNNT_TYPES:
        raise ValueError(f"rnnt_type must be one of {RNNT_TYPES}, got {rnnt_type!r}")
    if isinstance(delay_penalty, bool) or not isinstance(delay_penalty, (int, float)) \
            or delay_penalty != delay_penalty:
        raise ValueError(f"delay_penalty must be a number, got {delay_penalty!r}")


def _check_symbols(symbols: Tensor, B: int, S: int, C: int, termination_symbol: int) -> None:
    if not isinstance(symbols, Tensor) or symbols.dtype != torch.int64:
        raise ValueError("symbols must be an int64 (Long) tensor")
    if tuple(symbols.shape) != (B, S):
        raise ValueError(f"symbols must have shape (B, S) = {(B, S)}, got {tuple(symbols.shape)}")
    if not 0 <= int(termination_symbol) < C:
        raise ValueError(f"termination_symbol must be in [0, {C}), got {termination_symbol}")
    if _check_values() and symbols.numel() and bool(((symbols < 0) | (symbols >= C)).any()):
        raise ValueError(f"symbols must be in [0, {C}) (C = vocabulary size)")


def _check_lengths(boundary: Tensor | None, B: int, S: int, T: int, rnnt_type: str
                   ) -> Tensor | None:
    """check_boundary for ``rnnt_type``: the modified topologies need T_b >= S_b (k2's
    _validate_st_lengths, here a ValueError)."""
    modified = rnnt_type != "regular"
    if boundary is None and modified and T < S:
        raise ValueError(f"the {rnnt_type} transducer emits one symbol per frame at most: it "
                         f"needs T >= S, got T={T} and S={S}")
    return check_boundary(boundary, B, S, T, modified)


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


# --------------------------------------------------------------------------- log-prob builders


def _fix_for_boundary(px: Tensor, boundary: Tensor | None) -> Tensor:
    """Sets ``px[b, :, T_b]`` to ``-inf`` (no symbol after the last frame). px: (B, S, T + 1)."""
    if boundary is None:
        return px
    B, _, T1 = px.shape
    frames = torch.arange(T1, device=px.device).reshape(1, 1, T1)
    after_last = frames == to_device(boundary[:, 3], px.device).reshape(B, 1, 1)  # (B, 1, T+1)
    return px.masked_fill(after_last, NEG_INF)


def _finish(px: Tensor, py: Tensor, rnnt_type: str, boundary: Tensor | None
            ) -> tuple[Tensor, Tensor]:
    """Shapes per-frame log-probs for ``rnnt_type``.

    Args:
      px: (B, S, T) log-probs of each symbol on each frame; py: (B, S + 1, T).
    Returns:
      (px, py): regular px gets the one-past-the-last frame, ``-inf`` there and from
      ``T_b`` on, (B, S, T + 1); constrained px is charged ``py[:, 1:]``; modified px is
      unchanged (B, S, T).
    """
    py = py.contiguous()
    if rnnt_type == "regular":
        tail = px.new_full((px.shape[0], px.shape[1], 1), NEG_INF)
        return _fix_for_boundary(torch.cat([px, tail], dim=2), boundary), py
    if rnnt_type == "constrained":
        px = px + py[:, 1:]
    return px.contiguous(), py


def _check_lm_am(lm: Tensor, am: Tensor, symbols: Tensor, termination_symbol: int,
                 boundary: Tensor | None, rnnt_type: str
                 ) -> tuple[int, int, int, int, Tensor | None]:
    """Validates the simple-loss inputs; returns (B, T, S, C, boundary)."""
    _check_options(rnnt_type)
    check_float("lm", lm, 3)
    check_float("am", am, 3)
    B, T, C = am.shape
    if lm.shape[0] != B or lm.shape[2] != C or lm.shape[1] < 1:
        raise ValueError(f"lm must have shape (B, S+1, C) with B={B}, C={C}; am is (B, T, C) = "
                         f"{tuple(am.shape)}, lm is {tuple(lm.shape)}")
    if lm.dtype != am.dtype:
        raise ValueError(f"lm and am must have one dtype, got {lm.dtype} and {am.dtype}")
    S = lm.shape[1] - 1
    _check_symbols(symbols, B, S, C, termination_symbol)
    return B, T, S, C, _check_lengths(boundary, B, S, T, rnnt_type)


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
                      rnnt_type: str = "regular", boundary: Tensor | None = None
                      ) -> tuple[Tensor, Tensor]:
    """px, py of the simple loss, whose joiner is ``lm[b, s] + am[b, t]`` then log-softmax.

    Args:
      lm: (B, S + 1, C) unnormalised prediction-network scores.
      am: (B, T, C) unnormalised encoder scores.
      symbols: (B, S) int64 labels in ``[0, C)``.
      termination_symbol: the blank id.
      rnnt_type: ``"regular"``, ``"modified"`` or ``"constrained"`` (module docstring).
      boundary: optional (B, 4) rows ``[0, 0, S_b, T_b]``.
    Returns:
      px (B, S, T + 1) (regular) or (B, S, T), and py (B, S + 1, T), as taken by
      :func:`mutual_information_recursion`.
    """
    _, T, S, _, boundary = _check_lm_am(lm, am, symbols, termination_symbol, boundary,
                                        rnnt_type)
    parts = _simple_terms(lm, am, symbols, termination_symbol)
    norm = parts["normalizers"]
    px = parts["px_am"] + parts["px_lm"] - norm[:, :S]  # (B, S, T)
    py = parts["py_am"] + parts["py_lm"] - norm  # (B, S + 1, T)
    return _finish(px, py, rnnt_type, boundary)


def get_rnnt_logprobs_smoothed(
    lm: Tensor, am: Tensor, symbols: Tensor, termination_symbol: int,
    lm_only_scale: float = 0.1, am_only_scale: float = 0.1, boundary: Tensor | None = None,
    rnnt_type: str = "regular",
) -> tuple[Tensor, Tensor]:
    """px, py of the smoothed simple loss (k2's interpolation of three log-prob sources).

    Each log-prob is ``(1 - lm_only_scale - am_only_scale) * combined + lm_only_scale * lm_only
    + am_only_scale * am_only`` where ``combined = log_softmax(lm + am)``,
    ``lm_only = log_softmax(lm)`` and ``am_only = log_softmax(am + log unigram)``; the unigram
    is ``softmax(lm)`` averaged over all B * (S + 1) positions, padding included (as in k2),
    so it depends on the whole batch. The constrained topology's extra blank term is taken
    from the interpolated py.

    Args: as :func:`get_rnnt_logprobs`, plus the two scales (floats).
    Returns:
      px (B, S, T + 1) (regular) or (B, S, T), and py (B, S + 1, T).
    """
    B, T, S, C, boundary = _check_lm_am(lm, am, symbols, termination_symbol, boundary,
                                        rnnt_type)
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
    return _finish(px, py, rnnt_type, boundary)


def _check_logits(logits: Tensor, symbols: Tensor, termination_symbol: int,
                  boundary: Tensor | None, S: int, rnnt_type: str) -> Tensor | None:
    """Validates (B, T, *, C) logits against (B, S) symbols; returns the checked boundary."""
    _check_options(rnnt_type)
    check_float("logits", logits, 4)
    B, T, _, C = logits.shape
    _check_symbols(symbols, B, S, C, termination_symbol)
    return _check_lengths(boundary, B, S, T, rnnt_type)


def _check_joint(logits: Tensor, symbols: Tensor, termination_symbol: int,
                 boundary: Tensor | None, rnnt_type: str) -> Tensor | None:
    """Validates full-loss arguments; logits (B, T, S + 1, C). Returns the checked boundary."""
    if not isinstance(logits, Tensor) or logits.ndim != 4:
        raise ValueError("logits must be a 4-D tensor (B, T, S+1, C)")
    return _check_logits(logits, symbols, termination_symbol, boundary, logits.shape[2] - 1,
                         rnnt_type)


def _check_pruned(logits: Tensor, symbols: Tensor, ranges: Tensor, termination_symbol: int,
                  boundary: Tensor | None, rnnt_type: str) -> Tensor | None:
    """Validates pruned-loss arguments; logits (B, T, R, C). Returns the checked boundary."""
    if not isinstance(logits, Tensor) or logits.ndim != 4:
        raise ValueError("logits must be a 4-D tensor (B, T, s_range, C)")
    S = symbols.shape[1] if isinstance(symbols, Tensor) and symbols.ndim == 2 else -1
    boundary = _check_logits(logits, symbols, termination_symbol, boundary, S, rnnt_type)
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


def _hat_pick_symbol_and_blank(logits: Tensor, symbols: Tensor) -> tuple[Tensor, Tensor]:
    """HAT log-probs of ``logits`` (B, T, K, C) at ``symbols`` (B, T, K) and at blank 0.

    The blank is Bernoulli, ``log sigmoid(l_0)``; symbol c > 0 is
    ``log(1 - sigmoid(l_0)) + log_softmax(l_1..l_{C-1})[c]``.

    Returns:
      Two (B, T, K) tensors: the symbol log-probs and the blank log-probs.
    """
    blank_logit = logits[..., 0]  # (B, T, K)
    blank = torch.nn.functional.logsigmoid(blank_logit)
    not_blank = blank - blank_logit  # log(1 - sigmoid(l_0))
    non_blank_norm = torch.logsumexp(logits[..., 1:], dim=3)  # (B, T, K)
    picked = torch.gather(logits, 3, symbols.unsqueeze(3)).squeeze(3)  # (B, T, K)
    return picked - non_blank_norm + not_blank, blank


def get_rnnt_logprobs_joint(logits: Tensor, symbols: Tensor, termination_symbol: int,
                            rnnt_type: str = "regular", boundary: Tensor | None = None
                            ) -> tuple[Tensor, Tensor]:
    """px, py of the full loss from joiner output.

    Args:
      logits: (B, T, S + 1, C) joiner output (unnormalised).
      symbols: (B, S) int64; termination_symbol: blank id.
      rnnt_type: ``"regular"``, ``"modified"`` or ``"constrained"``; boundary: optional (B, 4).
    Returns:
      px (B, S, T + 1) (regular) or (B, S, T), and py (B, S + 1, T).
    """
    boundary = _check_joint(logits, symbols, termination_symbol, boundary, rnnt_type)
    B, T, S1, _ = logits.shape
    S = S1 - 1
    # Position S has no symbol to emit: it picks the blank there and that column is dropped.
    blank = symbols.new_full((B, 1), termination_symbol)
    per_cell = torch.cat([symbols, blank], dim=1).unsqueeze(1).expand(B, T, S + 1)
    px, py = _pick_symbol_and_blank(logits, per_cell, termination_symbol)  # (B, T, S + 1)
    return _finish(px[:, :, :S].transpose(1, 2), py.transpose(1, 2), rnnt_type, boundary)


def _scatter_pruned(px_kept: Tensor, py_kept: Tensor, ranges: Tensor, S: int
                    ) -> tuple[Tensor, Tensor]:
    """Kept cells' log-probs (B, T, R) onto the lattice, ``-inf`` elsewhere.

    Returns:
      px (B, S, T) and py (B, S + 1, T).
    """
    B, T, _ = px_kept.shape
    lattice = px_kept.new_full((B, T, S + 1), NEG_INF)
    px = lattice.scatter(2, ranges, px_kept)[:, :, :S]  # (B, T, S); position S has no symbol
    py = lattice.scatter(2, ranges, py_kept)  # (B, T, S + 1)
    return px.transpose(1, 2), py.transpose(1, 2)


def _kept_symbols(symbols: Tensor, ranges: Tensor, termination_symbol: int) -> Tensor:
    """(B, T, R) symbol to emit at each kept cell (the blank at position S)."""
    B, T, R = ranges.shape
    blank = symbols.new_full((B, 1), termination_symbol)
    with_blank = torch.cat([symbols, blank], dim=1)  # (B, S + 1)
    return torch.gather(with_blank, 1, ranges.reshape(B, T * R)).reshape(B, T, R)


def get_rnnt_logprobs_pruned(logits: Tensor, symbols: Tensor, ranges: Tensor,
                             termination_symbol: int, boundary: Tensor | None = None,
                             rnnt_type: str = "regular") -> tuple[Tensor, Tensor]:
    """px, py of the pruned loss: cells outside ``ranges`` get ``-inf``.

    Args:
      logits: (B, T, R, C) joiner output on the kept positions; ``logits[b, t, k]`` belongs to
        symbol position ``ranges[b, t, k]``.
      symbols: (B, S) int64; ranges: (B, T, R) int64 positions in ``[0, S]``.
      termination_symbol: blank id; boundary: optional (B, 4).
      rnnt_type: ``"regular"``, ``"modified"`` or ``"constrained"``.
    Returns:
      px (B, S, T + 1) (regular) or (B, S, T), and py (B, S + 1, T).
    """
    boundary = _check_pruned(logits, symbols, ranges, termination_symbol, boundary, rnnt_type)
    kept = _kept_symbols(symbols, ranges, termination_symbol)
    px_kept, py_kept = _pick_symbol_and_blank(logits, kept, termination_symbol)  # (B, T, R)
    px, py = _scatter_pruned(px_kept, py_kept, ranges, symbols.shape[1])
    return _finish(px, py, rnnt_type, boundary)


def get_hat_logprobs_pruned(logits: Tensor, symbols: Tensor, ranges: Tensor,
                            termination_symbol: int, boundary: Tensor | None = None,
                            rnnt_type: str = "regular") -> tuple[Tensor, Tensor]:
    """px, py of the pruned HAT loss (see the module docstring); as k2, blank must be 0.

    Args: as :func:`get_rnnt_logprobs_pruned`.
    Returns:
      px (B, S, T + 1) (regular) or (B, S, T), and py (B, S + 1, T).
    """
    boundary = _check_pruned(logits, symbols, ranges, termination_symbol, boundary, rnnt_type)
    if termination_symbol != 0:
        raise ValueError(f"the HAT loss needs the blank (termination symbol) to be 0, got "
                         f"{termination_symbol}")
    px_kept, py_kept = _hat_pick_symbol_and_blank(logits, _kept_symbols(symbols, ranges, 0))
    px, py = _scatter_pruned(px_kept, py_kept, ranges, symbols.shape[1])
    return _finish(px, py, rnnt_type, boundary)


# --------------------------------------------------------------------------- losses


def _delay_penalty(px: Tensor, boundary: Tensor | None, rnnt_type: str,
                   delay_penalty: float) -> Tensor:
    """``px + delay_penalty * ((T_b - 1) / 2 - t)`` (k2's), or px when the penalty is not
    positive. px: (B, S, T + 1) or (B, S, T)."""
    if delay_penalty <= 0.0:
        return px
    B, _, T0 = px.shape
    T = T0 - 1 if rnnt_type == "regular" else T0
    if boundary is None:
        offset = torch.full((B,), (T - 1) / 2, dtype=px.dtype)
    else:  # where the boundary is (the host in training): moved without waiting
        offset = (boundary[:, 3] - 1).to(px.dtype) / 2
    frames = torch.arange(T0, device=px.device, dtype=px.dtype)
    penalty = to_device(offset, px.device).reshape(B, 1, 1) - frames.reshape(1, 1, T0)
    return px + penalty * delay_penalty  # (B, S, T0)


def _loss_from_logprobs(px: Tensor, py: Tensor, boundary: Tensor | None, rnnt_type: str,
                        delay_penalty: float, reduction: str, return_grad: bool = False):
    """Negated recursion scores, reduced; with the occupation grads when asked."""
    px = _delay_penalty(px, boundary, rnnt_type, delay_penalty)
    out = mutual_information_recursion(px.contiguous(), py, boundary, return_grad)
    scores, grads = out if return_grad else (out, None)
    loss = _reduce(-scores, reduction)
    return (loss, grads) if return_grad else loss


def rnnt_loss(logits: Tensor, symbols: Tensor, termination_symbol: int,
              boundary: Tensor | None = None, rnnt_type: str = "regular",
              delay_penalty: float = 0.0, reduction: str = "mean") -> Tensor:
    """Full RNN-T loss on joiner output.

    Args:
      logits: (B, T, S + 1, C) joiner output (unnormalised).
      symbols: (B, S) int64 labels; termination_symbol: blank id.
      boundary: optional (B, 4) int64 rows ``[0, 0, S_b, T_b]``.
      rnnt_type: ``"regular"``, ``"modified"`` or ``"constrained"`` (module docstring).
      delay_penalty: k2's symbol-delay penalty (0 for none).
      reduction: ``"none"`` (B,), ``"sum"`` or ``"mean"`` (sum / B) scalar.
    Returns:
      The negated log-likelihood, reduced.
    """
    _check_reduction(reduction)
    _check_options(rnnt_type, delay_penalty)
    k2 = _k2()
    if k2 is not None:
        boundary = _for_k2(_check_joint(logits, symbols, termination_symbol, boundary,
                                        rnnt_type), logits)
        return k2.rnnt_loss(logits=logits, symbols=symbols, termination_symbol=termination_symbol,
                            boundary=boundary, rnnt_type=rnnt_type,
                            delay_penalty=delay_penalty, reduction=reduction)
    px, py = get_rnnt_logprobs_joint(logits, symbols, termination_symbol, rnnt_type, boundary)
    return _loss_from_logprobs(px, py, boundary, rnnt_type, delay_penalty, reduction)


def rnnt_loss_simple(lm: Tensor, am: Tensor, symbols: Tensor, termination_symbol: int,
                     boundary: Tensor | None = None, rnnt_type: str = "regular",
                     delay_penalty: float = 0.0, reduction: str = "mean",
                     return_grad: bool = False):
    """RNN-T loss whose joiner is plain addition ``lm[b, s] + am[b, t]``.

    Args:
      lm: (B, S + 1, C); am: (B, T, C); symbols: (B, S) int64; termination_symbol: blank id.
      boundary: optional (B, 4); rnnt_type, delay_penalty: as :func:`rnnt_loss`.
      reduction: ``"none"``, ``"sum"`` or ``"mean"``.
      return_grad: also return ``(px_grad, py_grad)`` (shaped as px and py), the gradient
        of the summed log-likelihood w.r.t. px and py (occupation probabilities).
    Returns:
      loss, or ``(loss, (px_grad, py_grad))``.
    """
    _check_reduction(reduction)
    _check_options(rnnt_type, delay_penalty)
    k2 = _k2()
    if k2 is not None:
        checked = _check_lm_am(lm, am, symbols, termination_symbol, boundary, rnnt_type)[4]
        return k2.rnnt_loss_simple(lm=lm, am=am, symbols=symbols,
                                   termination_symbol=termination_symbol,
                                   boundary=_for_k2(checked, am), rnnt_type=rnnt_type,
                                   delay_penalty=delay_penalty, reduction=reduction,
                                   return_grad=return_grad)
    px, py = get_rnnt_logprobs(lm, am, symbols, termination_symbol, rnnt_type, boundary)
    return _loss_from_logprobs(px, py, boundary, rnnt_type, delay_penalty, reduction,
                               return_grad)


def rnnt_loss_smoothed(lm: Tensor, am: Tensor, symbols: Tensor, termination_symbol: int,
                       lm_only_scale: float = 0.1, am_only_scale: float = 0.1,
                       boundary: Tensor | None = None, rnnt_type: str = "regular",
                       delay_penalty: float = 0.0, reduction: str = "mean",
                       return_grad: bool = False):
    """Simple loss with LM-only / AM-only smoothing (see :func:`get_rnnt_logprobs_smoothed`).

    Args:
      lm: (B, S + 1, C); am: (B, T, C); symbols: (B, S) int64; termination_symbol: blank id.
      lm_only_scale, am_only_scale: interpolation weights (icefall's ``lm_scale``, ``am_scale``).
      boundary: optional (B, 4); rnnt_type, delay_penalty: as :func:`rnnt_loss`.
      reduction: ``"none"``, ``"sum"`` or ``"mean"``.
      return_grad: also return ``(px_grad, py_grad)`` for :func:`get_rnnt_prune_ranges`.
    Returns:
      loss, or ``(loss, (px_grad, py_grad))``.
    """
    _check_reduction(reduction)
    _check_options(rnnt_type, delay_penalty)
    k2 = _k2()
    if k2 is not None:
        checked = _check_lm_am(lm, am, symbols, termination_symbol, boundary, rnnt_type)[4]
        return k2.rnnt_loss_smoothed(
            lm=lm, am=am, symbols=symbols, termination_symbol=termination_symbol,
            lm_only_scale=lm_only_scale, am_only_scale=am_only_scale,
            boundary=_for_k2(checked, am), rnnt_type=rnnt_type, delay_penalty=delay_penalty,
            reduction=reduction, return_grad=return_grad)
    px, py = get_rnnt_logprobs_smoothed(lm, am, symbols, termination_symbol, lm_only_scale,
                                        am_only_scale, boundary, rnnt_type)
    return _loss_from_logprobs(px, py, boundary, rnnt_type, delay_penalty, reduction,
                               return_grad)


def rnnt_loss_pruned(logits: Tensor, symbols: Tensor, ranges: Tensor, termination_symbol: int,
                     boundary: Tensor | None = None, rnnt_type: str = "regular",
                     delay_penalty: float = 0.0, reduction: str = "mean",
                     use_hat_loss: bool = False) -> Tensor:
    """RNN-T loss on joiner output evaluated only at the pruned positions.

    Args:
      logits: (B, T, R, C) joiner output on ``do_rnnt_pruning``'s am/lm.
      symbols: (B, S) int64; ranges: (B, T, R) from :func:`get_rnnt_prune_ranges`.
      termination_symbol: blank id; boundary: optional (B, 4).
      rnnt_type, delay_penalty: as :func:`rnnt_loss`.
      reduction: ``"none"`` (B,), ``"sum"`` or ``"mean"`` (sum / B).
      use_hat_loss: the HAT distribution instead of a softmax (blank must be 0).
    Returns:
      The negated log-likelihood over paths that stay inside ``ranges``, reduced.
    """
    _check_reduction(reduction)
    _check_options(rnnt_type, delay_penalty)
    k2 = _k2()
    if k2 is not None:
        checked = _check_pruned(logits, symbols, ranges, termination_symbol, boundary,
                                rnnt_type)
        return k2.rnnt_loss_pruned(logits=logits, symbols=symbols, ranges=ranges,
                                   termination_symbol=termination_symbol,
                                   boundary=_for_k2(checked, logits), rnnt_type=rnnt_type,
                                   delay_penalty=delay_penalty, reduction=reduction,
                                   use_hat_loss=use_hat_loss)
    logprobs = get_hat_logprobs_pruned if use_hat_loss else get_rnnt_logprobs_pruned
    px, py = logprobs(logits, symbols, ranges, termination_symbol, boundary, rnnt_type)
    return _loss_from_logprobs(px, py, boundary, rnnt_type, delay_penalty, reduction)


# --------------------------------------------------------------------------- pruning


def _monotonic_lower_bound(x: Tensor) -> Tensor:
    """(B, T) -> (B, T): ``out[b, t] = min(x[b, t:])``, the largest non-decreasing lower bound."""
    return torch.flip(torch.cummin(torch.flip(x, dims=[1]), dim=1).values, dims=[1])


def _adjust_pruning_lower_bound(s_begin: Tensor, max_step: int) -> Tensor:
    """Makes (B, T) range starts non-decreasing, 0 on frame 0, and stepping by < ``max_step``.

    The step limit uses ``u[t] = (max_step - 1) * t - s_begin[t]``: ``u`` non-decreasing is the
    same as ``s_begin[t + 1] - s_begin[t] <= max_step - 1``. Clamping ``u >= 0`` forces
    ``s_begin[t] <= (max_step - 1) * t``, hence ``s_begin[0] == 0``.
    """
    s_begin = _monotonic_lower_bound(s_begin)
    slope = (max_step - 1) * torch.arange(s_begin.shape[1], device=s_begin.device)  # (T,)
    u = _monotonic_lower_bound(slope - s_begin).clamp(min=0)
    return slope - u


def _smallest_prune_range(boundary: Tensor) -> int:
    """The smallest s_range of the regular topology that leaves every utterance a path:
    ``(s_range - 1) * T_b >= S_b``, i.e. ``(S_b - 1) // T_b + 2`` (k2's), from a CPU copy."""
    _, _, s_end, t_end = host_copy(boundary).unbind(1)
    if s_end.numel() == 0:
        return 2
    need = (s_end - 1).clamp(min=0) // t_end.clamp(min=1) + 2
    return int(need.max())


def _check_prune_args(px_grad: Tensor, py_grad: Tensor, boundary: Tensor, s_range: int
                      ) -> tuple[int, int, bool, Tensor]:
    """Validates :func:`get_rnnt_prune_ranges` arguments; returns (S, T, regular,
    boundary)."""
    check_float("px_grad", px_grad, 3)
    check_float("py_grad", py_grad, 3)
    B, S, T1 = px_grad.shape
    T = py_grad.shape[2]
    if T1 not in (T, T + 1) or tuple(py_grad.shape) != (B, S + 1, T):
        raise ValueError("expected px_grad (B, S, T+1) (regular) or (B, S, T) (modified) and "
                         f"py_grad (B, S+1, T), got {tuple(px_grad.shape)} and "
                         f"{tuple(py_grad.shape)}")
    regular = T1 == T + 1
    low = 2 if regular else 1
    if isinstance(s_range, bool) or not isinstance(s_range, int) or s_range < low:
        raise ValueError(f"s_range must be an int >= {low} for the "
                         f"{'regular' if regular else 'modified'} RNN-T, got {s_range!r}")
    boundary = check_boundary(boundary, B, S, T, modified=not regular)
    if boundary is None:
        raise ValueError("boundary (B, 4) is required by get_rnnt_prune_ranges")
    return S, T, regular, boundary


def get_rnnt_prune_ranges(px_grad: Tensor, py_grad: Tensor, boundary: Tensor,
                          s_range: int) -> Tensor:
    """Chooses, for each frame, ``s_range`` consecutive symbol positions to keep.

    For frame t the start ``k`` maximises ``sum(py_grad[b, k : k + s_range, t]) -
    px_grad[b, k - 1, t]`` (the occupation of the window, minus paths that enter it from below
    on that frame; arXiv 2206.13236, sec. 3.2). From frame ``T_b - 1`` on the start is
    ``max(S_b - s_range + 1, 0)`` so that the last symbol is reached. Starts are then made
    non-decreasing, 0 on frame 0, and never jump by ``s_range`` or more (no symbol skipped; by
    2 or more for the modified topology, which moves one symbol per frame).

    As in k2, ``s_range`` grows where an utterance has too few frames for its symbols: a
    regular path advances at most ``s_range - 1`` positions per frame, so ``s_range`` is
    raised to ``max((S_b - 1) // T_b + 2)`` (an utterance of 1 frame and 9 symbols needs 10),
    and the ranges are then wider than asked. ``s_range > S`` keeps all ``S + 1`` positions.

    Args:
      px_grad: (B, S, T + 1) (regular) or (B, S, T) (modified), and py_grad: (B, S + 1, T),
        from ``return_grad=True``.
      boundary: (B, 4) int64 rows ``[0, 0, S_b, T_b]``.
      s_range: positions kept per frame, >= 2 (>= 1 for the modified topology).
    Returns:
      (B, T, R) int64 ranges, ``ranges[b, t] = start[b, t] + arange(R)``,
      R = min(max(s_range, the smallest workable), S + 1).
    """
    S, T, regular, boundary = _check_prune_args(px_grad, py_grad, boundary, s_range)
    if regular:
        s_range = max(s_range, _smallest_prune_range(boundary))
    k2 = _k2()
    if k2 is not None:
        return k2.get_rnnt_prune_ranges(px_grad=px_grad, py_grad=py_grad,
                                        boundary=to_device(boundary, px_grad.device),
                                        s_range=s_range)
    boundary = to_device(boundary, px_grad.device)
    B = px_grad.shape[0]
    s_range = min(s_range, S + 1)
    num_starts = S + 2 - s_range
    window = py_grad.unfold(1, s_range, 1).sum(dim=3)  # (B, num_starts, T)
    entering = torch.cat([px_grad.new_zeros(B, 1, T), px_grad[:, : num_starts - 1, :T]], dim=1)
    s_begin = torch.argmax(window - entering, dim=1)  # (B, T)

    frames = torch.arange(T, device=px_grad.device).reshape(1, T)
    free = frames < boundary[:, 3].reshape(B, 1) - 1  # (B, T)
    last_start = (boundary[:, 2].reshape(B, 1) - s_range + 1).clamp(min=0)  # (B, 1)
    s_begin = torch.where(free, s_begin, last_start)
    s_begin = _adjust_pruning_lower_bound(s_begin, s_range if regular else 2)
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
