"""Transducer search: greedy, modified beam search, standard beam search, fast beam search.

The functions follow the interface of icefall's ``beam_search.py`` (k2-fsa/icefall,
``egs/librispeech/ASR/zipformer/beam_search.py``): they take ``model`` (a transducer with
this package's stateless ``.decoder`` and ``.joiner``, called as modules through
:class:`icefall.decode.step.TransducerStep`) plus the encoder output, and return token ids
per utterance, or a :class:`DecodingResults` with per-token frame indices.

Conventions shared with icefall:

- The decoder context before the first label is ``[-1] * (K - 1) + [blank_id]``: id -1 embeds
  to zero, which is what the zero left-padding of the decoder sees during training, and blank
  doubles as the start-of-sequence symbol.
- ``unk_id`` (``getattr(model, "unk_id", blank_id)``) is never emitted: choosing it acts as a
  blank.
- ``blank_penalty`` is subtracted from the blank logit before the softmax (icefall indexes
  column 0, which is blank there; here ``decoder.blank_id`` is used).
- Batched searches visit the utterances longest first (icefall packs them with
  ``pack_padded_sequence``); at frame t only utterances with more than t frames take part.
  Results are returned in the caller's order.

Dimension legend: N = utterances, T = encoder frames, C = encoder output dim,
J = joiner dim, V = vocab size, K = decoder context size, W = beam (hypotheses per
utterance), L = hypothesis length including the K context slots, E = emitted tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from icefall.decode.context_graph import ContextGraph, ContextTables
from icefall.decode.step import TransducerStep

_NEG_INF = float("-inf")
_PAD = -2  # fills hypothesis slots past their length (never a real id, never -1)

DECODING_METHODS = ("greedy_search", "beam_search", "modified_beam_search", "fast_beam_search")


@dataclass
class DecodingResults:
    """Search output with alignment information.

    Attributes:
      hyps: hyps[n] is the token-id sequence of utterance n.
      timestamps: timestamps[n][i] is the encoder frame on which hyps[n][i] was emitted.
      scores: for greedy search, scores[n][i] is the log-probability of hyps[n][i] at its
        emission; None for the beam searches.
    """

    hyps: list[list[int]]
    timestamps: list[list[int]]
    scores: list[list[float]] | None = None


# ---------------------------------------------------------------------------
# Input checks and small shared helpers
# ---------------------------------------------------------------------------


def _check_batch(encoder_out: Tensor, encoder_out_lens: Tensor) -> tuple[int, int]:
    """Validates (N, T, C) encoder output and its (N,) lengths; returns (N, T)."""
    if encoder_out.ndim != 3:
        raise ValueError(f"encoder_out must have shape (N, T, C), got {tuple(encoder_out.shape)}")
    N, T, _ = encoder_out.shape
    if N < 1 or T < 1:
        raise ValueError(f"encoder_out is empty: shape {tuple(encoder_out.shape)}")
    if encoder_out_lens.ndim != 1 or encoder_out_lens.numel() != N:
        raise ValueError(f"encoder_out_lens must have shape ({N},), "
                         f"got {tuple(encoder_out_lens.shape)}")
    if encoder_out_lens.dtype.is_floating_point:
        raise ValueError(f"encoder_out_lens must be integers, got {encoder_out_lens.dtype}")
    lens = encoder_out_lens.tolist()
    if min(lens) < 1:
        raise ValueError(f"encoder_out_lens must be positive, got {lens}")
    if max(lens) > T:
        raise ValueError(f"encoder_out_lens {lens} longer than encoder_out (T={T} frames)")
    return N, T


def _check_single(encoder_out: Tensor) -> int:
    """Validates (1, T, C) encoder output of one utterance; returns T."""
    if encoder_out.ndim != 3 or encoder_out.size(0) != 1:
        raise ValueError("encoder_out must have shape (1, T, C) for one utterance, "
                         f"got {tuple(encoder_out.shape)}")
    if encoder_out.size(1) < 1:
        raise ValueError("encoder_out has no frames")
    return encoder_out.size(1)


def _check_positive(value: float, name: str) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {value}")


def _log_probs(logits: Tensor, blank_id: int, blank_penalty: float,
               temperature: float = 1.0) -> Tensor:
    """(M, V) logits -> (M, V) log-probabilities after the blank penalty and temperature."""
    if blank_penalty != 0:
        logits = logits.clone()
        logits[:, blank_id] -= blank_penalty
    return (logits / temperature).log_softmax(dim=-1)


def _sort_by_length(encoder_out_lens: Tensor) -> tuple[list[int], Tensor]:
    """Returns the lengths sorted descending (list) and the (N,) permutation that sorts."""
    order = torch.argsort(encoder_out_lens, descending=True, stable=True)
    return encoder_out_lens[order].tolist(), order


def _project_frames(step: TransducerStep, encoder_out: Tensor, order: Tensor) -> Tensor:
    """(N, T, C) encoder output -> (T, N, J) projected frames, utterances in ``order``.

    Time-major, so that a frame of all active utterances is one contiguous block. The
    Zipformer encoder's output is (T, N, C) in memory, which makes the projection a
    single GEMM without a copy; the sort then moves whole (J,) rows, and is skipped when
    the batch is already longest first.
    """
    enc = step.project_encoder(encoder_out.transpose(0, 1))  # (T, N, J)
    if not bool((order == torch.arange(order.numel(), device=order.device)).all()):
        enc = enc.index_select(1, order)
    return enc


def _active_counts(sorted_lens: Sequence[int], T: int) -> list[int]:
    """active[t] = number of utterances (sorted longest first) that have frame t."""
    ending = [0] * (T + 1)  # ending[t]: utterances with exactly t frames
    for n in sorted_lens:
        ending[n] += 1
    active, left = [], len(sorted_lens)
    for t in range(T):
        left -= ending[t]
        active.append(left)
    return active


def _unsort(items: list, order: Tensor) -> list:
    """Puts per-utterance items computed in sorted order back in the caller's order."""
    out: list = [None] * len(items)
    for i, n in enumerate(order.tolist()):
        out[n] = items[i]
    return out


