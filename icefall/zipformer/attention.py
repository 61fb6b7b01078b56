"""Attention in a Zipformer2 layer (Zipformer paper, 3.3-3.5).

One set of relative-position attention weights per layer is shared by the
non-linear attention module and both self-attention modules.

Dimension legend: T = frames (seq-first layout), N = batch, C = embed_dim,
H = heads, Dq = query_head_dim, Dp = pos_head_dim, Dv = value_head_dim,
P = pos_dim, L = cached left-context frames (streaming; 0 otherwise), K = L + T key frames,
R = K + T - 1 relative offsets (2T - 1 without a cache).

Streaming (icefall's ``streaming_forward`` methods): a chunk of T frames attends to itself
and to the last L frames of earlier chunks, whose keys and values the caller keeps
(cached_key (L, N, H * Dq), cached_val (L, N, H * Dv), cached_x (1, N, L, hidden)) and
gets back updated.
"""

from __future__ import annotations

import math
import random

import torch
from torch import Tensor, nn

from icefall.zipformer.scaling import (
    Balancer,
    Dropout2,
    FloatLike,
    ScaledLinear,
    ScheduledFloat,
    Whiten,
    _is_exporting,
    penalize_abs_values_gt,
)

# Masked scores: large enough that exp() is exactly 0, finite so that an all-masked row
# still yields finite (uniform) weights rather than NaN.
MASKED_SCORE = -1000.0


def whitening_schedule(x: float, ratio: float = 2.0) -> ScheduledFloat:
    """Whitening limit that grows from x to ratio * x over the first 20k batches."""
    return ScheduledFloat((0.0, x), (20000.0, ratio * x), default=x)


