"""TransducerStep computes what the model's decoder and joiner compute as modules: its
logits equal ``model.joiner(encoder_proj(x), decoder_proj(decoder(y)), project_input=False)``
(up to the float rounding of the decoder tables), with and without adapters in the decoder
and joiner, and agree with the padded training path of the decoder and the joiner's own
projections.

Dimension legend: M = rows, K = context size, C = encoder dim, V = vocab.
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_params

from icefall.decode.step import TransducerStep
from icefall.zipformer import get_model, iter_adapters, lora_unmerged


def _model(context_size: int = 2, **adapters) -> torch.nn.Module:
    torch.manual_seed(0)
    return get_model(tiny_params(context_size=context_size, **adapters)).eval()


def _inputs(model, M: int = 9, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, C) encoder frames and (M, K) label contexts, some starting with -1."""
    g = torch.Generator().manual_seed(seed)
    C, K = model.joiner.encoder_proj.weight.shape[1], model.decoder.context_size
    y = torch.randint(0, model.decoder.vocab_size, (M, K), generator=g)
    y[: M // 3, 0] = -1
    return torch.randn(M, C, generator=g), y


def _step_logits(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        step = TransducerStep(model)
        return step.logits(step.project_encoder(x), step.decoder_out(y))  # (M, V)


def _module_logits(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The oracle: the modules called one by one, as icefall's searches call them."""
    joiner = model.joiner
    with torch.no_grad():
        dec = joiner.decoder_proj(model.decoder(y, need_pad=False)[:, 0])  # (M, J)
        return joiner(joiner.encoder_proj(x), dec, project_input=False)  # (M, V)


@pytest.mark.parametrize("context_size", [1, 2, 3])
def test_logits_are_the_modules_and_match_the_training_path(context_size):
    model = _model(context_size)
    x, y = _inputs(model)
    got = _step_logits(model, x, y)
    torch.testing.assert_close(got, _module_logits(model, x, y), rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # training path: padded decoder, joiner projecting its inputs
        dec = model.decoder(y, need_pad=True)[:, -1]  # (M, D)
        torch.testing.assert_close(got, model.joiner(x, dec), rtol=1e-5, atol=1e-5)
    step = TransducerStep(model)
    assert step.initial_context() == [-1] * (context_size - 1) + [step.blank_id]


@pytest.mark.parametrize("kind", ["residual", "lora"])
def test_decoder_and_joiner_adapters_act_in_the_step(kind):
    base = _model()
    model = _model(use_adapters=True, adapter_kind=kind, adapter_dim=4,
                   adapter_targets="decoder,joiner")
    model.load_state_dict(base.state_dict(), strict=False)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad(), lora_unmerged(model):
        for _, adapter in iter_adapters(model):
            for _, p in adapter.adapter_parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    model.eval()
    x, y = _inputs(model)
    got = _step_logits(model, x, y)
    torch.testing.assert_close(got, _module_logits(model, x, y), rtol=1e-5, atol=1e-6)
    assert (got - _step_logits(base, x, y)).abs().max() > 1e-2  # the adapters act


def test_decoder_out_checks_the_context_shape():
    step = TransducerStep(_model(2))
    with pytest.raises(ValueError, match=r"shape \(M, 2\)"):
        step.decoder_out(torch.zeros(4, 3, dtype=torch.int64))