# ---------------------------------------------------------------------------
# Greedy search
# ---------------------------------------------------------------------------


@torch.inference_mode()
def greedy_search(model: nn.Module, encoder_out: Tensor, max_sym_per_frame: int = 1,
                  blank_penalty: float = 0.0,
                  return_timestamps: bool = False) -> list[int] | DecodingResults:
    """Greedy search for one utterance, up to ``max_sym_per_frame`` symbols per frame.

    Unlike icefall there is no separate cap of 1000 symbols per utterance: the output is
    bounded by T * max_sym_per_frame.

    Args:
      model: transducer with ``.decoder`` and ``.joiner``.
      encoder_out: (1, T, C) encoder output.
      max_sym_per_frame: symbols emitted on one frame before moving on (>= 1).
      blank_penalty: subtracted from the blank logit.
      return_timestamps: return a :class:`DecodingResults` instead of the token list.
    Returns:
      The token ids, or DecodingResults with one utterance.
    """
    T = _check_single(encoder_out)
    if max_sym_per_frame < 1:
        raise ValueError(f"max_sym_per_frame must be >= 1, got {max_sym_per_frame}")
    step = TransducerStep(model)
    blank_id, K, unk_id = step.blank_id, step.context_size, step.unk_id
    device = encoder_out.device
    enc = step.project_encoder(encoder_out[0])  # (T, J)
    hyp = step.initial_context()
    dec = step.decoder_out(torch.tensor([hyp], device=device))  # (1, J)
    timestamps: list[int] = []
    scores: list[float] = []
    for t in range(T):
        for _ in range(max_sym_per_frame):
            logits = step.logits(enc[t:t + 1], dec)  # (1, V)
            logp = _log_probs(logits, blank_id, blank_penalty)[0]
            y = int(logp.argmax())
            if y in (blank_id, unk_id):
                break
            hyp.append(y)
            timestamps.append(t)
            scores.append(float(logp[y]))
            dec = step.decoder_out(torch.tensor([hyp[-K:]], device=device))
    tokens = hyp[K:]
    if return_timestamps:
        return DecodingResults(hyps=[tokens], timestamps=[timestamps], scores=[scores])
    return tokens


