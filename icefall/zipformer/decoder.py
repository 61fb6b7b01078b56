"""Stateless transducer decoder (prediction network).

Dimension legend: N = batch, U = label positions, D = decoder_dim, V = vocab_size,
K = context_size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from icefall.zipformer.scaling import Balancer


class Decoder(nn.Module):
    """Embeds the last ``context_size`` labels and mixes them with a grouped Conv1d.

    Negative label ids (used by beam search before utterance start) embed to zero.

    Args:
      vocab_size: V; decoder_dim: D; blank_id: id of blank (also the SOS symbol);
      context_size: K, number of previous labels the output depends on.
    """

    def __init__(self, vocab_size: int, decoder_dim: int, blank_id: int,
                 context_size: int) -> None:
        super().__init__()
        if context_size < 1:
            raise ValueError(f"--context-size must be >= 1, got {context_size}")
        if decoder_dim % 4 != 0 and context_size > 1:
            raise ValueError(f"--decoder-dim must be a multiple of 4, got {decoder_dim}")
        self.vocab_size = vocab_size
        self.decoder_dim = decoder_dim
        self.blank_id = blank_id
        self.context_size = context_size
        self.embedding = nn.Embedding(vocab_size, decoder_dim)
        # Keep embedding magnitudes from drifting (they interact with model averaging).
        self.balancer = Balancer(decoder_dim, channel_dim=-1, min_positive=0.0,
                                 max_positive=1.0, min_abs=0.5, max_abs=1.0, prob=0.05)
        if context_size > 1:
            self.conv = nn.Conv1d(decoder_dim, decoder_dim, kernel_size=context_size,
                                  padding=0, groups=decoder_dim // 4, bias=False)
            self.balancer2 = Balancer(decoder_dim, channel_dim=-1, min_positive=0.0,
                                      max_positive=1.0, min_abs=0.5, max_abs=1.0, prob=0.05)
        else:
            self.conv = nn.Identity()
            self.balancer2 = nn.Identity()

    def forward(self, y: Tensor, need_pad: bool = True) -> Tensor:
        """
        Args:
          y: (N, U) label ids. With ``need_pad`` the output at u depends on
             y[:, u-K+1 .. u] (left-padded with zeros); without it U must equal K and
             one output frame is produced (a search's step).
        Returns:
          (N, U, D) with need_pad, else (N, 1, D).
        """
        y = y.to(torch.int64)
        if not need_pad and y.size(1) != self.context_size:
            raise ValueError(f"decoder input must have {self.context_size} labels when "
                             f"need_pad=False, got {y.size(1)}")
        emb = self._embed(y)  # (N, U, D)
        if self.context_size == 1:
            return emb
        emb = emb.permute(0, 2, 1)  # (N, D, U)
        if need_pad:
            emb = F.pad(emb, pad=(self.context_size - 1, 0))
        out = F.relu(self.conv(emb).permute(0, 2, 1))  # (N, U, D)
        return self.balancer2(out)

    def _embed(self, y: Tensor) -> Tensor:
        """(N, U) label ids -> (N, U, D) embeddings; id -1 embeds to zero."""
        return self.balancer(self.embedding(y.clamp(min=0)) * (y >= 0).unsqueeze(-1))
