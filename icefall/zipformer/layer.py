"""One Zipformer2 encoder layer and its feed-forward, convolution and bypass modules
(Zipformer paper, 3.2), with the four adapter slots of the zipformer_adapter recipe.

Layer order (x0 = layer input):
  ff1 -> non-linear attention -> self-attention 1 -> [post_sa_adapter] -> conv 1 -> ff2
  -> bypass_mid(x0, .) -> [mid_adapter] -> self-attention 2 -> conv 2 -> [post_conv_adapter]
  -> ff3 -> BiasNorm -> bypass(x0, .) -> [adapter]
each module adding its output to the running sum.

Streaming (``streaming_forward``): the same layer on one chunk of a stream, each module
that mixes frames continuing from its cached left context (icefall's cache layout).

Dimension legend: T = frames (seq-first layout), N = batch, C = embed_dim, L = cached
left-context frames, K = attended frames (T, or L + T when streaming), H = heads,
Dq = query_head_dim, Dv = value_head_dim.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from icefall.zipformer.attention import (
    NonlinAttention,
    RelPositionMultiheadAttentionWeights,
    SelfAttention,
    whitening_schedule,
)
from icefall.zipformer.scaling import (
    ActivationDropoutAndLinear,
    Balancer,
    BiasNorm,
    ChunkCausalDepthwiseConv1d,
    FloatLike,
    ScheduledFloat,
    Whiten,
    limit_param_value,
)

# The adapter slots of a layer, in the order they are applied.
ADAPTER_SLOTS = ("post_sa_adapter", "mid_adapter", "post_conv_adapter", "adapter")


class FeedforwardModule(nn.Module):
    """Linear -> SwooshL -> dropout (shared over time) -> Linear."""

    def __init__(self, embed_dim: int, feedforward_dim: int, dropout: FloatLike) -> None:
        super().__init__()
        self.in_proj = nn.Linear(embed_dim, feedforward_dim)
        self.hidden_balancer = Balancer(feedforward_dim, channel_dim=-1, min_positive=0.3,
                                        max_positive=1.0, min_abs=0.75, max_abs=5.0)
        self.out_proj = ActivationDropoutAndLinear(feedforward_dim, embed_dim,
                                                   activation="SwooshL", dropout_p=dropout,
                                                   dropout_shared_dim=0, bias=True,
                                                   initial_scale=0.1)
        self.out_whiten = Whiten(num_groups=1, whitening_limit=whitening_schedule(7.5),
                                 prob=(0.025, 0.25), grad_scale=0.01)

    def forward(self, x: Tensor) -> Tensor:
        """x: (T, N, C) -> (T, N, C)."""
        x = self.hidden_balancer(self.in_proj(x))
        return self.out_whiten(self.out_proj(x))


class ConvolutionModule(nn.Module):
    """GLU-gated depthwise convolution: Linear -> x * sigmoid(s) -> depthwise conv over
    time -> SwooshR -> Linear. Padded frames are zeroed before the convolution.
    """

    def __init__(self, channels: int, kernel_size: int, causal: bool) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"--cnn-module-kernel values must be odd, got {kernel_size}")
        self.causal = causal
        self.in_proj = nn.Linear(channels, 2 * channels)
        self.balancer1 = Balancer(channels, channel_dim=-1,
                                  min_positive=ScheduledFloat((0.0, 0.05), (8000.0, 0.025)),
                                  max_positive=1.0, min_abs=1.5,
                                  max_abs=ScheduledFloat((0.0, 5.0), (8000.0, 10.0),
                                                         default=1.0))
        if causal:
            self.depthwise_conv = ChunkCausalDepthwiseConv1d(channels, kernel_size)
        else:
            self.depthwise_conv = nn.Conv1d(channels, channels, kernel_size, groups=channels,
                                            padding=kernel_size // 2)
        self.balancer2 = Balancer(channels, channel_dim=1,
                                  min_positive=ScheduledFloat((0.0, 0.1), (8000.0, 0.05)),
                                  max_positive=1.0,
                                  min_abs=ScheduledFloat((0.0, 0.2), (20000.0, 0.5)),
                                  max_abs=10.0)
        self.whiten = Whiten(num_groups=1, whitening_limit=whitening_schedule(7.5),
                             prob=(0.025, 0.25), grad_scale=0.01)
        self.out_proj = ActivationDropoutAndLinear(channels, channels, activation="SwooshR",
                                                   dropout_p=0.0, initial_scale=0.05)

    def forward(self, x: Tensor, src_key_padding_mask: Tensor | None = None,
                chunk_size: int = -1) -> Tensor:
        """
        Args:
          x: (T, N, C); src_key_padding_mask: (N, T) bool, True at padding;
          chunk_size: frames per chunk for a causal model, -1 for whole utterances.
        Returns:
          (T, N, C)
        """
        x = self._gate(x, src_key_padding_mask)  # (N, C, T)
        if self.causal:
            x = self.depthwise_conv(x, chunk_size=chunk_size)
        else:
            x = self.depthwise_conv(x)
        return self._project(x)

    def streaming_forward(self, x: Tensor, cache: Tensor, src_key_padding_mask: Tensor
                          ) -> tuple[Tensor, Tensor]:
        """One chunk of a stream (causal models only).

        Args:
          x: (T, N, C) the chunk; cache: (N, C, kernel_size // 2) the gated frames before it;
          src_key_padding_mask: (N, T) bool, True at padding.
        Returns:
          (T, N, C) and the updated (N, C, kernel_size // 2) cache.
        """
        if not self.causal:
            raise ValueError("streaming needs a causal model (--causal 1)")
        x, cache = self.depthwise_conv.streaming_forward(
            self._gate(x, src_key_padding_mask), cache=cache)
        return self._project(x), cache

    def _gate(self, x: Tensor, src_key_padding_mask: Tensor | None) -> Tensor:
        """x: (T, N, C) -> (N, C, T) gated input of the depthwise conv, zero at padding."""
        x, s = self.in_proj(x).chunk(2, dim=2)  # each (T, N, C)
        x = x * torch.sigmoid(self.balancer1(s))
        x = x.permute(1, 2, 0)  # (N, C, T)
        if src_key_padding_mask is not None:
            x = x.masked_fill(src_key_padding_mask.unsqueeze(1), 0.0)
        return x

    def _project(self, x: Tensor) -> Tensor:
        """x: (N, C, T) depthwise conv output -> (T, N, C)."""
        x = self.balancer2(x).permute(2, 0, 1)  # (T, N, C)
        return self.out_proj(self.whiten(x))


class BypassModule(nn.Module):
    """x0 + (x - x0) * bypass_scale, a learned per-channel interpolation.

    In training the scale is kept within [scale_min, scale_max] (through its gradient)
    and, with probability ``skip_rate`` per sequence, set to 0 (the layer is skipped).
    """

    def __init__(self, embed_dim: int, skip_rate: FloatLike = 0.0,
                 straight_through_rate: FloatLike = 0.0,
                 scale_min: FloatLike | None = None, scale_max: FloatLike = 1.0) -> None:
        super().__init__()
        self.bypass_scale = nn.Parameter(torch.full((embed_dim,), 0.5))
        self.skip_rate = copy.deepcopy(skip_rate)
        self.straight_through_rate = copy.deepcopy(straight_through_rate)
        self.scale_min = (ScheduledFloat((0.0, 0.9), (20000.0, 0.2), default=0)
                          if scale_min is None else scale_min)
        self.scale_max = scale_max

    def _scale(self, batch_size: int) -> Tensor:
        """(C,) in eval; (C,) or (N, C) in training."""
        if not self.training:
            return self.bypass_scale
        scale = limit_param_value(self.bypass_scale, float(self.scale_min),
                                  float(self.scale_max))
        skip = float(self.skip_rate)
        if skip != 0.0:
            keep = torch.rand((batch_size, 1), device=scale.device) > skip
            scale = scale * keep.to(scale.dtype)
        through = float(self.straight_through_rate)
        if through != 0.0:
            full = torch.rand((batch_size, 1), device=scale.device) < through
            scale = torch.maximum(scale, full.to(scale.dtype))
        return scale

    def forward(self, src_orig: Tensor, src: Tensor) -> Tensor:
        """src_orig, src: (T, N, C) -> (T, N, C)."""
        return src_orig + (src - src_orig) * self._scale(src.shape[1])


def _sequence_mask(x: Tensor, rate: float) -> Tensor | None:
    """(N, 1) mask dropping whole sequences with probability ``rate``; None when rate is 0.

    Args:
      x: (T, N, C), for batch size, device and dtype.
    """
    if rate == 0.0:
        return None
    return (torch.rand(x.shape[1], 1, device=x.device) > rate).to(x.dtype)


def _masked(x: Tensor, mask: Tensor | None) -> Tensor:
    return x if mask is None else x * mask


class Zipformer2EncoderLayer(nn.Module):
    """A Zipformer2 layer; see the module docstring for the order of its parts.

    Adapter slots are empty (None) unless :func:`icefall.zipformer.adapters.add_adapters`
    fills them; an empty or disabled slot is the identity.
    """

    def __init__(self, embed_dim: int, pos_dim: int, num_heads: int, query_head_dim: int,
                 pos_head_dim: int, value_head_dim: int, feedforward_dim: int,
                 dropout: FloatLike = 0.1, cnn_module_kernel: int = 31,
                 causal: bool = False) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        bypass_skip = ScheduledFloat((0.0, 0.5), (4000.0, 0.02), default=0)
        self.bypass = BypassModule(embed_dim, skip_rate=bypass_skip, straight_through_rate=0)
        self.bypass_mid = BypassModule(embed_dim, straight_through_rate=0)
        # Probabilities of skipping a module for a whole sequence, in training only.
        self.attention_skip_rate = ScheduledFloat((0.0, 0.2), (4000.0, 0.05), (16000, 0.0),
                                                  default=0)
        self.conv_skip_rate = ScheduledFloat((0.0, 0.2), (4000.0, 0.05), (16000, 0.0),
                                             default=0)
        self.ff2_skip_rate = ScheduledFloat((0.0, 0.1), (4000.0, 0.01), (50000.0, 0.0))
        self.ff3_skip_rate = ScheduledFloat((0.0, 0.1), (4000.0, 0.01), (50000.0, 0.0))
        self.self_attn_weights = RelPositionMultiheadAttentionWeights(
            embed_dim, pos_dim=pos_dim, num_heads=num_heads, query_head_dim=query_head_dim,
            pos_head_dim=pos_head_dim, dropout=0.0)
        self.self_attn1 = SelfAttention(embed_dim, num_heads, value_head_dim)
        self.self_attn2 = SelfAttention(embed_dim, num_heads, value_head_dim)
        self.feed_forward1 = FeedforwardModule(embed_dim, (feedforward_dim * 3) // 4, dropout)
        self.feed_forward2 = FeedforwardModule(embed_dim, feedforward_dim, dropout)
        self.feed_forward3 = FeedforwardModule(embed_dim, (feedforward_dim * 5) // 4, dropout)
        self.nonlin_attention = NonlinAttention(embed_dim, hidden_channels=3 * embed_dim // 4)
        self.conv_module1 = ConvolutionModule(embed_dim, cnn_module_kernel, causal=causal)
        self.conv_module2 = ConvolutionModule(embed_dim, cnn_module_kernel, causal=causal)
        # Unused in the computation; kept because icefall checkpoints contain it.
        self.bypass_scale = nn.Parameter(torch.full((embed_dim,), 0.5))
        self.norm = BiasNorm(embed_dim)
        self._add_regularisers(embed_dim)
        # Registered empty, in the reference's state_dict order.
        for name in ("mid_adapter", "post_sa_adapter", "post_conv_adapter", "adapter"):
            self.register_module(name, None)

    def _add_regularisers(self, embed_dim: int) -> None:
        self.balancer1 = Balancer(embed_dim, channel_dim=-1, min_positive=0.45,
                                  max_positive=0.55, min_abs=0.2, max_abs=4.0)
        self.balancer_na = Balancer(embed_dim, channel_dim=-1, min_positive=0.3,
                                    max_positive=0.7,
                                    min_abs=ScheduledFloat((0.0, 0.004), (4000.0, 0.02)),
                                    prob=0.05)
        self.balancer_ff2 = Balancer(embed_dim, channel_dim=-1, min_positive=0.3,
                                     max_positive=0.7,
                                     min_abs=ScheduledFloat((0.0, 0.0), (4000.0, 0.1),
                                                            default=0.0),
                                     max_abs=2.0, prob=0.05)
        self.balancer_ff3 = Balancer(embed_dim, channel_dim=-1, min_positive=0.3,
                                     max_positive=0.7,
                                     min_abs=ScheduledFloat((0.0, 0.0), (4000.0, 0.2),
                                                            default=0.0),
                                     max_abs=4.0, prob=0.05)
        self.whiten = Whiten(num_groups=1, whitening_limit=whitening_schedule(4.0, ratio=3.0),
                             prob=(0.025, 0.25), grad_scale=0.01)
        self.balancer2 = Balancer(embed_dim, channel_dim=-1, min_positive=0.45,
                                  max_positive=0.55, min_abs=0.1, max_abs=4.0)

    def _adapt(self, slot: str, x: Tensor) -> Tensor:
        adapter = getattr(self, slot)
        return x if adapter is None else adapter(x)

    def _rate(self, rate: ScheduledFloat) -> float:
        return float(rate) if self.training else 0.0

    def forward(self, src: Tensor, pos_emb: Tensor, chunk_size: int = -1,
                attn_mask: Tensor | None = None,
                src_key_padding_mask: Tensor | None = None) -> Tensor:
        """
        Args:
          src: (T, N, C); pos_emb: (1, 2T - 1, pos_dim);
          chunk_size: frames per chunk (causal models), -1 for none;
          attn_mask: (T, T) bool, True where target may not attend to source;
          src_key_padding_mask: (N, T) bool, True at padding.
        Returns:
          (T, N, C)
        """
        weights = self.self_attn_weights(src, pos_emb=pos_emb, attn_mask=attn_mask,
                                         key_padding_mask=src_key_padding_mask)
        return self._body(src, _Mixers(self, weights, chunk_size, src_key_padding_mask))

    def streaming_forward(self, src: Tensor, pos_emb: Tensor, cached_key: Tensor,
                          cached_nonlin_attn: Tensor, cached_val1: Tensor,
                          cached_val2: Tensor, cached_conv1: Tensor, cached_conv2: Tensor,
                          left_context_len: int, src_key_padding_mask: Tensor
                          ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """One chunk of a stream: the layer of :meth:`forward` (adapters included), its
        attention reaching back over L cached frames, its convolutions over theirs.

        Args:
          src: (T, N, C) the chunk; pos_emb: (1, L + 2T - 1, pos_dim);
          cached_key: (L, N, H * Dq); cached_nonlin_attn: (1, N, L, 3C/4);
          cached_val1, cached_val2: (L, N, H * Dv);
          cached_conv1, cached_conv2: (N, C, kernel // 2);
          left_context_len: L;
          src_key_padding_mask: (N, L + T) bool, True at cached frames not yet filled and
            at padded frames of the chunk.
        Returns:
          (T, N, C) and the six caches updated, in the order given.
        """
        weights, cached_key = self.self_attn_weights.streaming_forward(
            src, pos_emb=pos_emb, cached_key=cached_key, left_context_len=left_context_len,
            key_padding_mask=src_key_padding_mask)
        mixers = _StreamingMixers(self, weights, src_key_padding_mask[:, left_context_len:],
                                  [cached_nonlin_attn, cached_val1, cached_val2,
                                   cached_conv1, cached_conv2], left_context_len)
        src = self._body(src, mixers)
        return (src, cached_key, *mixers.caches)

    def _body(self, src: Tensor, mix: _Mixers) -> Tensor:
        """The layer after its attention weights: src (T, N, C) -> (T, N, C), the modules
        that mix frames called through ``mix``."""
        src_orig = src
        src = src + self.feed_forward1(src)
        attn_mask_seq = _sequence_mask(src, self._rate(self.attention_skip_rate))
        na = self.balancer_na(mix.nonlin(src))
        src = src + _masked(na, attn_mask_seq)
        src = src + _masked(mix.attn(0, src), attn_mask_seq)
        src = self._adapt("post_sa_adapter", src)
        conv_rate = self._rate(self.conv_skip_rate)
        src = src + _masked(mix.conv(0, src), _sequence_mask(src, conv_rate))
        ff2 = self.balancer_ff2(self.feed_forward2(src))
        src = src + _masked(ff2, _sequence_mask(src, self._rate(self.ff2_skip_rate)))
        src = self._adapt("mid_adapter", self.bypass_mid(src_orig, src))
        src = src + _masked(mix.attn(1, src), attn_mask_seq)
        src = src + _masked(mix.conv(1, src), _sequence_mask(src, conv_rate))
        src = self._adapt("post_conv_adapter", src)
        ff3 = self.balancer_ff3(self.feed_forward3(src))
        src = src + _masked(ff3, _sequence_mask(src, self._rate(self.ff3_skip_rate)))
        src = self.norm(self.balancer1(src))
        src = self.whiten(self.balancer2(self.bypass(src_orig, src)))
        return self._adapt("adapter", src)


class _Mixers:
    """A layer's frame-mixing modules (non-linear attention, the two self-attentions, the
    two convolutions) bound to one call's attention weights and padding mask.

    Args:
      layer: the layer; weights: (H, N, T, K) attention weights;
      chunk_size: the convolutions' chunk (-1 for none); mask: (N, T) bool or None.
    """

    def __init__(self, layer: Zipformer2EncoderLayer, weights: Tensor, chunk_size: int,
                 mask: Tensor | None) -> None:
        self.weights = weights
        self.chunk_size = chunk_size
        self.mask = mask
        self.nonlin_module = layer.nonlin_attention
        self.attn_modules = (layer.self_attn1, layer.self_attn2)
        self.conv_modules = (layer.conv_module1, layer.conv_module2)

    def nonlin(self, src: Tensor) -> Tensor:
        """src: (T, N, C) -> (T, N, C), attending with the first head's weights."""
        return self.nonlin_module(src, self.weights[0:1])

    def attn(self, i: int, src: Tensor) -> Tensor:
        """Self-attention i (0 or 1): src (T, N, C) -> (T, N, C)."""
        return self.attn_modules[i](src, self.weights)

    def conv(self, i: int, src: Tensor) -> Tensor:
        """Convolution module i (0 or 1): src (T, N, C) -> (T, N, C)."""
        return self.conv_modules[i](src, chunk_size=self.chunk_size,
                                    src_key_padding_mask=self.mask)


class _StreamingMixers(_Mixers):
    """:class:`_Mixers` for one chunk of a stream; each module continues from its cached
    left context, and ``caches`` holds the updated ones.

    Args:
      caches: [cached_nonlin_attn, cached_val1, cached_val2, cached_conv1, cached_conv2]
        (shapes as in :meth:`Zipformer2EncoderLayer.streaming_forward`);
      left_context_len: L; mask: (N, T) bool, the chunk's padding.
    """

    def __init__(self, layer: Zipformer2EncoderLayer, weights: Tensor, mask: Tensor,
                 caches: list[Tensor], left_context_len: int) -> None:
        super().__init__(layer, weights, -1, mask)
        self.caches = list(caches)
        self.left_context_len = left_context_len

    def nonlin(self, src: Tensor) -> Tensor:
        out, self.caches[0] = self.nonlin_module.streaming_forward(
            src, self.weights[0:1], cached_x=self.caches[0],
            left_context_len=self.left_context_len)
        return out

    def attn(self, i: int, src: Tensor) -> Tensor:
        out, self.caches[1 + i] = self.attn_modules[i].streaming_forward(
            src, self.weights, cached_val=self.caches[1 + i],
            left_context_len=self.left_context_len)
        return out

    def conv(self, i: int, src: Tensor) -> Tensor:
        out, self.caches[3 + i] = self.conv_modules[i].streaming_forward(
            src, cache=self.caches[3 + i], src_key_padding_mask=self.mask)
        return out