@torch.inference_mode()
def greedy_search_batch(model: nn.Module, encoder_out: Tensor, encoder_out_lens: Tensor,
                        blank_penalty: float = 0.0, return_timestamps: bool = False,
                        max_sym_per_frame: int = 1) -> list[list[int]] | DecodingResults:
    """Greedy search over a padded batch; every frame updates all active utterances at once.

    icefall's version fixes ``max_sym_per_frame`` to 1 (the default here); larger values give
    the same results as :func:`greedy_search` per utterance.

    Args:
      model: transducer with ``.decoder`` and ``.joiner``.
      encoder_out: (N, T, C) padded encoder output.
      encoder_out_lens: (N,) valid frames per utterance, 1 <= len <= T.
      blank_penalty: subtracted from the blank logit.
      return_timestamps: return a :class:`DecodingResults` instead of the token lists.
      max_sym_per_frame: symbols emitted on one frame before moving on (>= 1).
    Returns:
      N token-id lists (caller's order), or DecodingResults.
    """
    N, T = _check_batch(encoder_out, encoder_out_lens)
    if max_sym_per_frame < 1:
        raise ValueError(f"max_sym_per_frame must be >= 1, got {max_sym_per_frame}")
    step = TransducerStep(model)
    blank_id, unk_id = step.blank_id, step.unk_id
    device = encoder_out.device
    sorted_lens, order = _sort_by_length(encoder_out_lens.to(device))
    enc = _project_frames(step, encoder_out, order)  # (T, N, J)
    contexts = torch.tensor([step.initial_context()] * N, device=device)  # (N, K)
    dec = step.decoder_out(contexts)  # (N, J)
    records: list[tuple[Tensor, Tensor, Tensor | None]] = []  # (rows, tokens, log-probs)
    frames: list[int] = []
    for t, (frame_t, active) in enumerate(zip(enc.unbind(0), _active_counts(sorted_lens, T))):
        rows: Tensor | None = None  # None: all of [0, active), read as slices
        for _ in range(max_sym_per_frame):
            if rows is None:
                e_t, d_t = (frame_t, dec) if active == N else (frame_t[:active], dec[:active])
            else:
                e_t, d_t = frame_t.index_select(0, rows), dec.index_select(0, rows)
            logits = step.logits(e_t, d_t)  # (R, V)
            if blank_penalty != 0:
                logits[:, blank_id] -= blank_penalty
            tok = logits.argmax(dim=-1)
            emitting = tok != blank_id
            if unk_id != blank_id:
                emitting &= tok != unk_id
            emit = emitting.nonzero().squeeze(1)
            if emit.numel() == 0:
                break
            rows = emit if rows is None else rows.index_select(0, emit)
            tok = tok.index_select(0, emit)
            logp = None  # per-token log-probs only when scores are returned
            if return_timestamps:
                sel = logits[emit]
                logp = sel.gather(1, tok[:, None]).squeeze(1) - sel.logsumexp(dim=-1)
            records.append((rows, tok, logp))
            frames.append(t)
            new = torch.cat([contexts.index_select(0, rows)[:, 1:], tok[:, None]], dim=1)
            contexts.index_copy_(0, rows, new)  # new: (E, K)
            dec.index_copy_(0, rows, step.decoder_out(new))
    hyps, times, scores = _split_records(records, frames, N)
    hyps, times, scores = (_unsort(x, order) for x in (hyps, times, scores))
    if return_timestamps:
        return DecodingResults(hyps=hyps, timestamps=times, scores=scores)
    return hyps


def _split_records(records: list[tuple[Tensor, Tensor, Tensor | None]], frames: list[int],
                   N: int) -> tuple[list[list[int]], list[list[int]], list[list[float]]]:
    """Turns the per-step emissions of greedy search into per-utterance lists.

    Args:
      records: per emission step, (E_s,) utterance rows, tokens and log-probabilities
        (all None when scores were not computed: they are then 0.0).
      frames: the frame of each step.
      N: number of utterances.
    Returns:
      (tokens, frames, log-probs), each N lists in the sorted utterance order.
    """
    hyps: list[list[int]] = [[] for _ in range(N)]
    times: list[list[int]] = [[] for _ in range(N)]
    scores: list[list[float]] = [[] for _ in range(N)]
    if not records:
        return hyps, times, scores
    rows = torch.cat([r[0] for r in records]).cpu()
    toks = torch.cat([r[1] for r in records]).cpu()
    if records[0][2] is None:  # no scores computed
        lps = torch.zeros(rows.numel())
    else:
        lps = torch.cat([r[2] for r in records]).float().cpu()
    per_step = torch.tensor([len(r[0]) for r in records])
    ts = torch.repeat_interleave(torch.tensor(frames), per_step)  # frame of each emission
    rows, perm = torch.sort(rows, stable=True)  # emission order is kept within a row
    counts = torch.bincount(rows, minlength=N).tolist()
    for n, (tk, tt, lp) in enumerate(zip(toks[perm].split(counts), ts[perm].split(counts),
                                         lps[perm].split(counts))):
        hyps[n], times[n], scores[n] = tk.tolist(), tt.tolist(), lp.tolist()
    return hyps, times, scores


