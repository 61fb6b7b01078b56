"""A transducer's decoder and joiner as a search calls them, resolved once per search.

A search calls the joiner on every frame and the decoder on every emission, without grad
and with weights that stay fixed while it runs. Called as modules, the decoder and joiner
decide again on every call what is fixed for the whole search: which linear kernel runs
(:mod:`icefall.zipformer.cpu_linear`) and whether the decoder's one-step tables are still
current (:mod:`icefall.zipformer.derived`). In batch-16 greedy search on 2 CPU cores
those per-call decisions and module calls took about a third of the time.
:class:`TransducerStep` makes them once, then computes the joiner as

  output_linear(tanh(h)) = W tanh(h) + b = (2W) sigmoid(2h) + (b - W 1),

h = projected encoder frame + projected decoder output, because PyTorch's CPU tanh takes
12 us on a 16 x 512 block on this project's machines, at every ATEN_CPU_CAPABILITY level,
where sigmoid takes 3 (2.5 inside the search). The search carries its projections
doubled: ``project_encoder`` and ``decoder_out`` return 2h's two terms, computed by copies
of the projection layers with weight and bias doubled (exact in floating point: the
results are bitwise twice the joiner's). The output layer's copy has weight 2W and bias
b - W 1. The copies are derived once per weight state (:mod:`icefall.zipformer.derived`).
The logits equal the joiner's up to float rounding (a few parts in a million; the tests
compare them).

Pass what ``project_encoder`` and ``decoder_out`` return only to ``logits``.

Adapters in the decoder or joiner (``--adapter-targets decoder,joiner``): an output adapter
on the decoder acts on the table sum after its activation; a projection or output layer that
is not a plain linear layer (an output adapter on it, or LoRA unmerged;
:func:`icefall.zipformer.cpu_linear.plain_linear`) is called as a module, its output doubled,
and the output layer then gets ``2 sigmoid(2h) - 1 = tanh(h)``. Merged LoRA is plain.

Dimension legend: M = rows (hypotheses or utterances), E = rows that emit a label,
K = decoder context size, C = encoder output dim, D = decoder dim, J = joiner dim,
V = vocab size.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from icefall.zipformer.cpu_linear import decoding_linear, plain_linear
from icefall.zipformer.derived import derived


class TransducerStep:
    """One search's view of ``model`` (a transducer with ``.decoder`` and ``.joiner``).

    Build it inside the search (grad off) and drop it when the search ends: it holds the
    decoder tables and linear kernels of the weights as they were when it was built.
    """

    def __init__(self, model: nn.Module) -> None:
        decoder, joiner = model.decoder, model.joiner
        self.blank_id = int(decoder.blank_id)
        self.context_size = int(decoder.context_size)
        self.unk_id = int(getattr(model, "unk_id", self.blank_id))
        self._decoder = decoder
        self._table_stack = decoder.step_tables()  # (K, V + 1, D)
        self._tables = self._table_stack.unbind(0)  # K x (V + 1, D)
        self._decoder_adapter = getattr(decoder, "output_adapter", None)
        self._project_encoder = _doubled_projection(joiner.encoder_proj)
        self._project_decoder = _doubled_projection(joiner.decoder_proj)
        self._output = _output_layer(joiner.output_linear)

    def initial_context(self) -> list[int]:
        """Label ids before the first label: ``[-1] * (K - 1) + [blank_id]``."""
        return [-1] * (self.context_size - 1) + [self.blank_id]

    def table_rows(self, labels: Tensor) -> Tensor:
        """Label ids -> decoder table rows, same shape (label -1 has its own, zero, row)."""
        return self._decoder.table_rows(labels.to(torch.int64))

    def project_encoder(self, encoder_out: Tensor) -> Tensor:
        """(..., C) encoder output -> (..., J): twice ``joiner.encoder_proj``'s output."""
        return self._project_encoder(encoder_out)

    def decoder_out(self, cols: Tensor) -> Tensor:
        """(K, M) decoder table rows of M contexts in the layout of ``Decoder.sum_tables``
        -> (M, J): twice the projected decoder output."""
        return self._activate_and_project(self._decoder.sum_tables(self._tables, cols))

    def decoder_out_for(self, labels: Tensor) -> Tensor:
        """(M, K) label contexts (ids, -1 before the start) -> (M, J), as decoder_out."""
        return self.decoder_out(self.table_rows(labels).t().contiguous())

    def partial_sums(self, labels: Tensor) -> Tensor:
        """(M, K) label contexts (ids, -1 before the start) -> (K, M, D) partial sums Q.

        With T_k the decoder's step tables and c the context (oldest label first), Q[i] is
        the table sum of the context's last i + 1 labels at positions 0..i, the places they
        take after K - 1 - i more labels: Q[i] = sum_{k <= i} T_k[c[K - 1 - i + k]]. Q[K - 1]
        is the decoder output before its activation. Appending label y gives
        Q'[0] = T_0[y] and Q'[i] = Q[i - 1] + T_i[y] (:meth:`advance`), so that greedy
        search extends a hypothesis with one gather and one addition instead of rebuilding
        its context and gathering K rows.
        """
        cols = self.table_rows(labels).t().contiguous()  # (K, M)
        K = self.context_size
        sum_tables = self._decoder.sum_tables
        return torch.stack([sum_tables(self._tables[:i + 1], cols[K - 1 - i:])
                            for i in range(K)])  # (K, M, D)

    def advance(self, sums: Tensor, tokens: Tensor) -> Tensor:
        """(K, E, D) partial sums of E contexts and (E,) label ids (>= 0) -> (K, E, D)
        partial sums of the contexts with the labels appended."""
        out = self._table_stack.index_select(1, tokens)  # (K, E, D): out[i] = T_i[y]
        out[1:] += sums[:-1]
        return out

    def decoder_out_from_sums(self, sums: Tensor) -> Tensor:
        """(K, M, D) partial sums -> (M, J): twice the projected decoder output, equal to
        :meth:`decoder_out_for` of the contexts."""
        return self._activate_and_project(sums[-1])

    def _activate_and_project(self, full: Tensor) -> Tensor:
        """(M, D) table sum (left unchanged) -> (M, J): the decoder's activation (ReLU when
        K > 1), then the doubled projection."""
        out = full.relu() if self.context_size > 1 else full
        if self._decoder_adapter is not None:
            out = self._decoder_adapter(out)
        return self._project_decoder(out)

    def logits(self, enc: Tensor, dec: Tensor) -> Tensor:
        """(M, J) doubled encoder frames and decoder outputs -> (M, V) joiner logits."""
        return self._output((enc + dec).sigmoid_())


