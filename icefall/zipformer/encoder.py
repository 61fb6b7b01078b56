"""The Zipformer2 encoder: stacks of layers at different frame rates (Zipformer paper, 3.1).

Each stack i works at ``downsampling_factor[i]`` times the frontend's frame rate with
``encoder_dim[i]`` channels; its output is upsampled and mixed back into the full-rate
stream. The encoder output combines the most recent output holding each channel and is
downsampled by 2.

Dimension legend: T = frames after the frontend (seq-first layout), N = batch,
C = channels of the current stack, Cmax = max(encoder_dim), ds = a downsampling factor.

Streaming (icefall's API: ``get_init_states``, ``streaming_forward``): a stream goes through
in chunks of T frames; every layer keeps six cached tensors (STATE_NAMES) covering the last
L frames (L = left_context_frames[0] at the frontend's rate, L / ds inside a stack).
"""

from __future__ import annotations

import copy
import random
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from icefall.zipformer.attention import CompactRelPositionalEncoding
from icefall.zipformer.layer import BypassModule, Zipformer2EncoderLayer
from icefall.zipformer.scaling import (
    FloatLike,
    ScheduledFloat,
    _is_exporting,
    convert_num_channels,
)

# The cached tensors of one layer in a stream's states, in icefall's order.
STATE_NAMES = ("cached_key", "cached_nonlin_attn", "cached_val1", "cached_val2",
               "cached_conv1", "cached_conv2")


class Zipformer2Encoder(nn.Module):
    """A stack of ``num_layers`` copies of ``encoder_layer`` with one positional encoding.

    During the warm-up interval [warmup_begin, warmup_end] (in batches), layer i's skip
    probability falls from ``initial_layerdrop_rate`` to ``final_layerdrop_rate``.
    """

    def __init__(self, encoder_layer: Zipformer2EncoderLayer, num_layers: int, pos_dim: int,
                 dropout: FloatLike, warmup_begin: float, warmup_end: float,
                 initial_layerdrop_rate: float = 0.5, final_layerdrop_rate: float = 0.05
                 ) -> None:
        super().__init__()
        self.encoder_pos = CompactRelPositionalEncoding(pos_dim, dropout_rate=0.15,
                                                        length_factor=1.0)
        self.layers = nn.ModuleList([copy.deepcopy(encoder_layer) for _ in range(num_layers)])
        self.num_layers = num_layers
        delta = (warmup_end - warmup_begin) / num_layers
        for i, layer in enumerate(self.layers):
            begin = warmup_begin + i * delta
            layer.bypass.skip_rate = ScheduledFloat((begin, initial_layerdrop_rate),
                                                    (begin + delta, final_layerdrop_rate),
                                                    default=0.0)

    def forward(self, src: Tensor, chunk_size: int = -1, feature_mask: Tensor | float = 1.0,
                attn_mask: Tensor | None = None,
                src_key_padding_mask: Tensor | None = None) -> Tensor:
        """
        Args:
          src: (T, N, C); feature_mask: 1.0, or (1, N, C) in training (see Zipformer2);
          attn_mask: (T, T) bool; src_key_padding_mask: (N, T) bool.
        Returns:
          (T, N, C)
        """
        pos_emb = self.encoder_pos(src)
        out = src * feature_mask
        for layer in self.layers:
            out = layer(out, pos_emb, chunk_size=chunk_size, attn_mask=attn_mask,
                        src_key_padding_mask=src_key_padding_mask)
            out = out * feature_mask
        return out

    def streaming_forward(self, src: Tensor, states: list[Tensor], left_context_len: int,
                          src_key_padding_mask: Tensor) -> tuple[Tensor, list[Tensor]]:
        """One chunk of a stream through every layer.

        Args:
          src: (T, N, C); states: six cached tensors per layer (see
            :meth:`Zipformer2EncoderLayer.streaming_forward`); left_context_len: L;
          src_key_padding_mask: (N, L + T) bool.
        Returns:
          (T, N, C) and the updated states, in the same order.
        """
        pos_emb = self.encoder_pos(src, left_context_len=left_context_len)
        out = src
        new_states: list[Tensor] = []
        for i, layer in enumerate(self.layers):
            out, *layer_states = layer.streaming_forward(
                out, pos_emb, *states[6 * i: 6 * (i + 1)], left_context_len=left_context_len,
                src_key_padding_mask=src_key_padding_mask)
            new_states += layer_states
        return out, new_states