# ---------------------------------------------------------------------------
# Modified beam search (at most one symbol per frame, batched)
# ---------------------------------------------------------------------------


@dataclass
class _Beams:
    """Hypotheses of N utterances, W slots each; empty slots have score -inf.

    ys: (N, W, L) ids, the K context slots first, ``_PAD`` past ``lens``;
    lens: (N, W) used length of ys; scores: (N, W) total log-probability (plus the
    context bonuses earned so far, with context biasing);
    times: (N, W, T) frame of each emitted token (first lens - K entries valid), or None
    when not wanted; context: (N, W) context-graph state of each hypothesis, or None
    without biasing; offset: tokens a hypothesis may already hold before frame 0 (a
    stream's earlier chunks, :mod:`icefall.decode.streaming_search`), so that after frame
    t no hypothesis is longer than K + offset + t + 1.
    """

    ys: Tensor
    lens: Tensor
    scores: Tensor
    times: Tensor | None
    context: Tensor | None = None
    offset: int = 0

    @staticmethod
    def initial(N: int, W: int, context: list[int], T: int, device: torch.device) -> _Beams:
        """N utterances of W slots, slot 0 holding the empty hypothesis after ``context``."""
        K = len(context)
        ys = torch.full((N, W, K + T), _PAD, dtype=torch.int64, device=device)
        ys[:, :, :K] = torch.tensor(context, device=device)
        scores = torch.full((N, W), _NEG_INF, device=device)
        scores[:, 0] = 0.0
        return _Beams(ys=ys, lens=torch.full((N, W), K, dtype=torch.int64, device=device),
                      scores=scores,
                      times=torch.zeros((N, W, T), dtype=torch.int64, device=device))


def _candidate_scores(step: TransducerStep, beams: _Beams, enc_t: Tensor,
                      blank_penalty: float, temperature: float) -> Tensor:
    """Scores of every (hypothesis, next symbol) pair of the first A utterances.

    Args:
      beams: state whose first A utterances are active at this frame.
      enc_t: (A, J) projected encoder frame of the active utterances.
    Returns:
      (A, W * V) total log-probabilities; index w * V + v extends slot w with symbol v.
    """
    A, K = enc_t.size(0), step.context_size
    lens = beams.lens[:A]
    W = lens.size(1)
    ctx_idx = lens.unsqueeze(-1) - K + torch.arange(K, device=lens.device)  # (A, W, K)
    context = beams.ys[:A].gather(2, ctx_idx)
    dec = step.decoder_out(context.reshape(A * W, K))  # (A*W, J)
    enc = enc_t.unsqueeze(1).expand(A, W, enc_t.size(-1)).reshape(A * W, -1)
    logits = step.logits(enc, dec)  # (A*W, V)
    logp = _log_probs(logits, step.blank_id, blank_penalty, temperature).reshape(A, W, -1)
    return (beams.scores[:A].unsqueeze(-1) + logp.to(beams.scores.dtype)).reshape(A, -1)


def _merge_duplicates(ys: Tensor, scores: Tensor) -> Tensor:
    """Merges selected candidates that spell the same label sequence.

    As in icefall's HypothesisList.add, equal sequences are one hypothesis whose
    probability is the sum (log-add) of theirs; the best-scored copy (the first, as the
    candidates are sorted) stays and the others become empty slots.

    Args:
      ys: (A, W, L') candidate sequences, ``_PAD`` past their length.
      scores: (A, W) candidate scores sorted descending, -inf for no candidate.
    Returns:
      (A, W) merged scores, -inf at dropped duplicates and empty slots.
    """
    W = scores.size(1)
    valid = torch.isfinite(scores)
    same = (ys.unsqueeze(2) == ys.unsqueeze(1)).all(dim=-1)  # (A, W, W)
    same &= valid.unsqueeze(1) & valid.unsqueeze(2)
    earlier = torch.ones(W, W, dtype=torch.bool, device=ys.device).tril(diagonal=-1)
    duplicate = (same & earlier).any(dim=-1)  # an earlier slot spells the same sequence
    pooled = torch.where(same, scores.unsqueeze(1).expand(-1, W, -1), _NEG_INF)
    merged = pooled.logsumexp(dim=-1)
    return torch.where(valid & ~duplicate, merged, _NEG_INF)