def _doubled_projection(layer: nn.Module) -> Callable[[Tensor], Tensor]:
    """x (..., I) -> twice ``layer(x)``: a doubled plain copy, or the module times two."""
    if plain_linear(layer):
        return decoding_linear(doubled(layer))
    return lambda x: layer(x).mul_(2.0)


def _output_layer(layer: nn.Module) -> Callable[[Tensor], Tensor]:
    """s = sigmoid(2h) (M, J) -> ``layer(tanh(h))`` (M, V)."""
    if plain_linear(layer):
        return decoding_linear(sigmoid_form(layer))
    return lambda s: layer(s * 2.0 - 1.0)


def doubled(layer: nn.Linear) -> nn.Linear:
    """The layer with weight 2W and bias 2b: bitwise twice ``layer``'s output."""
    return _twice_weight(layer, "doubled", lambda w, b: 2.0 * b)


def sigmoid_form(layer: nn.Linear) -> nn.Linear:
    """The layer L' with L'(sigmoid(2h)) = layer(tanh(h)): weight 2W, bias b - W 1."""
    return _twice_weight(layer, "sigmoid_form", lambda w, b: b - w.sum(dim=1))


def _twice_weight(layer: nn.Linear, name: str,
                  new_bias: Callable[[Tensor, Tensor], Tensor]) -> nn.Linear:
    """A copy of ``layer`` with weight 2W and bias ``new_bias(W, b)``.

    Derived once per state of the layer's weights (:mod:`icefall.zipformer.derived`).

    Args:
      layer: (O, I) weight W, optional (O,) bias b (zero when absent).
      name: which copy this is (the cache key).
      new_bias: computes the (O,) bias from W and b, both given in float64.
    Returns:
      An ``nn.Linear`` of the same shape, dtype and device, without grad.
    """
    weights = (layer.weight,) if layer.bias is None else (layer.weight, layer.bias)

    def build() -> nn.Linear:
        # Outside inference mode: normal tensors have the version counters under which
        # the packed copy of the new weight is cached (icefall.zipformer.cpu_linear).
        with torch.inference_mode(False), torch.no_grad():
            w = layer.weight.detach()  # (O, I)
            b = (torch.zeros(w.size(0), dtype=torch.float64, device=w.device)
                 if layer.bias is None else layer.bias.detach().double())  # (O,)
            out = nn.Linear(w.size(1), w.size(0), device=w.device, dtype=w.dtype)
            out.requires_grad_(False)
            out.weight.copy_(w * 2.0)
            out.bias.copy_(new_bias(w.double(), b))
        return out

    return derived(layer, name, weights, build)
