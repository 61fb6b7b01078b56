"""Stateless transducer decoder (prediction network).

Dimension legend: N = batch, U = label positions, D = decoder_dim, V = vocab_size,
K = context_size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from icefall.zipformer.derived import derived
from icefall.zipformer.scaling import Balancer, _is_exporting


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
             one output frame is produced.
        Returns:
          (N, U, D) with need_pad, else (N, 1, D).
        """
        y = y.to(torch.int64)
        if not need_pad:
            if y.size(1) != self.context_size:
                raise ValueError(f"decoder input must have {self.context_size} labels when "
                                 f"need_pad=False, got {y.size(1)}")
            if not _is_exporting():
                return self.one_step(y).unsqueeze(1)  # (N, 1, D)
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

    def one_step(self, y: Tensor) -> Tensor:
        """The decoder output for one context per row, as a search step needs it.

        Without grad (decoding) the output is a sum of K rows of :meth:`step_tables`: a
        step that updates a few hypotheses costs K row gathers instead of an embedding
        lookup and a grouped convolution. With grad the grouped convolution runs as one
        einsum (several times faster than a convolution call on a few rows).

        Args:
          y: (N, K) int64 label ids, the oldest first; -1 (before the utterance start)
            contributes zero.
        Returns:
          (N, D), equal (up to float rounding) to ``forward(y, need_pad=False)[:, 0]``
          computed with the convolution.
        """
        if not torch.is_grad_enabled():
            cols = self.table_rows(y).t().contiguous()  # (K, N)
            out = self.sum_tables(self.step_tables(), cols)  # (N, D)
            return out.relu_() if self.context_size > 1 else out
        emb = self._embed(y)  # (N, K, D)
        if self.context_size == 1:
            return emb[:, 0]
        N, K, D = emb.shape
        groups = self.conv.groups
        per = D // groups
        w = self.conv.weight.view(groups, per, per, K)  # (G, out, in, K)
        x = emb.permute(0, 2, 1).reshape(N, groups, per, K)  # (N, G, in, K)
        return torch.einsum("ngik,goik->ngo", x, w).reshape(N, D).relu()

    def table_rows(self, y: Tensor) -> Tensor:
        """(..., K) label ids -> the same shape of :meth:`step_tables` rows (-1 -> row V)."""
        return torch.where(y < 0, self.vocab_size, y)

    @staticmethod
    def sum_tables(tables: Sequence[Tensor], cols: Tensor) -> Tensor:
        """The one-step decoder output before its activation, from precomputed tables.

        Args:
          tables: k tables of (V + 1, D): :meth:`step_tables`, its ``unbind(0)`` (a search
            holds the tuple, which saves a select per position and step), or the first k.
          cols: (k, N) int64 table rows (:meth:`table_rows`) for the k tables,
            position-major (row 0 = the oldest label of each context), each row contiguous.
        Returns:
          (N, D): the sum of the k gathered rows, added oldest first. The decoder output is
          its ReLU when K > 1, the sum itself when K = 1.
        """
        out = tables[0].index_select(0, cols[0])  # (N, D)
        for k in range(1, len(tables)):
            out = out.add_(tables[k].index_select(0, cols[k]))
        return out

    def step_tables(self) -> Tensor:
        """Per-position contributions of every label to the one-step convolution output.

        With K = 1 the tables are the embedding (there is no convolution). Built without
        grad and kept until the embedding or convolution weight is replaced, moved or
        modified in place (:func:`icefall.zipformer.derived.derived`).

        Returns:
          (K, V + 1, D): ``tables[k, v]`` is the output contribution of label v at context
          position k (0 = oldest); row V is zero (label -1, before the utterance start).
        Raises:
          ValueError: the embedding has LoRA that is unmerged (train mode): its weight is not
            what the decoder computes with.
        """
        if not getattr(self.embedding, "plain_forward", True):
            raise ValueError("the decoder's embedding has unmerged LoRA (train mode): decode "
                             "with the model in eval mode, where LoRA is merged")
        weights = (self.embedding.weight,)
        if self.context_size > 1:
            weights += (self.conv.weight,)
        return derived(self, "step_tables", weights, self._build_step_tables)

    def _build_step_tables(self) -> Tensor:
        """Computes :meth:`step_tables` from the current weights: (K, V + 1, D)."""
        V, D = self.embedding.weight.shape
        K = self.context_size
        with torch.no_grad():
            if K == 1:
                tables = self.embedding.weight.detach().unsqueeze(0)  # (1, V, D)
            else:
                groups = self.conv.groups
                per = D // groups
                w = self.conv.weight.detach().view(groups, per, per, K)  # (G, out, in, K)
                e = self.embedding.weight.detach().view(V, groups, per)  # (V, G, in)
                tables = torch.einsum("vgi,goik->kvgo", e, w).reshape(K, V, D)
            return torch.cat([tables, tables.new_zeros(K, 1, D)], dim=1)  # (K, V + 1, D)