def _context_step(beams: _Beams, tables: ContextTables, A: int, parent: Tensor,
                  tok: Tensor, emit: Tensor) -> Tensor:
    """Context biasing of the kept candidates (A, W): moves each context state by its
    emitted token and returns the bonus earned (0 for blanks), as icefall adds it after
    choosing the candidates."""
    state = beams.context[:A].gather(1, parent)  # (A, W)
    safe_tok = torch.where(emit, tok, 0)
    moved = tables.next_state[state, safe_tok]
    beams.context[:A] = torch.where(emit, moved, state)
    return torch.where(emit, tables.bonus[state, safe_tok], 0.0)


def _beam_step(step: TransducerStep, beams: _Beams, enc_t: Tensor, t: int,
               blank_penalty: float, temperature: float,
               tables: ContextTables | None = None) -> None:
    """Advances the first A = enc_t.size(0) utterances of ``beams`` by frame t, in place."""
    A, W = enc_t.size(0), beams.scores.size(1)
    K, blank_id, unk_id = step.context_size, step.blank_id, step.unk_id
    cand = _candidate_scores(step, beams, enc_t, blank_penalty, temperature)
    V = cand.size(1) // W
    top_scores, top_idx = cand.topk(W, dim=1)  # (A, W), sorted descending
    parent, tok = top_idx // V, top_idx % V
    emit = torch.isfinite(top_scores) & (tok != blank_id) & (tok != unk_id)
    tokens = beams.offset + t + 1  # no hypothesis holds more tokens after this frame
    width = K + tokens
    ys = beams.ys[:A, :, :width].gather(1, parent.unsqueeze(-1).expand(-1, -1, width))
    lens = beams.lens[:A].gather(1, parent)
    ys.scatter_(2, lens.unsqueeze(-1), torch.where(emit, tok, _PAD).unsqueeze(-1))
    if beams.times is not None:
        times = beams.times[:A, :, :tokens].gather(
            1, parent.unsqueeze(-1).expand(-1, -1, tokens))
        times.scatter_(2, (lens - K).unsqueeze(-1), torch.full_like(lens, t).unsqueeze(-1))
        beams.times[:A, :, :tokens] = times
    lens = lens + emit.to(lens.dtype)
    if tables is not None:
        top_scores = top_scores + _context_step(beams, tables, A, parent, tok, emit)
    beams.scores[:A] = _merge_duplicates(ys, top_scores)
    beams.ys[:A, :, :width] = ys
    beams.lens[:A] = lens


