"""Streaming (chunk-by-chunk) decoding with a causal Zipformer transducer, run as
icefall's ``egs/librispeech/ASR/zipformer/streaming_decode.py`` runs it: many streams
decoded together, one chunk of each per step, every stream carrying its own encoder state
and its own hypotheses (greedy search here, modified beam search in
:mod:`icefall.decode.streaming_beam_search`).

A stream's state is a list in icefall's layout: the encoder's six cached tensors per layer
(:meth:`Zipformer2.get_init_states`), then the frontend's cached left padding
(:meth:`Conv2dSubsampling.get_init_states`), then the number of frontend frames processed so
far, (N,) int32. :func:`stack_states` joins the states of several streams into a batch and
:func:`unstack_states` splits them again.

Step k of a stream reads the ``2 * chunk_size + 13`` feature frames from
``2 * chunk_size * k`` (the chunk and the 13 frames the frontend reads beyond it: 7 for
its convolutions, 2 * 3 for its ConvNeXt block's right context); a stream's features end
with 13 (plus ``tail_pad_len``) frames of LOG_EPS, and a window that runs past the end is
padded with LOG_EPS too. One choice differs from icefall: icefall pads a short last window
only up to the longest window of the batch and masks the rest, so that a stream's last
outputs depend on which streams share its batch; here every window is padded to the full
length and counted as valid, which is what icefall does for a stream decoded alone. A
stream's results therefore do not depend on batching.

Both searches emit at most one symbol per frame (as icefall's streaming searches), skip
``unk_id`` like blank and subtract ``blank_penalty`` from the blank logit, as the offline
searches of :mod:`icefall.decode.search` do; on the encoder output of a stream they give
what those offline searches give on the whole of it.

Dimension legend: N = streams in a step, T = feature frames, F = feature dim,
T' = chunk_size frames after the frontend, T'' = (T' + 1) // 2 encoder frames,
C = encoder output dim, J = joiner dim, K = decoder context size,
L = left_context_frames (at the frontend's rate).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from icefall.decode.step import TransducerStep
from icefall.decode.streaming_beam_search import StreamBeams, modified_beam_search_streams
from icefall.utils import make_pad_mask, to_int_tuple

LOG_EPS = math.log(1e-10)
# Feature frames the frontend reads beyond a chunk's 2 * chunk_size: (T - 7) // 2 frames
# come out of its convolutions, 3 more feed its ConvNeXt block's right context.
FEATURE_RIGHT_CONTEXT = 7 + 2 * 3
# Batch dimension of each of a layer's six cached tensors (icefall's layout).
_LAYER_BATCH_DIMS = (1, 1, 1, 1, 0, 0)
# The searches streaming decoding runs (icefall's, but fast_beam_search, which needs k2).
STREAMING_METHODS = ("greedy_search", "modified_beam_search")
Key = TypeVar("Key")


def get_init_states(model: nn.Module, batch_size: int = 1,
                    device: torch.device | str = "cpu") -> list[Tensor]:
    """The states of ``batch_size`` new streams: encoder caches, the frontend's left
    padding (N, 128, 3, F'), and (N,) int32 processed frames (zero)."""
    states = model.encoder.get_init_states(batch_size, device)
    states.append(model.encoder_embed.get_init_states(batch_size, device))
    states.append(torch.zeros(batch_size, dtype=torch.int32, device=device))
    return states


def _check_state_list(states: Sequence[Tensor]) -> None:
    if len(states) < 2 or (len(states) - 2) % 6:
        raise ValueError(f"a stream's states are 6 tensors per encoder layer plus 2, got "
                         f"{len(states)}")


def state_batch_dim(index: int, num_states: int) -> int:
    """The batch dimension of states[index] in a list of num_states states."""
    return 0 if index >= num_states - 2 else _LAYER_BATCH_DIMS[index % 6]


def stack_states(state_list: Sequence[Sequence[Tensor]]) -> list[Tensor]:
    """Joins the states of several streams (each as :func:`get_init_states` returns them)
    into the states of one batch; the inverse of :func:`unstack_states`."""
    if not state_list:
        raise ValueError("no states to stack")
    n = len(state_list[0])
    for states in state_list:
        _check_state_list(states)
        if len(states) != n:
            raise ValueError(f"streams have different numbers of states: {n} and "
                             f"{len(states)}")
    return [torch.cat([states[i] for states in state_list], dim=state_batch_dim(i, n))
            for i in range(n)]


def unstack_states(batch_states: Sequence[Tensor]) -> list[list[Tensor]]:
    """Splits the states of a batch into one state list per stream (batch size 1 each)."""
    _check_state_list(batch_states)
    n = len(batch_states)
    pieces = [s.split(1, dim=state_batch_dim(i, n)) for i, s in enumerate(batch_states)]
    return [list(stream) for stream in zip(*pieces)]


def streaming_forward(features: Tensor, feature_lens: Tensor, model: nn.Module,
                      states: list[Tensor], chunk_size: int, left_context_len: int
                      ) -> tuple[Tensor, Tensor, list[Tensor]]:
    """One chunk of N streams through the frontend and the encoder (icefall's function).

    Args:
      features: (N, 2 * chunk_size + 13, F); feature_lens: (N,) valid frames;
      states: the batch's states (:func:`stack_states`); chunk_size: T' (frontend frames);
      left_context_len: L, the model's ``left_context_frames[0]``.
    Returns:
      encoder output (N, T'', C), (N,) its valid lengths, and the updated states.
    """
    x, x_lens, new_left_pad = model.encoder_embed.streaming_forward(
        features, feature_lens, cached_left_pad=states[-2])  # x: (N, T', C0)
    if x.shape[1] != chunk_size:
        raise ValueError(f"{features.shape[1]} feature frames give {x.shape[1]} frames after "
                         f"the frontend, not chunk_size {chunk_size}; feed "
                         f"2 * chunk_size + {FEATURE_RIGHT_CONTEXT}")
    processed_lens = states[-1]  # (N,)
    # Cached frames (oldest first) that no chunk has filled yet are padding.
    cols = torch.arange(left_context_len, device=x.device)
    unfilled = (processed_lens.unsqueeze(1) <= cols).flip(1)  # (N, L)
    mask = torch.cat((unfilled, make_pad_mask(x_lens, x.shape[1])), dim=1)  # (N, L + T')
    encoder_out, encoder_out_lens, new_states = model.encoder.streaming_forward(
        x.permute(1, 0, 2), x_lens, states=states[:-2], src_key_padding_mask=mask)
    new_states += [new_left_pad, processed_lens + x_lens.to(processed_lens.dtype)]
    return encoder_out.permute(1, 0, 2), encoder_out_lens, new_states  # (N, T'', C)


class DecodeStream:
    """One utterance decoded chunk by chunk: its padded features, its state and its
    hypotheses (icefall's ``DecodeStream``).

    Args:
      features: (T, F) the utterance's features;
      states: its states, from ``get_init_states(model, 1, device)``;
      context: the decoder context before the first label, ``[-1] * (K - 1) + [blank_id]``;
      tail_pad_len: LOG_EPS frames added after the 13 the frontend needs (icefall's
        streaming_decode.py adds 30);
      beams: for modified beam search, the stream's initial hypotheses
        (:meth:`StreamBeams.initial`); None for greedy search, whose hypothesis is ``hyp``.
    """

    def __init__(self, features: Tensor, states: list[Tensor], context: Sequence[int],
                 tail_pad_len: int = 0, beams: StreamBeams | None = None) -> None:
        if features.ndim != 2 or features.shape[0] == 0:
            raise ValueError(f"features must have shape (T, F) with T > 0, got "
                             f"{tuple(features.shape)}")
        if tail_pad_len < 0:
            raise ValueError(f"tail_pad_len must be >= 0, got {tail_pad_len}")
        self.features = nn.functional.pad(
            features, (0, 0, 0, FEATURE_RIGHT_CONTEXT + tail_pad_len), value=LOG_EPS)
        self.num_frames = self.features.shape[0]
        self.num_processed_frames = 0
        self.states = states
        self.context_size = len(context)
        self.hyp = list(context)
        self.beams = beams
        self.done_frames = 0  # encoder output frames decoded

    @property
    def done(self) -> bool:
        """True once every feature frame has been read."""
        return self.num_processed_frames >= self.num_frames

    @property
    def tokens(self) -> list[int]:
        """The labels so far: greedy search's, or the best hypothesis of beam search."""
        if self.beams is not None:
            return self.beams.best(self.context_size)
        return self.hyp[self.context_size:]

    def get_feature_frames(self, chunk_size: int) -> Tensor:
        """The next window: ``chunk_size + 13`` feature frames from the first unread one,
        padded with LOG_EPS past the end; advances by ``chunk_size`` frames.

        Args:
          chunk_size: feature frames per chunk (2 * the frontend's chunk size).
        Returns:
          (chunk_size + 13, F)
        """
        window = chunk_size + FEATURE_RIGHT_CONTEXT
        start = self.num_processed_frames
        frames = self.features[start: start + window]
        self.num_processed_frames += chunk_size
        return nn.functional.pad(frames, (0, 0, 0, window - frames.shape[0]), value=LOG_EPS)


def greedy_search_streams(step: TransducerStep, encoder_out: Tensor,
                          streams: Sequence[DecodeStream], blank_penalty: float = 0.0) -> None:
    """Greedy search over one chunk of N streams, at most one symbol per frame; each
    stream's hypothesis grows in place.

    Args:
      step: the search's view of the model (built with grad off);
      encoder_out: (N, T'', C), every frame valid; streams: the N streams, in order;
      blank_penalty: subtracted from the blank logit.
    """
    if encoder_out.ndim != 3 or encoder_out.shape[0] != len(streams):
        raise ValueError(f"encoder_out must have shape ({len(streams)}, T, C), got "
                         f"{tuple(encoder_out.shape)}")
    K, device = step.context_size, encoder_out.device
    skip = {step.blank_id, step.unk_id}
    enc = step.project_encoder(encoder_out.transpose(0, 1))  # (T'', N, J)
    dec = step.decoder_out(
        torch.tensor([s.hyp[-K:] for s in streams], device=device))  # (N, J)
    for frame in enc.unbind(0):  # (N, J)
        logits = step.logits(frame, dec)  # (N, V)
        if blank_penalty != 0:
            logits[:, step.blank_id] -= blank_penalty
        rows = []
        for i, y in enumerate(logits.argmax(dim=-1).tolist()):
            if y not in skip:
                streams[i].hyp.append(y)
                rows.append(i)
        if rows:
            contexts = torch.tensor([streams[i].hyp[-K:] for i in rows], device=device)
            dec.index_copy_(0, torch.tensor(rows, device=device), step.decoder_out(contexts))


class StreamingSearch:
    """The search of a streaming decode: makes the streams and runs the search on each
    chunk's encoder output.

    Args:
      model: the transducer (its decoder and joiner, read once here, with grad off);
      decoding_method: one of :data:`STREAMING_METHODS`;
      beam_size: hypotheses per stream of modified beam search (``--num-active-paths``);
      blank_penalty: subtracted from the blank logit.
    """

    def __init__(self, model: nn.Module, decoding_method: str = "greedy_search",
                 beam_size: int = 4, blank_penalty: float = 0.0) -> None:
        if decoding_method not in STREAMING_METHODS:
            raise ValueError(f"streaming decoding supports --decoding-method "
                             f"{' or '.join(STREAMING_METHODS)}, got '{decoding_method}'")
        if int(beam_size) != beam_size or beam_size < 1:
            raise ValueError(f"beam size must be a positive integer, got {beam_size}")
        with torch.no_grad():
            self.step = TransducerStep(model)
        self.decoding_method = decoding_method
        self.beam_size = int(beam_size)
        self.blank_penalty = blank_penalty

    def new_stream(self, features: Tensor, states: list[Tensor],
                   tail_pad_len: int = 0) -> DecodeStream:
        """A stream of ``features`` (T, F) starting from ``states``."""
        context = self.step.initial_context()
        beams = None
        if self.decoding_method == "modified_beam_search":
            beams = StreamBeams.initial(context, self.beam_size, features.device)
        return DecodeStream(features, states, context, tail_pad_len, beams=beams)

    def __call__(self, encoder_out: Tensor, streams: Sequence[DecodeStream]) -> None:
        """Advances the hypotheses of ``streams`` over encoder_out (N, T'', C)."""
        if self.decoding_method == "greedy_search":
            greedy_search_streams(self.step, encoder_out, streams, self.blank_penalty)
            return
        beams = modified_beam_search_streams(self.step, encoder_out,
                                             [s.beams for s in streams], self.blank_penalty)
        for stream, b in zip(streams, beams):
            stream.beams = b


@torch.no_grad()
def decode_one_chunk(model: nn.Module, streams: Sequence[DecodeStream], chunk_size: int,
                     left_context_len: int, search: StreamingSearch | None = None
                     ) -> list[int]:
    """Runs the next chunk of every stream through the encoder and the search.

    Args:
      model: a causal transducer in eval mode; streams: the streams to advance;
      chunk_size: T' (frontend frames per chunk); left_context_len: L;
      search: what runs on the encoder output (greedy search when None).
    Returns:
      Indexes (into ``streams``) of the streams that are done.
    """
    search = StreamingSearch(model) if search is None else search
    windows = [s.get_feature_frames(2 * chunk_size) for s in streams]
    features = torch.stack(windows)  # (N, 2 * chunk_size + 13, F)
    feature_lens = torch.full((len(streams),), features.shape[1], dtype=torch.int64,
                              device=features.device)
    states = stack_states([s.states for s in streams])
    encoder_out, _, new_states = streaming_forward(features, feature_lens, model, states,
                                                   chunk_size, left_context_len)
    search(encoder_out, streams)
    for stream, stream_states in zip(streams, unstack_states(new_states)):
        stream.states = stream_states
        stream.done_frames += encoder_out.shape[1]
    return [i for i, s in enumerate(streams) if s.done]


def streaming_config(params: Mapping[str, Any]) -> tuple[int, int]:
    """(chunk_size, left_context_frames) to stream with, from the model flags
    (``causal``, ``chunk_size``, ``left_context_frames``; icefall's streaming scripts take
    one value of each).

    Raises:
      ValueError: for a non-causal model, or more (or fewer) than one value of either, or
        one that is not positive.
    """
    if not params["causal"]:
        raise ValueError("streaming needs a causal model: pass --causal 1 (and the "
                         "--chunk-size and --left-context-frames to stream with)")
    chunk = to_int_tuple(params["chunk_size"], "chunk_size")
    left = to_int_tuple(params["left_context_frames"], "left_context_frames")
    if len(chunk) != 1 or len(left) != 1:
        raise ValueError(f"streaming takes one --chunk-size and one --left-context-frames, "
                         f"got '{params['chunk_size']}' and '{params['left_context_frames']}'")
    if chunk[0] <= 0 or left[0] <= 0:
        raise ValueError(f"streaming needs a positive --chunk-size and "
                         f"--left-context-frames, got {chunk[0]} and {left[0]}")
    return chunk[0], left[0]


def check_chunk_size(model: nn.Module, chunk_size: int) -> None:
    """Raises ValueError unless chunk_size is positive and a multiple of every
    downsampling factor of the model's encoder."""
    factors = model.encoder.downsampling_factor
    if chunk_size <= 0 or any(chunk_size % ds for ds in factors):
        raise ValueError(f"chunk_size must be positive and a multiple of every "
                         f"--downsampling-factor {factors}, got {chunk_size}")


@torch.no_grad()
def streaming_decode(model: nn.Module, utterances: Iterable[tuple[Key, Tensor]],
                     search: StreamingSearch, chunk_size: int | None = None,
                     num_decode_streams: int = 2000, tail_pad_len: int = 0
                     ) -> Iterator[tuple[Key, list[int]]]:
    """Decodes utterances chunk by chunk, at most ``num_decode_streams`` at a time; a new
    stream joins as soon as one finishes (icefall's streaming_decode.py loop).

    Args:
      model: a causal transducer in eval mode;
      utterances: (key, (T_n, F) features) pairs, read as streams are needed; the
        features are moved to the model's device and dtype;
      search: the search (:class:`StreamingSearch` of the same model);
      chunk_size: T' (frontend frames per chunk), default the model's first chunk size;
      num_decode_streams: streams decoded together; tail_pad_len: see :class:`DecodeStream`.
    Yields:
      (key, token ids) of each utterance, in the order the streams finish.
    """
    chunk_size = int(model.encoder.chunk_size[0]) if chunk_size is None else chunk_size
    check_chunk_size(model, chunk_size)
    if num_decode_streams < 1:
        raise ValueError(f"num_decode_streams must be >= 1, got {num_decode_streams}")
    left_context_len = model.encoder.streaming_left_context()
    param = next(model.parameters())
    active: list[tuple[Key, DecodeStream]] = []

    def advance() -> Iterator[tuple[Key, list[int]]]:
        finished = decode_one_chunk(model, [s for _, s in active], chunk_size,
                                    left_context_len, search)
        for i in sorted(finished, reverse=True):
            key, stream = active.pop(i)
            yield key, stream.tokens

    for key, feats in utterances:
        feats = feats.to(param.device, param.dtype, non_blocking=True)
        stream = search.new_stream(feats, get_init_states(model, 1, param.device),
                                   tail_pad_len)
        active.append((key, stream))
        while len(active) >= num_decode_streams:
            yield from advance()
    while active:
        yield from advance()


def streaming_search(model: nn.Module, features: Sequence[Tensor],
                     decoding_method: str = "greedy_search", beam_size: int = 4,
                     chunk_size: int | None = None, num_decode_streams: int = 2000,
                     tail_pad_len: int = 0, blank_penalty: float = 0.0) -> list[list[int]]:
    """:func:`streaming_decode` of a list of utterances' (T_n, F) features with the
    search of ``decoding_method``; returns their token ids in input order."""
    search = StreamingSearch(model, decoding_method, beam_size, blank_penalty)
    results: list[list[int]] = [[] for _ in features]
    for index, tokens in streaming_decode(model, enumerate(features), search, chunk_size,
                                          num_decode_streams, tail_pad_len):
        results[index] = tokens
    return results


def streaming_greedy_search(model: nn.Module, features: Sequence[Tensor],
                            chunk_size: int | None = None, num_decode_streams: int = 2000,
                            tail_pad_len: int = 0, blank_penalty: float = 0.0
                            ) -> list[list[int]]:
    """:func:`streaming_search` with greedy search (at most one symbol per frame)."""
    return streaming_search(model, features, "greedy_search", chunk_size=chunk_size,
                            num_decode_streams=num_decode_streams,
                            tail_pad_len=tail_pad_len, blank_penalty=blank_penalty)
