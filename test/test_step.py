"""TransducerStep computes what the decoder and joiner modules compute, and follows weight
changes between searches.

Dimension legend: M = rows, K = context size, C = encoder dim, J = joiner dim, V = vocab.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from icefall.decode.step import TransducerStep, doubled, sigmoid_form
from icefall.zipformer.decoder import Decoder
from icefall.zipformer.joiner import Joiner

C, D, J, V = 20, 16, 24, 30


class Model(nn.Module):
    def __init__(self, context_size: int, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.decoder = Decoder(V, D, blank_id=0, context_size=context_size)
        self.joiner = Joiner(C, D, J, V)
        self.eval()


def _contexts(M: int, K: int, seed: int = 1) -> torch.Tensor:
    """(M, K) label contexts, some starting with -1 (before the first label)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, V, (M, K), generator=g)
    y[: M // 3, 0] = -1
    return y


def _reference_logits(model: Model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The modules' own path: padded convolution decoder, joiner with its projections."""
    with torch.no_grad():
        dec = model.decoder(y, need_pad=True)[:, -1]  # (M, D)
        return model.joiner(x, dec, project_input=True)  # (M, V)


@pytest.mark.parametrize("context_size", [1, 2, 3])
@pytest.mark.parametrize("rows", [1, 7, 40])
def test_logits_equal_the_joiner_of_the_decoder_output(context_size, rows):
    model = Model(context_size)
    x = torch.randn(rows, C)
    y = _contexts(rows, context_size)
    with torch.inference_mode():
        step = TransducerStep(model)
        out = step.logits(step.project_encoder(x), step.decoder_out_for(y))
    torch.testing.assert_close(out, _reference_logits(model, x, y), rtol=1e-5, atol=2e-6)


def test_decoder_out_takes_position_major_table_rows():
    model = Model(2)
    y = _contexts(9, 2)
    with torch.inference_mode():
        step = TransducerStep(model)
        cols = step.table_rows(y).t().contiguous()  # (K, M)
        assert torch.equal(step.decoder_out(cols), step.decoder_out_for(y))
        assert int(step.table_rows(torch.tensor([-1]))) == V  # the zero row


def test_projections_are_exactly_doubled():
    torch.manual_seed(0)
    layer = nn.Linear(12, 10)
    x = torch.randn(5, 12, dtype=torch.float64)
    layer.double()
    with torch.no_grad():
        assert torch.equal(doubled(layer)(x), 2.0 * layer(x))


@pytest.mark.parametrize("bias", [True, False])
def test_sigmoid_form_computes_the_layer_of_tanh(bias):
    torch.manual_seed(0)
    layer = nn.Linear(12, 10, bias=bias).double()
    h = 3.0 * torch.randn(50, 12, dtype=torch.float64)
    with torch.no_grad():
        got = sigmoid_form(layer)(torch.sigmoid(2.0 * h))
        torch.testing.assert_close(got, layer(torch.tanh(h)), rtol=1e-12, atol=1e-12)


def test_a_step_built_after_a_weight_change_sees_the_new_weights():
    model = Model(2)
    x = torch.randn(8, C)
    y = _contexts(8, 2)
    with torch.inference_mode():
        step = TransducerStep(model)
        before = step.logits(step.project_encoder(x), step.decoder_out_for(y))
    model.load_state_dict(Model(2, seed=7).state_dict())
    with torch.no_grad():
        model.joiner.output_linear.bias.add_(0.5)  # in place too
    with torch.inference_mode():
        step = TransducerStep(model)
        after = step.logits(step.project_encoder(x), step.decoder_out_for(y))
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, _reference_logits(model, x, y), rtol=1e-5, atol=2e-6)


def test_derived_layers_are_built_once_per_weight_state():
    model = Model(2)
    with torch.inference_mode():
        TransducerStep(model)
        first = sigmoid_form(model.joiner.output_linear)
        TransducerStep(model)
        assert sigmoid_form(model.joiner.output_linear) is first
    with torch.no_grad():
        model.joiner.output_linear.weight.mul_(0.5)
    assert sigmoid_form(model.joiner.output_linear) is not first


def test_float64_models_decode_in_float64():
    model = Model(2).double()
    x = torch.randn(4, C, dtype=torch.float64)
    y = _contexts(4, 2)
    with torch.inference_mode():
        step = TransducerStep(model)
        out = step.logits(step.project_encoder(x), step.decoder_out_for(y))
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, _reference_logits(model, x, y), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("context_size", [1, 2, 3])
def test_advancing_partial_sums_equals_decoding_the_context(context_size):
    model = Model(context_size)
    K, M = context_size, 5
    g = torch.Generator().manual_seed(3)
    with torch.inference_mode():
        step = TransducerStep(model)
        history = torch.tensor([step.initial_context()] * M)  # (M, K)
        sums = step.partial_sums(history)
        assert torch.equal(step.decoder_out_from_sums(sums), step.decoder_out_for(history))
        for _ in range(4):
            tok = torch.randint(1, V, (M,), generator=g)
            sums = step.advance(sums, tok)
            history = torch.cat([history, tok[:, None]], dim=1)
            context = history[:, -K:]
            assert torch.equal(step.decoder_out_from_sums(sums), step.decoder_out_for(context))
            assert torch.equal(sums, step.partial_sums(context))