@torch.inference_mode()
def modified_beam_search(model: nn.Module, encoder_out: Tensor, encoder_out_lens: Tensor,
                         beam: int = 4, temperature: float = 1.0, blank_penalty: float = 0.0,
                         return_timestamps: bool = False, length_norm: bool = True,
                         context_graph: ContextGraph | None = None
                         ) -> list[list[int]] | DecodingResults:
    """Beam search limited to one symbol per frame, over a padded batch.

    Per frame, each hypothesis is extended by every symbol (blank keeps it unchanged), the
    ``beam`` best (hypothesis, symbol) pairs of each utterance are kept, and kept pairs that
    spell the same label sequence are merged by adding their probabilities. All active
    utterances advance together with tensor operations.

    With ``context_graph`` (icefall's context biasing), every kept candidate that emits a
    token moves its context state and adds the graph's (non-strict) bonus to its score;
    at the end an unfinished match's bonus is taken back before the best hypothesis is
    chosen (:mod:`icefall.decode.context_graph`).

    Args:
      model: transducer with ``.decoder`` and ``.joiner``.
      encoder_out: (N, T, C) padded encoder output.
      encoder_out_lens: (N,) valid frames per utterance, 1 <= len <= T.
      beam: hypotheses kept per utterance (W).
      temperature: softmax temperature.
      blank_penalty: subtracted from the blank logit.
      return_timestamps: return a :class:`DecodingResults` instead of the token lists.
      length_norm: pick the final hypothesis by score / (K + number of tokens), as icefall
        does; False picks the highest total log-probability.
      context_graph: words or phrases to favour (``--context-file``), or None.
    Returns:
      N token-id lists (caller's order), or DecodingResults.
    """
    N, T = _check_batch(encoder_out, encoder_out_lens)
    if int(beam) != beam or beam < 1:
        raise ValueError(f"beam must be a positive integer, got {beam}")
    _check_positive(temperature, "temperature")
    step = TransducerStep(model)
    K = step.context_size
    device = encoder_out.device
    sorted_lens, order = _sort_by_length(encoder_out_lens.to(device))
    enc = _project_frames(step, encoder_out, order)  # (T, N, J)
    beams = _Beams.initial(N, int(beam), step.initial_context(), T, device)
    tables = None
    if context_graph is not None:
        tables = context_graph.transition_tables(int(model.decoder.vocab_size)).to(device)
        beams.context = torch.zeros(N, int(beam), dtype=torch.int64, device=device)
    for t, active in enumerate(_active_counts(sorted_lens, T)):
        _beam_step(step, beams, enc[t, :active], t, blank_penalty, temperature, tables)
    scores = beams.scores
    if tables is not None:  # unfinished matches give their bonus back
        scores = scores + tables.final[beams.context]
    rank = scores / beams.lens if length_norm else scores
    best = rank.argmax(dim=1).tolist()
    ys, lens, times = beams.ys.cpu(), beams.lens.cpu(), beams.times.cpu()
    hyps, stamps = [], []
    for n, w in enumerate(best):
        length = int(lens[n, w])
        hyps.append(ys[n, w, K:length].tolist())
        stamps.append(times[n, w, :length - K].tolist())
    hyps, stamps = _unsort(hyps, order), _unsort(stamps, order)
    if return_timestamps:
        return DecodingResults(hyps=hyps, timestamps=stamps)
    return hyps


# ---------------------------------------------------------------------------
# Standard (Graves 2012) beam search, one utterance
# ---------------------------------------------------------------------------

_Hyps = dict[tuple[int, ...], tuple[float, list[int]]]  # ys -> (log-prob, timestamps)


def _add_hyp(hyps: _Hyps, ys: tuple[int, ...], log_prob: float, times: list[int]) -> None:
    """Adds a hypothesis; an existing one with the same ys gets the log-added probability."""
    if ys in hyps:
        old, old_times = hyps[ys]
        hi, lo = max(old, log_prob), min(old, log_prob)
        hyps[ys] = (hi + math.log1p(math.exp(lo - hi)) if lo > _NEG_INF else hi, old_times)
    else:
        hyps[ys] = (log_prob, times)


def _best_hyps(hyps: _Hyps, k: int) -> _Hyps:
    return dict(sorted(hyps.items(), key=lambda kv: kv[1][0], reverse=True)[:k])


def _expand_frame(A: _Hyps, beam: int, unk_id: int, blank_id: int, t: int,
                  joint: Callable[[tuple[int, ...]], Tensor]) -> _Hyps:
    """One frame of standard beam search: returns the hypotheses that end the frame.

    Repeatedly pops the most probable hypothesis y* of A; y* + blank goes to B, y* + each of
    its top (beam + 1) non-blank symbols goes back to A. Stops once ``beam`` hypotheses of
    B are more probable than the best of A.
    """
    B: _Hyps = {}
    while A:
        ys = max(A, key=lambda key: A[key][0])
        log_prob, times = A.pop(ys)
        logp = joint(ys)  # (V,) log-probabilities at frame t after ys
        _add_hyp(B, ys, log_prob + float(logp[blank_id]), times)
        values, indices = logp.topk(min(beam + 1, logp.numel()))
        for v, i in zip(values.tolist(), indices.tolist()):
            if i not in (blank_id, unk_id):
                _add_hyp(A, ys + (i,), log_prob + v, times + [t])
        if not A:
            break
        best_in_a = max(v[0] for v in A.values())
        kept = {k: v for k, v in B.items() if v[0] > best_in_a}
        if len(kept) >= beam:
            return _best_hyps(kept, beam)
    return _best_hyps(B, beam)


