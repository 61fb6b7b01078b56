"""Modified beam search over chunks of many streams (icefall's
``zipformer/streaming_beam_search.py``): each stream carries its hypotheses from one chunk
to the next, so that decoding a stream chunk by chunk gives what
:func:`icefall.decode.search.modified_beam_search` gives on the whole encoder output.

A chunk of N streams is one batch of the offline search's frame step (the same candidate
scoring, top-W selection and merging of equal label sequences): the streams' hypotheses
are stacked into one ``(N, W, L)`` block before the chunk and split again after it. They
stay on the model's device; the block is trimmed to its longest hypothesis once per
chunk (one read of the device per chunk, not per frame).

Dimension legend: N = streams, T = encoder frames of a chunk, C = encoder output dim,
W = beam (hypotheses per stream), L = hypothesis length including the K context slots,
K = decoder context size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from icefall.decode.search import _NEG_INF, _PAD, _beam_step, _Beams
from icefall.decode.step import TransducerStep


@dataclass
class StreamBeams:
    """One stream's hypotheses between chunks; empty slots have score -inf.

    ys: (W, L) ids, the K context slots first, ``_PAD`` past ``lens``;
    lens: (W,) used length of ys; scores: (W,) total log-probability.
    """

    ys: Tensor
    lens: Tensor
    scores: Tensor

    @staticmethod
    def initial(context: Sequence[int], beam: int, device: torch.device | str
                ) -> StreamBeams:
        """W = ``beam`` slots, slot 0 holding the empty hypothesis after ``context``."""
        if int(beam) != beam or beam < 1:
            raise ValueError(f"beam must be a positive integer, got {beam}")
        K = len(context)
        ys = torch.full((beam, K), _PAD, dtype=torch.int64, device=device)
        ys[:] = torch.tensor(list(context), dtype=torch.int64, device=device)
        scores = torch.full((beam,), _NEG_INF, device=device)
        scores[0] = 0.0
        lens = torch.full((beam,), K, dtype=torch.int64, device=device)
        return StreamBeams(ys=ys, lens=lens, scores=scores)

    def best(self, context_size: int, length_norm: bool = True) -> list[int]:
        """The labels of the best hypothesis: by score / length (context included) as
        icefall's ``get_most_probable(length_norm=True)``, or by score."""
        rank = self.scores / self.lens if length_norm else self.scores
        w = int(rank.argmax())
        return self.ys[w, context_size:int(self.lens[w])].tolist()


def _stack(beams: Sequence[StreamBeams], context_size: int, frames: int) -> _Beams:
    """The streams' hypotheses as one (N, W, L + frames) block: room for one more label
    per frame of the chunk."""
    width = max(b.ys.shape[1] for b in beams)  # L
    N, W = len(beams), beams[0].ys.shape[0]
    ys = torch.full((N, W, width + frames), _PAD, dtype=torch.int64,
                    device=beams[0].ys.device)
    for n, b in enumerate(beams):
        ys[n, :, :b.ys.shape[1]] = b.ys
    return _Beams(ys=ys, lens=torch.stack([b.lens for b in beams]),
                  scores=torch.stack([b.scores for b in beams]), times=None,
                  offset=width - context_size)


def _unstack(block: _Beams) -> list[StreamBeams]:
    """Splits the block into the streams' hypotheses, trimmed to the longest one."""
    width = int(block.lens.max())  # the chunk's one read of the device
    ys = block.ys[:, :, :width]
    return [StreamBeams(ys=ys[n], lens=block.lens[n], scores=block.scores[n])
            for n in range(ys.shape[0])]


@torch.inference_mode()
def modified_beam_search_streams(step: TransducerStep, encoder_out: Tensor,
                                 beams: Sequence[StreamBeams], blank_penalty: float = 0.0
                                 ) -> list[StreamBeams]:
    """One chunk of N streams: at most one label per frame, ``W`` hypotheses per stream.

    Args:
      step: the search's view of the model; encoder_out: (N, T, C), every frame valid;
      beams: each stream's hypotheses before the chunk (:meth:`StreamBeams.initial` for
        a new stream), all with the same W; blank_penalty: subtracted from the blank
        logit.
    Returns:
      Each stream's hypotheses after the chunk.
    """
    if encoder_out.ndim != 3 or encoder_out.shape[0] != len(beams):
        raise ValueError(f"encoder_out must have shape ({len(beams)}, T, C), got "
                         f"{tuple(encoder_out.shape)}")
    if len({b.ys.shape[0] for b in beams}) != 1:
        raise ValueError("streams decoded together must have the same beam size")
    block = _stack(beams, step.context_size, encoder_out.shape[1])
    enc = step.project_encoder(encoder_out.transpose(0, 1))  # (T, N, J)
    for t, frame in enumerate(enc.unbind(0)):  # (N, J)
        _beam_step(step, block, frame, t, blank_penalty, 1.0)
    return _unstack(block)
