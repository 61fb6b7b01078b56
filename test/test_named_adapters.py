"""Several named adapters in one model: switching between them computes each one's model,
and switching them off gives the base model bit for bit, LoRA merged or not."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_params

from icefall.zipformer import (
    AdapterConfig,
    NamedAdapter,
    active_adapter,
    adapter_state_dict,
    add_named_adapter,
    get_model,
    install_adapter,
    iter_adapters,
    lora_unmerged,
    named_adapters,
    use_adapter,
)

CONFIGS = {
    "podcasts": AdapterConfig("podcasts", "residual", 4, ("encoder",)),
    "meetings": AdapterConfig("meetings", "lora", 2, ("encoder", "joiner")),
    "calls": AdapterConfig("calls", "residual", 4, ("encoder",)),  # podcasts' structure
    "lectures": AdapterConfig("lectures", "residual", 3, ("decoder", "joiner")),
}


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 61, 80, generator=g), torch.tensor([61, 48])


def _trained(base: torch.nn.Module, config: AdapterConfig, seed: int) -> NamedAdapter:
    """The adapter of ``config`` with random ("trained") weights, on ``base``."""
    model = get_model(tiny_params())
    model.load_state_dict(base.state_dict())
    install_adapter(model, config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad(), lora_unmerged(model):
        for _, a in iter_adapters(model):
            for _, p in a.adapter_parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return NamedAdapter(config, adapter_state_dict(model), None, f"test:{config.name}")


def _outputs(model, x, x_lens) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        enc, _ = model.forward_encoder(x, x_lens)
        dec = model.decoder(torch.tensor([[3, 5], [-1, 0]]), need_pad=False)
        return enc, model.joiner(enc[:, :3, None], dec[:, None])


def _alone(base, adapter: NamedAdapter):
    """A model holding only ``adapter``: the oracle for switching to it."""
    model = get_model(tiny_params())
    model.load_state_dict(base.state_dict())
    add_named_adapter(model, adapter)
    use_adapter(model, adapter.name)
    return model.eval()


@pytest.fixture(scope="module")
def bank():
    torch.manual_seed(0)
    base = get_model(tiny_params())
    adapters = {n: _trained(base, c, i) for i, (n, c) in enumerate(CONFIGS.items())}
    return base, adapters


def test_switching_names_computes_each_adapters_model(bank):
    base, adapters = bank
    x, x_lens = _inputs()
    model = get_model(tiny_params())
    model.load_state_dict(base.state_dict())
    for adapter in adapters.values():
        add_named_adapter(model, adapter)
    model.eval()
    assert list(named_adapters(model)) == list(CONFIGS) and active_adapter(model) is None
    expected = {n: _outputs(_alone(base, a), x, x_lens) for n, a in adapters.items()}
    reference = _outputs(base.eval(), x, x_lens)
    for name in ["podcasts", "meetings", "calls", "podcasts", "lectures", None, "meetings",
                 None]:
        use_adapter(model, name)
        assert active_adapter(model) == name
        got = _outputs(model, x, x_lens)
        want = reference if name is None else expected[name]
        for g, w in zip(got, want):
            assert torch.equal(g, w), name  # off is the base bit for bit, LoRA too
    assert (expected["podcasts"][0] - expected["calls"][0]).abs().max() > 1e-3
    assert (expected["meetings"][1] - reference[1]).abs().max() > 1e-3


def test_switching_off_restores_every_base_weight_exactly(bank):
    base, adapters = bank
    model = get_model(tiny_params())
    model.load_state_dict(base.state_dict())
    add_named_adapter(model, adapters["meetings"])
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    for _ in range(3):
        use_adapter(model, "meetings")
        model.eval()  # merges LoRA into the weights
        assert any(not torch.equal(p, weights[n]) for n, p in model.named_parameters()
                   if n in weights)
        use_adapter(model, None)
        model.train()
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k]), k


def test_unknown_and_duplicate_names_are_clear_errors(bank):
    base, adapters = bank
    model = get_model(tiny_params())
    add_named_adapter(model, adapters["podcasts"])
    with pytest.raises(ValueError, match="no adapter named 'x' \\(adapters: 'podcasts'\\)"):
        use_adapter(model, "x")
    clash = NamedAdapter(CONFIGS["podcasts"], adapters["calls"].state, None, "other.pt")
    with pytest.raises(ValueError, match="two adapters are named 'podcasts'"):
        add_named_adapter(model, clash)
    wrong = NamedAdapter(CONFIGS["calls"], adapters["lectures"].state, None, "bad.pt")
    add_named_adapter(model, wrong)
    with pytest.raises(ValueError, match="adapter 'calls' \\(bad.pt\\): unexpected adapter"):
        use_adapter(model, "calls")
    assert active_adapter(model) is None