class SimpleDownsample(nn.Module):
    """Downsamples time by ``downsample`` with a learned softmax-weighted average.

    The input is right-padded by repeating its last frame to a multiple of ``downsample``.
    """

    def __init__(self, channels: int, downsample: int, dropout: FloatLike) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(downsample))
        self.dropout = copy.deepcopy(dropout)
        self.downsample = downsample

    def forward(self, src: Tensor) -> Tensor:
        """src: (T, N, C) -> ((T + ds - 1) // ds, N, C)."""
        T, N, C = src.shape
        ds = self.downsample
        T_out = (T + ds - 1) // ds
        pad = T_out * ds - T
        src = torch.cat((src, src[T - 1:].expand(pad, N, C)), dim=0)
        src = src.reshape(T_out, ds, N, C)  # (T_out, ds, N, C)
        weights = self.bias.softmax(dim=0).reshape(ds, 1, 1)
        return (src * weights).sum(dim=1)


class SimpleUpsample(nn.Module):
    """Repeats every frame ``upsample`` times."""

    def __init__(self, num_channels: int, upsample: int) -> None:
        super().__init__()
        self.upsample = upsample

    def forward(self, src: Tensor) -> Tensor:
        """src: (T, N, C) -> (T * upsample, N, C)."""
        T, N, C = src.shape
        src = src.unsqueeze(1).expand(T, self.upsample, N, C)
        return src.reshape(T * self.upsample, N, C)


class DownsampledZipformer2Encoder(nn.Module):
    """Runs ``encoder`` at 1/``downsample`` of the frame rate and bypass-mixes its
    upsampled output with the input."""

    def __init__(self, encoder: Zipformer2Encoder, dim: int, downsample: int,
                 dropout: FloatLike) -> None:
        super().__init__()
        self.downsample_factor = downsample
        self.downsample = SimpleDownsample(dim, downsample, dropout)
        self.num_layers = encoder.num_layers
        self.encoder = encoder
        self.upsample = SimpleUpsample(dim, downsample)
        self.out_combiner = BypassModule(dim, straight_through_rate=0)

    def forward(self, src: Tensor, chunk_size: int = -1, feature_mask: Tensor | float = 1.0,
                attn_mask: Tensor | None = None,
                src_key_padding_mask: Tensor | None = None) -> Tensor:
        """
        Args:
          src: (T, N, C); attn_mask: (T, T) at the full rate;
          src_key_padding_mask: (N, ceil(T / ds)), already downsampled by the caller.
        Returns:
          (T, N, C)
        """
        ds = self.downsample_factor
        out = self.downsample(src)
        if attn_mask is not None:
            attn_mask = attn_mask[::ds, ::ds]
        out = self.encoder(out, chunk_size=chunk_size // ds, feature_mask=feature_mask,
                           attn_mask=attn_mask, src_key_padding_mask=src_key_padding_mask)
        out = self.upsample(out)[: src.shape[0]]
        return self.out_combiner(src, out)

    def streaming_forward(self, src: Tensor, states: list[Tensor], left_context_len: int,
                          src_key_padding_mask: Tensor) -> tuple[Tensor, list[Tensor]]:
        """One chunk of a stream.

        Args:
          src: (T, N, C); states: six cached tensors per layer of the inner stack;
          left_context_len: L at this stack's rate;
          src_key_padding_mask: (N, L + ceil(T / ds)), already downsampled by the caller.
        Returns:
          (T, N, C) and the updated states.
        """
        out, new_states = self.encoder.streaming_forward(
            self.downsample(src), states=states, left_context_len=left_context_len,
            src_key_padding_mask=src_key_padding_mask)
        out = self.upsample(out)[: src.shape[0]]
        return self.out_combiner(src, out), new_states


