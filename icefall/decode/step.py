"""A transducer's decoder and joiner as a search calls them.

:class:`TransducerStep` gives the searches (:mod:`icefall.decode.search`,
:mod:`icefall.decode.streaming`, :mod:`icefall.decode.streaming_beam_search`) one interface
to a model's stateless decoder and joiner, called as modules the way icefall's
``beam_search.py`` calls them: the decoder with ``need_pad=False`` on K-label contexts, the
joiner's ``encoder_proj`` once per encoder frame and its ``decoder_proj`` once per decoder
output, then the joiner itself with ``project_input=False``
(``output_linear(tanh(enc + dec))``). Every computation is a module call, so adapters and
LoRA placed in the decoder or joiner (``--adapter-targets decoder,joiner``,
:mod:`icefall.zipformer.placement`) act as they do in training, on any device and dtype.

One exception pays end to end: the decoder's one-step output is a sum of K table rows
(:mod:`icefall.decode.decoder_tables`, built when the step is, from the weights as they are
then), followed by the decoder's output adapter if it has one. A decoder the tables do not
reproduce (unmerged LoRA, another class, grad on) is called as a module.

Dimension legend: M = rows (hypotheses or utterances), K = decoder context size,
C = encoder output dim, J = joiner dim, V = vocab size.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from icefall.decode.decoder_tables import DecoderTables, tables_apply
from icefall.zipformer.placement import output_adapter_of


class TransducerStep:
    """One search's view of ``model`` (a transducer with ``.decoder`` and ``.joiner``):
    its token ids and the three calls a search makes. Build it when the search starts:
    it holds the decoder tables of the weights as they are then.

    Attributes:
      blank_id: the decoder's blank (also the start-of-sequence symbol).
      context_size: K, the labels the decoder output depends on.
      unk_id: ``model.unk_id`` if the model has one, else blank_id (never emitted).
    """

    def __init__(self, model: nn.Module) -> None:
        self._decoder, self._joiner = model.decoder, model.joiner
        self.blank_id = int(self._decoder.blank_id)
        self.context_size = int(self._decoder.context_size)
        self.unk_id = int(getattr(model, "unk_id", self.blank_id))
        self._tables = DecoderTables(self._decoder) if tables_apply(self._decoder) else None
        self._decoder_adapter = output_adapter_of(self._decoder)

    def initial_context(self) -> list[int]:
        """Label ids before the first label: ``[-1] * (K - 1) + [blank_id]``."""
        return [-1] * (self.context_size - 1) + [self.blank_id]

    def project_encoder(self, encoder_out: Tensor) -> Tensor:
        """(..., C) encoder output -> (..., J): ``joiner.encoder_proj``."""
        return self._joiner.encoder_proj(encoder_out)

    def decoder_out(self, contexts: Tensor) -> Tensor:
        """(M, K) label contexts (ids, oldest first; -1 before the start) -> (M, J): the
        decoder's one-step output projected by ``joiner.decoder_proj``."""
        if contexts.ndim != 2 or contexts.size(1) != self.context_size:
            raise ValueError(f"decoder contexts must have shape (M, {self.context_size}), "
                             f"got {tuple(contexts.shape)}")
        contexts = contexts.to(torch.int64)
        if self._tables is None:
            out = self._decoder(contexts, need_pad=False).squeeze(1)  # (M, D)
        else:
            out = self._tables(contexts)  # (M, D)
            if self._decoder_adapter is not None:
                out = self._decoder_adapter(out)
        return self._joiner.decoder_proj(out)

    def logits(self, enc: Tensor, dec: Tensor) -> Tensor:
        """(M, J) projected encoder frames and (M, J) projected decoder outputs -> (M, V)
        joiner logits."""
        return self._joiner(enc, dec, project_input=False)
