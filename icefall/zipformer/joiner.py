"""Transducer joiner.

Dimension legend: N = batch, T = encoder frames, U = label positions,
C = encoder output dim, D = decoder_dim, J = joiner_dim, V = vocab_size.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from icefall.zipformer.scaling import ScaledLinear


class Joiner(nn.Module):
    """logits = output_linear(tanh(encoder_proj(enc) + decoder_proj(dec)))."""

    def __init__(self, encoder_dim: int, decoder_dim: int, joiner_dim: int,
                 vocab_size: int) -> None:
        super().__init__()
        self.encoder_proj = ScaledLinear(encoder_dim, joiner_dim, initial_scale=0.25)
        self.decoder_proj = ScaledLinear(decoder_dim, joiner_dim, initial_scale=0.25)
        self.output_linear = nn.Linear(joiner_dim, vocab_size)

    def forward(self, encoder_out: Tensor, decoder_out: Tensor,
                project_input: bool = True) -> Tensor:
        """
        Args:
          encoder_out: (..., C), or (..., J) when project_input is False.
          decoder_out: (..., D), or (..., J) when project_input is False; broadcastable
            with encoder_out, e.g. (N, T, 1, J) with (N, 1, U, J).
          project_input: apply encoder_proj/decoder_proj first (False when the caller
            already projected, as the pruned loss and the search functions do).
        Returns:
          (..., V) unnormalised logits.
        """
        if encoder_out.ndim != decoder_out.ndim:
            raise ValueError(f"encoder_out and decoder_out must have the same rank, got "
                             f"{tuple(encoder_out.shape)} and {tuple(decoder_out.shape)}")
        if project_input:
            logit = self.encoder_proj(encoder_out) + self.decoder_proj(decoder_out)
        else:
            logit = encoder_out + decoder_out
        return self.output_linear(torch.tanh(logit))