@torch.inference_mode()
def beam_search(model: nn.Module, encoder_out: Tensor, beam: int = 4, temperature: float = 1.0,
                blank_penalty: float = 0.0, return_timestamps: bool = False,
                length_norm: bool = True) -> list[int] | DecodingResults:
    """Standard transducer beam search (Graves 2012, Algorithm 1) for one utterance.

    Any number of symbols per frame; without the prefix-merging step of the paper, as in
    icefall. Slow (one decoder/joiner call per expanded hypothesis): icefall does not
    recommend it either.

    Args:
      model: transducer with ``.decoder`` and ``.joiner``.
      encoder_out: (1, T, C) encoder output.
      beam: hypotheses kept per frame.
      temperature: softmax temperature.
      blank_penalty: subtracted from the blank logit.
      return_timestamps: return a :class:`DecodingResults` instead of the token list.
      length_norm: pick the final hypothesis by score / (K + number of tokens) as icefall
        does; False picks the highest log-probability.
    Returns:
      The token ids, or DecodingResults with one utterance.
    """
    T = _check_single(encoder_out)
    if int(beam) != beam or beam < 1:
        raise ValueError(f"beam must be a positive integer, got {beam}")
    _check_positive(temperature, "temperature")
    step = TransducerStep(model)
    blank_id, K, unk_id = step.blank_id, step.context_size, step.unk_id
    device = encoder_out.device
    enc = step.project_encoder(encoder_out[0])  # (T, J)
    dec_cache: dict[tuple[int, ...], Tensor] = {}
    B: _Hyps = {tuple(step.initial_context()): (0.0, [])}
    for t in range(T):
        joint_cache: dict[tuple[int, ...], Tensor] = {}

        def joint(ys: tuple[int, ...], t: int = t, cache: dict = joint_cache) -> Tensor:
            context = ys[-K:]  # decoder output depends on the last K labels only
            if context not in cache:
                if context not in dec_cache:
                    dec_cache[context] = step.decoder_out(
                        torch.tensor([context], device=device))
                logits = step.logits(enc[t:t + 1], dec_cache[context])
                cache[context] = _log_probs(logits, blank_id, blank_penalty, temperature)[0]
            return cache[context]

        B = _expand_frame(dict(B), int(beam), unk_id, blank_id, t, joint)
    if length_norm:
        ys, (_, times) = max(B.items(), key=lambda kv: kv[1][0] / len(kv[0]))
    else:
        ys, (_, times) = max(B.items(), key=lambda kv: kv[1][0])
    tokens = list(ys[K:])
    if return_timestamps:
        return DecodingResults(hyps=[tokens], timestamps=[times])
    return tokens


# ---------------------------------------------------------------------------
# Fast beam search (needs k2)
# ---------------------------------------------------------------------------


def _import_k2():
    try:
        import k2  # noqa: PLC0415
    except ImportError as e:
        raise ImportError(
            "fast_beam_search needs k2 (https://k2-fsa.github.io/k2/), which is not "
            "installed; use --decoding-method greedy_search, modified_beam_search or "
            "beam_search instead") from e
    return k2


def k2_available() -> bool:
    """True when k2 imports, i.e. when fast_beam_search can run."""
    try:
        _import_k2()
    except ImportError:
        return False
    return True