class CompactRelPositionalEncoding(nn.Module):
    """Relative position embeddings that compress large offsets.

    An offset d maps to c * sign(d) * log(1 + |d| / c) with c = sqrt(P), then through
    atan(. * 2 pi / (length_factor * P)) into (-pi/2, pi/2), whose first P/2 Fourier
    harmonics (cos, sin interleaved) form the embedding; the last dim is a constant 1.
    Small offsets stay distinguishable while large ones blur together.
    """

    def __init__(self, embed_dim: int, dropout_rate: FloatLike, max_len: int = 1000,
                 length_factor: float = 1.0) -> None:
        super().__init__()
        if embed_dim % 2 != 0:
            raise ValueError(f"--pos-dim must be even, got {embed_dim}")
        if length_factor < 1.0:
            raise ValueError(f"length_factor must be >= 1.0, got {length_factor}")
        self.embed_dim = embed_dim
        self.length_factor = length_factor
        self.dropout = Dropout2(dropout_rate)
        self.pe = self._table(max_len)

    def _table(self, half_len: int) -> Tensor:
        """(2 * half_len - 1, P) embeddings of offsets -(half_len-1) .. half_len-1."""
        d = torch.arange(-(half_len - 1), half_len, dtype=torch.float32).unsqueeze(1)
        freqs = 1 + torch.arange(self.embed_dim // 2, dtype=torch.float32)
        c = self.embed_dim ** 0.5
        compressed = c * d.sign() * ((d.abs() + c).log() - math.log(c))
        length_scale = self.length_factor * self.embed_dim / (2.0 * math.pi)
        angle = (compressed / length_scale).atan() * freqs  # (2L-1, P/2)
        # cos and sin interleaved, last dim 1 (no index assignment, so it traces)
        pe = torch.stack((angle.cos(), angle.sin()), dim=-1).reshape(d.shape[0], -1)
        return torch.cat((pe[:, :-1], torch.ones_like(pe[:, :1])), dim=1)

    def forward(self, x: Tensor, left_context_len: int = 0) -> Tensor:
        """
        Args:
          x: (T, N, C), used for its length, dtype and device;
          left_context_len: L, cached frames before x (streaming).
        Returns:
          (1, L + 2T - 1, P); row j is the embedding of offset j - (L + T - 1), i.e. the
          offsets from -(L + T - 1) (first query to first cached key) to T - 1.
        """
        T = x.size(0)
        K = T + left_context_len
        if _is_exporting():  # computed in the graph: any length works, no table baked in
            return self.dropout(self._table(K)[: K + T - 1].to(x.dtype).unsqueeze(0))
        if self.pe.size(0) < 2 * K - 1:
            self.pe = self._table(K)
        if self.pe.device != x.device or self.pe.dtype != x.dtype:
            self.pe = self.pe.to(device=x.device, dtype=x.dtype)
        center = self.pe.size(0) // 2
        return self.dropout(self.pe[center - K + 1: center + T].unsqueeze(0))


class RelPositionMultiheadAttentionWeights(nn.Module):
    """Multi-head attention weights from content (q . k) and relative position (p . pos).

    The in_proj weights are scaled at init so that no 1/sqrt(Dq) factor is needed.
    """

    def __init__(self, embed_dim: int, pos_dim: int, num_heads: int, query_head_dim: int,
                 pos_head_dim: int, dropout: float = 0.0,
                 pos_emb_skip_rate: FloatLike | None = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.query_head_dim = query_head_dim
        self.pos_head_dim = pos_head_dim
        self.dropout = dropout
        self.pos_emb_skip_rate = (ScheduledFloat((0.0, 0.5), (4000.0, 0.0))
                                  if pos_emb_skip_rate is None else pos_emb_skip_rate)
        in_proj_dim = (2 * query_head_dim + pos_head_dim) * num_heads
        self.in_proj = ScaledLinear(embed_dim, in_proj_dim, bias=True,
                                    initial_scale=query_head_dim ** -0.25)
        self.whiten_keys = Whiten(num_groups=num_heads, whitening_limit=whitening_schedule(3.0),
                                  prob=(0.025, 0.25), grad_scale=0.025)
        # Scores are invariant to a constant on the keys; keep their mean near zero anyway.
        self.balance_keys = Balancer(query_head_dim * num_heads, channel_dim=-1,
                                     min_positive=0.4, max_positive=0.6, min_abs=0.0,
                                     max_abs=100.0, prob=0.025)
        self.linear_pos = ScaledLinear(pos_dim, num_heads * pos_head_dim, bias=False,
                                       initial_scale=0.05)

    def forward(self, x: Tensor, pos_emb: Tensor, key_padding_mask: Tensor | None = None,
                attn_mask: Tensor | None = None) -> Tensor:
        """
        Args:
          x: (T, N, C); pos_emb: (1, 2T - 1, P) from CompactRelPositionalEncoding.
          key_padding_mask: (N, T) bool, True at padded source frames.
          attn_mask: (T, T) bool (target, source), True where attention is not allowed.
        Returns:
          (H, N, T, T) attention weights, rows summing to 1.
        """
        q, k, p = self._project(x)
        return self._weights(q, k, p, pos_emb, key_padding_mask, attn_mask)

    def streaming_forward(self, x: Tensor, pos_emb: Tensor, cached_key: Tensor,
                          left_context_len: int, key_padding_mask: Tensor
                          ) -> tuple[Tensor, Tensor]:
        """Weights of a chunk over the cached left context and itself.

        Args:
          x: (T, N, C) the chunk; pos_emb: (1, L + 2T - 1, P) from
            ``CompactRelPositionalEncoding(x, left_context_len=L)``;
          cached_key: (L, N, H * Dq) keys of the L frames before the chunk;
          left_context_len: L; key_padding_mask: (N, L + T) bool, True at cached frames
            not yet filled and at padded frames of the chunk.
        Returns:
          (H, N, T, L + T) attention weights and the updated (L, N, H * Dq) cached_key.
        """
        q, k, p = self._project(x)
        k = torch.cat((cached_key, k), dim=0)  # (L + T, N, H * Dq)
        weights = self._weights(q, k, p, pos_emb, key_padding_mask, None)
        return weights, k[k.shape[0] - left_context_len:]

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x: (T, N, C) -> queries (T, N, H * Dq), keys (T, N, H * Dq) and position
        queries (T, N, H * Dp)."""
        H, Dq = self.num_heads, self.query_head_dim
        x = self.in_proj(x)  # (T, N, H * (2 Dq + Dp))
        k = self.whiten_keys(self.balance_keys(x[..., H * Dq: 2 * H * Dq]))
        return x[..., : H * Dq], k, x[..., 2 * H * Dq:]

    def _weights(self, q: Tensor, k: Tensor, p: Tensor, pos_emb: Tensor,
                 key_padding_mask: Tensor | None, attn_mask: Tensor | None) -> Tensor:
        """
        Args:
          q: (T, N, H * Dq); k: (K, N, H * Dq), its last T frames the queries' own;
          p: (T, N, H * Dp); pos_emb: (1, K + T - 1, P);
          key_padding_mask: (N, K); attn_mask: (T, K), both bool, True where not allowed.
        Returns:
          (H, N, T, K) attention weights, rows summing to 1.
        """
        T, N, _ = q.shape
        K = k.shape[0]
        H, Dq, Dp = self.num_heads, self.query_head_dim, self.pos_head_dim
        q = q.reshape(T, N, H, Dq).permute(2, 1, 0, 3)  # (H, N, T, Dq)
        k = k.reshape(K, N, H, Dq).permute(2, 1, 3, 0)  # (H, N, Dq, K)
        scores = torch.matmul(q, k)  # (H, N, T, K)
        if not self.training or random.random() >= float(self.pos_emb_skip_rate):
            p = p.reshape(T, N, H, Dp).permute(2, 1, 0, 3)  # (H, N, T, Dp)
            pos = self.linear_pos(pos_emb)  # (1, R, H * Dp)
            pos = pos.reshape(-1, K + T - 1, H, Dp).permute(2, 0, 3, 1)  # (H, 1, Dp, R)
            scores = scores + rel_to_abs(torch.matmul(p, pos), T, K)
        if self.training and random.random() < 0.1:
            scores = penalize_abs_values_gt(scores, limit=25.0, penalty=1.0e-04)
        if attn_mask is not None:
            scores = scores.masked_fill(attn_mask, MASKED_SCORE)
        if key_padding_mask is not None:
            scores = scores.masked_fill(key_padding_mask.unsqueeze(1), MASKED_SCORE)
        weights = scores.softmax(dim=-1)
        return nn.functional.dropout(weights, p=self.dropout, training=self.training)


def rel_to_abs(pos_scores: Tensor, T: int, K: int | None = None) -> Tensor:
    """Re-indexes scores by relative offset into scores by (target, source) frame.

    Args:
      pos_scores: (H, N, T, K + T - 1); [..., i, r] scores offset r - (K - 1), the query
        i sitting at key position K - T + i (after K - T cached frames);
      T: query frames; K: key frames (default T).
    Returns:
      (H, N, T, K); [..., i, j] = pos_scores[..., i, T - 1 - i + j], i.e. offset
      j - (K - T + i).
    """
    K = T if K is None else K
    if _is_exporting():
        H, N, _, R = pos_scores.shape
        rows = torch.arange(T - 1, -1, -1, device=pos_scores.device).unsqueeze(1)
        index = (rows + torch.arange(K, device=pos_scores.device)).expand(H, N, T, K)
        return torch.gather(pos_scores, dim=3, index=index)
    s0, s1, s2, s3 = pos_scores.stride()
    return pos_scores.as_strided((pos_scores.shape[0], pos_scores.shape[1], T, K),
                                 (s0, s1, s2 - s3, s3), storage_offset=pos_scores.storage_offset()
                                 + s3 * (T - 1))


class SelfAttention(nn.Module):
    """Applies shared attention weights to a value projection of x."""

    def __init__(self, embed_dim: int, num_heads: int, value_head_dim: int) -> None:
        super().__init__()
        self.in_proj = nn.Linear(embed_dim, num_heads * value_head_dim, bias=True)
        self.out_proj = ScaledLinear(num_heads * value_head_dim, embed_dim, bias=True,
                                     initial_scale=0.05)
        self.whiten = Whiten(num_groups=1, whitening_limit=whitening_schedule(7.5, ratio=3.0),
                             prob=(0.025, 0.25), grad_scale=0.01)

    def forward(self, x: Tensor, attn_weights: Tensor) -> Tensor:
        """
        Args:
          x: (T, N, C); attn_weights: (H, N, T, T).
        Returns:
          (T, N, C)
        """
        return self._attend(self.in_proj(x), attn_weights)

    def streaming_forward(self, x: Tensor, attn_weights: Tensor, cached_val: Tensor,
                          left_context_len: int) -> tuple[Tensor, Tensor]:
        """
        Args:
          x: (T, N, C) a chunk; attn_weights: (H, N, T, L + T);
          cached_val: (L, N, H * Dv) values of the L frames before the chunk;
          left_context_len: L.
        Returns:
          (T, N, C) and the updated (L, N, H * Dv) cached_val.
        """
        v = torch.cat((cached_val, self.in_proj(x)), dim=0)  # (L + T, N, H * Dv)
        return self._attend(v, attn_weights), v[v.shape[0] - left_context_len:]

    def _attend(self, v: Tensor, attn_weights: Tensor) -> Tensor:
        """v: (K, N, H * Dv) values; attn_weights: (H, N, T, K) -> (T, N, C)."""
        K, N, _ = v.shape
        H, _, T, _ = attn_weights.shape
        v = v.reshape(K, N, H, -1).permute(2, 1, 0, 3)  # (H, N, K, Dv)
        v = torch.matmul(attn_weights, v)  # (H, N, T, Dv)
        v = v.permute(2, 1, 0, 3).reshape(T, N, -1)  # (T, N, H * Dv)
        return self.whiten(self.out_proj(v))


class NonlinAttention(nn.Module):
    """Gated attention with one head: out_proj(attn(x * tanh(s)) * y), with s, x, y three
    projections of the input, each ``hidden_channels`` wide.
    """

    def __init__(self, channels: int, hidden_channels: int) -> None:
        super().__init__()
        self.hidden_channels = hidden_channels
        self.in_proj = nn.Linear(channels, 3 * hidden_channels, bias=True)
        self.balancer = Balancer(hidden_channels, channel_dim=-1,
                                 min_positive=ScheduledFloat((0.0, 0.25), (20000.0, 0.05)),
                                 max_positive=ScheduledFloat((0.0, 0.75), (20000.0, 0.95)),
                                 min_abs=0.5, max_abs=5.0)
        self.out_proj = ScaledLinear(hidden_channels, channels, bias=True, initial_scale=0.05)
        self.whiten1 = Whiten(num_groups=1, whitening_limit=whitening_schedule(5.0),
                              prob=(0.025, 0.25), grad_scale=0.01)
        self.whiten2 = Whiten(num_groups=1, whitening_limit=whitening_schedule(5.0, ratio=3.0),
                              prob=(0.025, 0.25), grad_scale=0.01)

    def forward(self, x: Tensor, attn_weights: Tensor) -> Tensor:
        """
        Args:
          x: (T, N, C); attn_weights: (H, N, T, T), H = 1 in a Zipformer layer (the first
            head's weights).
        Returns:
          (T, N, C)
        """
        gated, y = self._gate(x, attn_weights.shape[0])
        return self._attend(gated, y, attn_weights)

    def streaming_forward(self, x: Tensor, attn_weights: Tensor, cached_x: Tensor,
                          left_context_len: int) -> tuple[Tensor, Tensor]:
        """
        Args:
          x: (T, N, C) a chunk; attn_weights: (H, N, T, L + T);
          cached_x: (H, N, L, hidden / H) gated inputs of the L frames before the chunk;
          left_context_len: L.
        Returns:
          (T, N, C) and the updated (H, N, L, hidden / H) cached_x.
        """
        gated, y = self._gate(x, attn_weights.shape[0])
        gated = torch.cat((cached_x, gated), dim=2)  # (H, N, L + T, hidden / H)
        return (self._attend(gated, y, attn_weights),
                gated[:, :, gated.shape[2] - left_context_len:])

    def _gate(self, x: Tensor, num_heads: int) -> tuple[Tensor, Tensor]:
        """
        Args:
          x: (T, N, C); num_heads: H.
        Returns:
          the gated input x * tanh(s) split into heads, (H, N, T, hidden / H), and the
          output gate y, (T, N, hidden).
        """
        T, N, _ = x.shape
        s, x, y = self.in_proj(x).chunk(3, dim=2)  # each (T, N, hidden)
        x = self.whiten1(x) * torch.tanh(self.balancer(s))
        return x.reshape(T, N, num_heads, -1).permute(2, 1, 0, 3), y  # (H, N, T, hidden / H)

    def _attend(self, gated: Tensor, y: Tensor, attn_weights: Tensor) -> Tensor:
        """gated: (H, N, K, hidden / H); y: (T, N, hidden); attn_weights: (H, N, T, K)
        -> (T, N, C)."""
        T, N, _ = y.shape
        x = torch.matmul(attn_weights, gated)  # (H, N, T, hidden / H)
        x = x.permute(2, 1, 0, 3).reshape(T, N, -1)  # (T, N, hidden)
        return self.whiten2(self.out_proj(x * y))