def _per_stack(value: int | Sequence[int], name: str, num_stacks: int) -> tuple[int, ...]:
    """Expands a one-value flag to every stack; rejects lists of the wrong length."""
    vals = (value,) if isinstance(value, int) else tuple(value)
    if len(vals) == 1:
        return vals * num_stacks
    if len(vals) != num_stacks:
        raise ValueError(f"--{name.replace('_', '-')} has {len(vals)} values but "
                         f"--downsampling-factor has {num_stacks} stacks; give one value "
                         f"or {num_stacks}")
    return vals


class Zipformer2(nn.Module):
    """The Zipformer2 encoder (without its convolutional frontend).

    Per-stack arguments take one value for all stacks or one per stack; the number of
    stacks is ``len(downsampling_factor)``. A causal model attends within chunks of
    ``chunk_size`` frames plus ``left_context_frames`` of history; in training both are
    drawn at random from their lists, in eval the first values are used. Setting
    ``draw_chunk_sizes`` draws them in eval mode too (adapter training on a frozen causal
    base, :func:`icefall.zipformer.adapters.set_adapter_training`); ``train()`` and
    ``eval()`` clear it.
    """

    def __init__(self, output_downsampling_factor: int = 2,
                 downsampling_factor: Sequence[int] = (2, 4),
                 encoder_dim: int | Sequence[int] = 384,
                 num_encoder_layers: int | Sequence[int] = 4,
                 encoder_unmasked_dim: int | Sequence[int] = 256,
                 query_head_dim: int | Sequence[int] = 24,
                 pos_head_dim: int | Sequence[int] = 4,
                 value_head_dim: int | Sequence[int] = 12,
                 num_heads: int | Sequence[int] = 8,
                 feedforward_dim: int | Sequence[int] = 1536,
                 cnn_module_kernel: int | Sequence[int] = 31, pos_dim: int = 192,
                 dropout: FloatLike | None = None, warmup_batches: float = 4000.0,
                 causal: bool = False, chunk_size: Sequence[int] = (-1,),
                 left_context_frames: Sequence[int] = (-1,)) -> None:
        super().__init__()
        if output_downsampling_factor != 2:
            raise ValueError("output_downsampling_factor must be 2 (the length formula "
                             f"assumes it), got {output_downsampling_factor}")
        dropout = ScheduledFloat((0.0, 0.3), (20000.0, 0.1)) if dropout is None else dropout
        n = len(downsampling_factor)
        self.output_downsampling_factor = output_downsampling_factor
        self.downsampling_factor = tuple(downsampling_factor)
        self.encoder_dim = _per_stack(encoder_dim, "encoder_dim", n)
        self.encoder_unmasked_dim = _per_stack(encoder_unmasked_dim, "encoder_unmasked_dim", n)
        self.num_encoder_layers = _per_stack(num_encoder_layers, "num_encoder_layers", n)
        self.num_heads = _per_stack(num_heads, "num_heads", n)
        self.cnn_module_kernel = _per_stack(cnn_module_kernel, "cnn_module_kernel", n)
        self.causal = causal
        self.chunk_size = tuple(chunk_size)
        self.left_context_frames = tuple(left_context_frames)
        self.draw_chunk_sizes = False
        dims = dict(query_head_dim=_per_stack(query_head_dim, "query_head_dim", n),
                    pos_head_dim=_per_stack(pos_head_dim, "pos_head_dim", n),
                    value_head_dim=_per_stack(value_head_dim, "value_head_dim", n),
                    feedforward_dim=_per_stack(feedforward_dim, "feedforward_dim", n))
        self._check(dims)
        self.query_head_dim = dims["query_head_dim"]
        self.value_head_dim = dims["value_head_dim"]
        self.encoders = nn.ModuleList(
            self._make_stack(i, dims, pos_dim, dropout, warmup_batches) for i in range(n))
        self.downsample_output = SimpleDownsample(max(self.encoder_dim),
                                                  downsample=output_downsampling_factor,
                                                  dropout=dropout)

    def _check(self, dims: dict[str, tuple[int, ...]]) -> None:
        for u, d in zip(self.encoder_unmasked_dim, self.encoder_dim):
            if u > d:
                raise ValueError(f"--encoder-unmasked-dim {u} exceeds --encoder-dim {d}")
        if self.causal:
            for c in self.chunk_size:
                if c > 0 and any(c % ds for ds in self.downsampling_factor):
                    raise ValueError(f"--chunk-size {c} must be a multiple of every "
                                     f"--downsampling-factor {self.downsampling_factor}")

    def _make_stack(self, i: int, dims: dict[str, tuple[int, ...]], pos_dim: int,
                    dropout: FloatLike, warmup_batches: float) -> nn.Module:
        n = len(self.downsampling_factor)
        layer = Zipformer2EncoderLayer(
            embed_dim=self.encoder_dim[i], pos_dim=pos_dim, num_heads=self.num_heads[i],
            query_head_dim=dims["query_head_dim"][i], pos_head_dim=dims["pos_head_dim"][i],
            value_head_dim=dims["value_head_dim"][i],
            feedforward_dim=dims["feedforward_dim"][i], dropout=dropout,
            cnn_module_kernel=self.cnn_module_kernel[i], causal=self.causal)
        # Stacks warm up one after another, after the frontend has learned something.
        stack = Zipformer2Encoder(layer, self.num_encoder_layers[i], pos_dim=pos_dim,
                                  dropout=dropout,
                                  warmup_begin=warmup_batches * (i + 1) / (n + 1),
                                  warmup_end=warmup_batches * (i + 2) / (n + 1),
                                  final_layerdrop_rate=0.035 * self.downsampling_factor[i] ** 0.5)
        if self.downsampling_factor[i] == 1:
            return stack
        return DownsampledZipformer2Encoder(stack, dim=self.encoder_dim[i],
                                            downsample=self.downsampling_factor[i],
                                            dropout=dropout)

    def get_feature_masks(self, x: Tensor) -> list[Tensor | float]:
        """Per-stack channel masks: in training, for about 1/8 (and 1/4) of the sequences
        the upper half (and the rest) of the channels beyond ``encoder_unmasked_dim`` are
        zeroed, so that the narrow part of each stack learns to work alone.

        Args:
          x: (T, N, encoder_dim[0])
        Returns:
          1.0 per stack in eval; else (1, N, encoder_dim[i]) per stack.
        """
        if not self.training:
            return [1.0] * len(self.encoder_dim)
        N = x.shape[1]
        mask1 = (torch.rand(1, N, 1, device=x.device) > 0.125).to(x.dtype)
        mask2 = mask1 * (torch.rand(1, N, 1, device=x.device) > 0.125).to(x.dtype)
        masks: list[Tensor | float] = []
        for dim, u1 in zip(self.encoder_dim, self.encoder_unmasked_dim):
            m = torch.ones(1, N, dim, dtype=x.dtype, device=x.device)
            u2 = u1 + (dim - u1) // 2
            m[:, :, u1:u2] *= mask1
            m[:, :, u2:] *= mask2
            masks.append(m)
        return masks

    def train(self, mode: bool = True) -> Zipformer2:
        """nn.Module.train, which also clears ``draw_chunk_sizes``."""
        super().train(mode)
        self.draw_chunk_sizes = False
        return self

    def get_chunk_info(self) -> tuple[int, int]:
        """(chunk_size, left_context_chunks), drawn per call in training (or with
        ``draw_chunk_sizes``), the first values otherwise; (-1, -1) for full attention."""
        if not self.causal:
            return -1, -1
        draw = self.training or self.draw_chunk_sizes
        pick = random.choice if draw else (lambda v: v[0])
        chunk_size = pick(self.chunk_size)
        if chunk_size == -1:
            return -1, -1
        left = pick(self.left_context_frames)
        left_chunks = -1 if left < 0 else max(1, left // chunk_size)
        return chunk_size, left_chunks

    def _attn_mask(self, T: int, chunk_size: int, left_chunks: int,
                   device: torch.device) -> Tensor | None:
        """(T, T) bool, True where target frame t may not attend to source frame s:
        s in a later chunk, or more than ``left_chunks`` chunks back."""
        if chunk_size <= 0:
            return None
        if left_chunks >= 0:
            for k, ds in zip(self.cnn_module_kernel, self.downsampling_factor):
                if chunk_size * left_chunks < (k // 2) * ds:
                    raise ValueError(
                        f"left context of {chunk_size * left_chunks} frames is shorter than "
                        f"the convolution's reach ({k // 2} x {ds}); raise "
                        "--left-context-frames")
        else:
            left_chunks = 1_000_000
        c = torch.div(torch.arange(T, device=device), chunk_size, rounding_mode="floor")
        tgt = c.unsqueeze(-1)
        return (c > tgt) | (c < tgt - left_chunks)

    def forward(self, x: Tensor, x_lens: Tensor,
                src_key_padding_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """
        Args:
          x: (T, N, encoder_dim[0]) frontend output; x_lens: (N,);
          src_key_padding_mask: (N, T) bool, True at padding.
        Returns:
          ((T + 1) // 2, N, Cmax) encoder output and (N,) lengths (x_lens + 1) // 2.
        """
        masks = self.get_feature_masks(x)
        chunk_size, left_chunks = self.get_chunk_info()
        attn_mask = self._attn_mask(x.shape[0], chunk_size, left_chunks, x.device)
        outputs = []
        for i, stack in enumerate(self.encoders):
            ds = self.downsampling_factor[i]
            x = convert_num_channels(x, self.encoder_dim[i])
            pad = None if src_key_padding_mask is None else src_key_padding_mask[..., ::ds]
            x = stack(x, chunk_size=chunk_size, feature_mask=masks[i], attn_mask=attn_mask,
                      src_key_padding_mask=pad)
            outputs.append(x)
        x = self.downsample_output(self._full_dim_output(outputs))
        return x, torch.div(x_lens + 1, 2, rounding_mode="floor")

    def streaming_left_context(self) -> int:
        """L, the frames of left context (at the frontend's rate) a stream keeps: the first
        of ``left_context_frames``, as icefall's streaming code uses it.

        Raises:
          ValueError: for a non-causal model, or an L that is not positive or not a
            multiple of every downsampling factor.
        """
        if not self.causal:
            raise ValueError("streaming needs a causal model (--causal 1)")
        L = self.left_context_frames[0]
        if L <= 0 or any(L % ds for ds in self.downsampling_factor):
            raise ValueError(f"streaming needs --left-context-frames (first value {L}) "
                             "positive and a multiple of every --downsampling-factor "
                             f"{self.downsampling_factor}")
        return L

    def _state_shapes(self, batch_size: int) -> list[tuple[int, ...]]:
        """Shapes of the six cached tensors of every layer, in icefall's order (see
        :meth:`get_init_states`)."""
        L = self.streaming_left_context()
        shapes = []
        for i, ds in enumerate(self.downsampling_factor):
            C, H = self.encoder_dim[i], self.num_heads[i]
            key = (L // ds, batch_size, H * self.query_head_dim[i])
            val = (L // ds, batch_size, H * self.value_head_dim[i])
            nonlin = (1, batch_size, L // ds, 3 * C // 4)
            conv = (batch_size, C, self.cnn_module_kernel[i] // 2)
            shapes += [key, nonlin, val, val, conv, conv] * self.num_encoder_layers[i]
        return shapes

    def get_init_states(self, batch_size: int = 1,
                        device: torch.device | str = "cpu") -> list[Tensor]:
        """The caches of a stream before its first chunk (zeros; the caller's key-padding
        mask hides them until real frames fill them).

        For layer j, states[6j: 6j + 6] are (cached_key (L', N, H * Dq),
        cached_nonlin_attn (1, N, L', 3C/4), cached_val1 (L', N, H * Dv), cached_val2,
        cached_conv1 (N, C, kernel // 2), cached_conv2), with L' = L / ds its stack's
        left context and C, H, Dq, Dv, kernel its stack's sizes. The dtype is the model's.

        Args:
          batch_size: N streams; device: where the states live.
        Returns:
          6 * (total layers) tensors.
        """
        dtype = self.downsample_output.bias.dtype
        return [torch.zeros(shape, dtype=dtype, device=device)
                for shape in self._state_shapes(batch_size)]

    def streaming_forward(self, x: Tensor, x_lens: Tensor, states: list[Tensor],
                          src_key_padding_mask: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        """One chunk of N streams (eval mode; icefall's API).

        Args:
          x: (T, N, encoder_dim[0]) the chunk's frontend output; x_lens: (N,) its valid
            frames; states: from :meth:`get_init_states` or the previous chunk;
          src_key_padding_mask: (N, L + T) bool, True at cached frames not yet filled (the
            first L columns, oldest first) and at padded frames of the chunk.
        Returns:
          ((T + 1) // 2, N, Cmax) output, (N,) lengths (x_lens + 1) // 2, updated states.
        """
        L = self.streaming_left_context()
        if not _is_exporting():
            self._check_streaming_inputs(x, states, src_key_padding_mask, L)
        outputs, new_states, offset = [], [], 0
        for i, stack in enumerate(self.encoders):
            ds = self.downsampling_factor[i]
            n = 6 * self.num_encoder_layers[i]
            x = convert_num_channels(x, self.encoder_dim[i])
            x, stack_states = stack.streaming_forward(
                x, states=states[offset: offset + n], left_context_len=L // ds,
                src_key_padding_mask=src_key_padding_mask[..., ::ds])
            offset += n
            outputs.append(x)
            new_states += stack_states
        x = self.downsample_output(self._full_dim_output(outputs))
        return x, torch.div(x_lens + 1, 2, rounding_mode="floor"), new_states

    def _check_streaming_inputs(self, x: Tensor, states: list[Tensor], mask: Tensor,
                                L: int) -> None:
        """Raises ValueError naming the first input whose shape streaming_forward cannot use
        (shapes only: nothing is read from the device)."""
        if x.ndim != 3 or x.shape[2] != self.encoder_dim[0]:
            raise ValueError(f"x must have shape (T, N, {self.encoder_dim[0]}), got "
                             f"{tuple(x.shape)}")
        T, N, _ = x.shape
        if tuple(mask.shape) != (N, L + T):
            raise ValueError(f"src_key_padding_mask must have shape (N, L + T) = "
                             f"({N}, {L + T}), got {tuple(mask.shape)}")
        shapes = self._state_shapes(N)
        if len(states) != len(shapes):
            raise ValueError(f"expected {len(shapes)} encoder states (6 per layer), got "
                             f"{len(states)}")
        for j, (state, shape) in enumerate(zip(states, shapes)):
            if tuple(state.shape) != shape:
                raise ValueError(f"encoder state {j} (layer {j // 6}, "
                                 f"{STATE_NAMES[j % 6]}) has shape {tuple(state.shape)}, "
                                 f"expected {shape}")

    def _full_dim_output(self, outputs: list[Tensor]) -> Tensor:
        """(T, N, Cmax): each channel taken from the last stack that has it."""
        pieces = [outputs[-1]]
        cur = self.encoder_dim[-1]
        for i in range(len(outputs) - 2, -1, -1):
            d = self.encoder_dim[i]
            if d > cur:
                pieces.append(outputs[i][..., cur:d])
                cur = d
        return torch.cat(pieces, dim=-1)