@torch.inference_mode()
def fast_beam_search_one_best(model: nn.Module, decoding_graph, encoder_out: Tensor,
                              encoder_out_lens: Tensor, beam: float = 20.0,
                              max_states: int = 64, max_contexts: int = 8,
                              temperature: float = 1.0, blank_penalty: float = 0.0,
                              return_timestamps: bool = False,
                              ) -> list[list[int]] | DecodingResults:
    """k2's fast beam search (one symbol per frame), then the best path of the lattice.

    Args:
      model: transducer with ``.decoder`` and ``.joiner``.
      decoding_graph: a k2 acceptor over token ids, or None for ``k2.trivial_graph``.
      encoder_out: (N, T, C) padded encoder output.
      encoder_out_lens: (N,) valid frames per utterance.
      beam, max_states, max_contexts: k2.RnntDecodingConfig pruning settings.
      temperature: softmax temperature; blank_penalty: subtracted from the blank logit.
      return_timestamps: return a :class:`DecodingResults`.
    Returns:
      N token-id lists, or DecodingResults.
    Raises:
      ImportError: when k2 is not installed.
    """
    k2 = _import_k2()
    N, T = _check_batch(encoder_out, encoder_out_lens)
    step = TransducerStep(model)
    K, V = step.context_size, int(model.decoder.vocab_size)
    if decoding_graph is None:
        decoding_graph = k2.trivial_graph(V - 1, device=encoder_out.device)
    config = k2.RnntDecodingConfig(vocab_size=V, decoder_history_len=K, beam=beam,
                                   max_contexts=max_contexts, max_states=max_states)
    streams = k2.RnntDecodingStreams(
        [k2.RnntDecodingStream(decoding_graph) for _ in range(N)], config)
    enc = step.project_encoder(encoder_out)  # (N, T, J)
    for t in range(T):
        shape, contexts = streams.get_contexts()  # contexts: (M, K)
        dec = step.decoder_out(contexts)
        cur = enc[:, t].index_select(0, shape.row_ids(1).to(torch.int64))  # (M, J)
        logits = step.logits(cur, dec)
        streams.advance(_log_probs(logits, step.blank_id, blank_penalty, temperature))
    streams.terminate_and_flush_to_streams()
    lattice = streams.format_output(encoder_out_lens.tolist())
    best = k2.shortest_path(lattice, use_double_scores=True)
    labels = getattr(best, "aux_labels", best.labels)
    if isinstance(labels, k2.RaggedTensor):
        raise ValueError("decoding graphs with ragged aux_labels (e.g. LG) are not supported")
    per_arc = k2.RaggedTensor(best.arcs.shape().remove_axis(1), labels.contiguous()).tolist()
    hyps = [[v for v in arcs if v > 0] for arcs in per_arc]
    if return_timestamps:
        times = [[i for i, v in enumerate(arcs) if v > 0] for arcs in per_arc]
        return DecodingResults(hyps=hyps, timestamps=times)
    return hyps


# ---------------------------------------------------------------------------
# Dispatch for the decode scripts
# ---------------------------------------------------------------------------


def decoding_key(decoding_method: str, beam_size: int = 4, beam: float = 20.0,
                 max_contexts: int = 8, max_states: int = 64) -> str:
    """icefall's result key for a decoding setting: ``greedy_search``, ``beam_size_4``,
    ``beam_20.0_max_contexts_8_max_states_64``."""
    if decoding_method == "greedy_search":
        return "greedy_search"
    if decoding_method == "fast_beam_search":
        return f"beam_{beam}_max_contexts_{max_contexts}_max_states_{max_states}"
    if decoding_method in ("beam_search", "modified_beam_search"):
        return f"beam_size_{beam_size}"
    raise ValueError(f"unknown decoding method '{decoding_method}'; "
                     f"expected one of {', '.join(DECODING_METHODS)}")


def decode_batch(model: nn.Module, encoder_out: Tensor, encoder_out_lens: Tensor,
                 decoding_method: str, beam_size: int = 4, max_sym_per_frame: int = 1,
                 blank_penalty: float = 0.0, decoding_graph=None, beam: float = 20.0,
                 max_contexts: int = 8, max_states: int = 64,
                 context_graph: ContextGraph | None = None) -> list[list[int]]:
    """Runs the search named by ``--decoding-method`` on a batch; returns N token lists.

    Args:
      encoder_out: (N, T, C); encoder_out_lens: (N,).
      decoding_method: one of :data:`DECODING_METHODS`.
      context_graph: context biasing of modified_beam_search (``--context-file``).
      Others: the flags of the decode scripts with the same names.
    """
    decoding_key(decoding_method)  # validates the name
    if decoding_method == "greedy_search":
        return greedy_search_batch(model, encoder_out, encoder_out_lens,
                                   blank_penalty=blank_penalty,
                                   max_sym_per_frame=max_sym_per_frame)
    if decoding_method == "modified_beam_search":
        return modified_beam_search(model, encoder_out, encoder_out_lens, beam=beam_size,
                                    blank_penalty=blank_penalty, context_graph=context_graph)
    if decoding_method == "fast_beam_search":
        return fast_beam_search_one_best(model, decoding_graph, encoder_out, encoder_out_lens,
                                         beam=beam, max_states=max_states,
                                         max_contexts=max_contexts,
                                         blank_penalty=blank_penalty)
    _check_batch(encoder_out, encoder_out_lens)
    return [beam_search(model, encoder_out[n:n + 1, :int(length)], beam=beam_size,
                        blank_penalty=blank_penalty)
            for n, length in enumerate(encoder_out_lens.tolist())]
