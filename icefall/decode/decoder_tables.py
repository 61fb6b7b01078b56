"""The stateless decoder's one-step output as a sum of table rows, for the searches.

A search calls the decoder on K-label contexts only (``need_pad=False``): an embedding
lookup and a grouped Conv1d over exactly K positions. Both are linear in the embedding
rows, so the output before its ReLU is ``sum_k T_k[y_k]`` with

  T_k[v] = the convolution's output for label v alone at context position k,

K tables of (V + 1, D), row V zero for label -1 (before the utterance start). Modified beam
search calls the decoder on every hypothesis at every frame; gathering K rows instead of an
embedding lookup and a convolution makes it 1.19x faster end to end at batch 1 and 1.14x at
batch 16 on 2 CPU threads (docs/benchmarks.md, section "decode"), which is why this stays
while the other decoding shortcuts went (issue 13).

The tables are built from the weights when a search starts (:class:`DecoderTables`), so
they are never stale, and only for a decoder whose one-step output they reproduce: this
package's :class:`~icefall.zipformer.decoder.Decoder` with a plain embedding (or LoRA
merged into it) and a plain convolution. An output adapter on the decoder is applied after
the table sum by the caller (:class:`icefall.decode.step.TransducerStep`); any other decoder
is called as a module.

Dimension legend: M = contexts, K = context size, V = vocab size, D = decoder dim,
G = convolution groups, P = channels per group (D / G).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from icefall.zipformer.decoder import Decoder
from icefall.zipformer.lora import LoRAEmbedding


class DecoderTables:
    """One search's tables of ``decoder`` (built with grad off, on its device and dtype).

    Args:
      decoder: a decoder for which :func:`tables_apply` is True.
    """

    def __init__(self, decoder: Decoder) -> None:
        self.vocab_size = int(decoder.vocab_size)
        self.context_size = int(decoder.context_size)
        self.tables = build_tables(decoder).unbind(0)  # K x (V + 1, D)

    def __call__(self, contexts: Tensor) -> Tensor:
        """(M, K) int64 label contexts (oldest first, -1 before the start) -> (M, D): the
        decoder's one-step output before any output adapter."""
        rows = torch.where(contexts < 0, self.vocab_size, contexts)  # (M, K)
        out = self.tables[0].index_select(0, rows[:, 0])  # (M, D)
        for k in range(1, self.context_size):
            out = out.add_(self.tables[k].index_select(0, rows[:, k]))
        return out.relu_() if self.context_size > 1 else out


def tables_apply(decoder: nn.Module) -> bool:
    """True when table sums reproduce ``decoder``'s one-step output (up to its output
    adapter): this package's decoder, a plain or merged-LoRA embedding, a plain
    convolution, and grad off (with grad, the modules must run for the backward pass)."""
    if not isinstance(decoder, Decoder) or torch.is_grad_enabled():
        return False
    emb = decoder.embedding
    plain_emb = type(emb) is nn.Embedding or (isinstance(emb, LoRAEmbedding)
                                               and emb.plain_forward)
    return plain_emb and type(decoder.conv) in (nn.Conv1d, nn.Identity)


def build_tables(decoder: Decoder) -> Tensor:
    """The per-position contributions of every label to the one-step output.

    Returns:
      (K, V + 1, D): ``[k, v]`` is the pre-ReLU output for label v at context position k
      (0 = oldest) and zero elsewhere; row V is zero. With K = 1 the table is the embedding.
    """
    with torch.no_grad():
        emb = decoder.embedding.weight.detach()  # (V, D)
        V, D = emb.shape
        K = int(decoder.context_size)
        if K == 1:
            tables = emb.unsqueeze(0)  # (1, V, D)
        else:
            G = decoder.conv.groups
            P = D // G
            w = decoder.conv.weight.detach().view(G, P, P, K)  # (G, out, in, K)
            tables = torch.einsum("vgi,goik->kvgo", emb.view(V, G, P), w).reshape(K, V, D)
        return torch.cat([tables, tables.new_zeros(K, 1, D)], dim=1)  # (K, V + 1, D)
