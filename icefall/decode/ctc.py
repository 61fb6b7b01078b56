"""CTC searches for models with a CTC head (``--use-ctc 1``), as icefall's ``ctc_decode.py``
runs them: ``ctc-greedy-search`` and ``ctc-prefix-beam-search``.

- Greedy: the best symbol of every frame, repeats merged, blanks removed.
- Prefix beam search (Graves et al. 2006, "Connectionist Temporal Classification", sec.
  3.2, as icefall's ``ctc_prefix_beam_search``): every kept label prefix carries two
  log-probabilities, of the frames so far ending in blank and ending in its last label;
  per frame only the ``beam`` most probable symbols are tried, and the ``beam`` most
  probable prefixes (blank and non-blank endings added) are kept. The result is the most
  probable kept prefix. With a beam as large as the vocabulary and the number of prefixes,
  it is the most probable label sequence exactly.

Dimension legend: N = utterances, T = encoder frames, V = vocab size, W = beam.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_NEG_INF = float("-inf")


def _check(ctc_output: Tensor, encoder_out_lens: Tensor) -> list[int]:
    """Validates (N, T, V) log-probs and (N,) lengths; returns the lengths as ints."""
    if ctc_output.ndim != 3:
        raise ValueError(f"ctc_output must be (N, T, V) log-probs, got {tuple(ctc_output.shape)}")
    lens = encoder_out_lens.tolist()
    if len(lens) != ctc_output.shape[0] or min(lens, default=0) < 0 \
            or max(lens, default=0) > ctc_output.shape[1]:
        raise ValueError(f"encoder_out_lens {lens} do not fit ctc_output "
                         f"{tuple(ctc_output.shape)}")
    return lens


def ctc_greedy_search(ctc_output: Tensor, encoder_out_lens: Tensor,
                      blank_id: int = 0) -> list[list[int]]:
    """Best path of each utterance, repeats merged and blanks removed.

    Args:
      ctc_output: (N, T, V) log-probabilities (``model.ctc_output(encoder_out)``).
      encoder_out_lens: (N,) valid frames.
      blank_id: the blank symbol.
    Returns:
      N token-id lists.
    """
    lens = _check(ctc_output, encoder_out_lens)
    best = ctc_output.argmax(dim=-1).cpu()  # (N, T), one read of the device
    hyps = []
    for n, length in enumerate(lens):
        path = torch.unique_consecutive(best[n, :length])
        hyps.append(path[path != blank_id].tolist())
    return hyps


def _logaddexp(a: float, b: float) -> float:
    if a == _NEG_INF:
        return b
    if b == _NEG_INF:
        return a
    hi, lo = (a, b) if a > b else (b, a)
    return hi + math.log1p(math.exp(lo - hi))


Prefixes = dict[tuple[int, ...], tuple[float, float]]  # prefix -> (ends in blank, in label)


def _extend(prefixes: Prefixes, values: list[float], symbols: list[int], blank_id: int
            ) -> Prefixes:
    """One frame of prefix beam search: every kept prefix extended by every tried symbol."""
    out: Prefixes = {}

    def add(key: tuple[int, ...], blank: float, label: float) -> None:
        old_blank, old_label = out.get(key, (_NEG_INF, _NEG_INF))
        out[key] = (_logaddexp(old_blank, blank), _logaddexp(old_label, label))

    for prefix, (p_blank, p_label) in prefixes.items():
        p_total = _logaddexp(p_blank, p_label)
        for lp, s in zip(values, symbols):
            if s == blank_id:  # *a + blank, *a- + blank -> *a
                add(prefix, p_total + lp, _NEG_INF)
            elif prefix and prefix[-1] == s:
                add(prefix, _NEG_INF, p_label + lp)  # *a + a -> *a (repeat merged)
                add(prefix + (s,), _NEG_INF, p_blank + lp)  # *a- + a -> *aa
            else:
                add(prefix + (s,), _NEG_INF, p_total + lp)  # *a + b -> *ab
    return out


def _best(prefixes: Prefixes, beam: int) -> Prefixes:
    ranked = sorted(prefixes.items(), key=lambda kv: _logaddexp(*kv[1]), reverse=True)
    return dict(ranked[:beam])


def ctc_prefix_beam_search(ctc_output: Tensor, encoder_out_lens: Tensor, beam: int = 4,
                           blank_id: int = 0, return_scores: bool = False
                           ) -> list[list[int]] | tuple[list[list[int]], list[float]]:
    """CTC prefix beam search (see the module docstring).

    Args:
      ctc_output: (N, T, V) log-probabilities.
      encoder_out_lens: (N,) valid frames.
      beam: W, symbols tried per frame and prefixes kept.
      blank_id: the blank symbol.
      return_scores: also return each result's log-probability (all its alignments).
    Returns:
      N token-id lists (and their log-probabilities).
    """
    lens = _check(ctc_output, encoder_out_lens)
    if int(beam) != beam or beam < 1:
        raise ValueError(f"beam must be a positive integer, got {beam}")
    W = min(int(beam), ctc_output.shape[-1])
    if ctc_output.dtype != torch.float64:
        ctc_output = ctc_output.float()  # half precision is summed in float32 at least
    values, symbols = ctc_output.topk(W, dim=-1)  # (N, T, W)
    values, symbols = values.cpu().tolist(), symbols.cpu().tolist()  # one read
    hyps, scores = [], []
    for n, length in enumerate(lens):
        prefixes: Prefixes = {(): (0.0, _NEG_INF)}
        for t in range(length):
            prefixes = _best(_extend(prefixes, values[n][t], symbols[n][t], blank_id), beam)
        best, (p_blank, p_label) = max(prefixes.items(), key=lambda kv: _logaddexp(*kv[1]))
        hyps.append(list(best))
        scores.append(_logaddexp(p_blank, p_label))
    return (hyps, scores) if return_scores else hyps
