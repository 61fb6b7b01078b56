"""Adapters: inserted as identities, switchable at run time, found and frozen by type."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_params

from icefall.zipformer import (
    ResidualAdapter,
    adapter_parameter_names,
    adapter_state_dict,
    adapters_disabled,
    add_adapters,
    count_parameters,
    freeze_all_but_adapters,
    get_model,
    iter_adapters,
    load_adapter_state_dict,
    remove_adapters,
    set_adapter_training,
    set_adapters_enabled,
)
from icefall.zipformer.layer import ADAPTER_SLOTS, Zipformer2EncoderLayer


def _inputs(n: int = 2, t: int = 61) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, t, 80, generator=g), torch.tensor([t, t - 13])[:n]


def _encode(model, x, x_lens) -> torch.Tensor:
    with torch.no_grad():
        return model.forward_encoder(x, x_lens)[0]


def _randomise_adapters(model) -> None:
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for _, a in iter_adapters(model):
            for p in a.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


@pytest.fixture()
def base_and_adapted():
    torch.manual_seed(0)
    base = get_model(tiny_params()).eval()
    adapted = get_model(tiny_params(use_adapters=True)).eval()
    missing, unexpected = adapted.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected
    assert set(missing) == set(adapter_parameter_names(adapted))
    return base, adapted


def test_every_layer_gets_four_adapters_in_the_reference_slots():
    model = get_model(tiny_params(use_adapters=True))
    layers = [m for m in model.modules() if isinstance(m, Zipformer2EncoderLayer)]
    assert len(layers) == 7  # 1+1+1+2+1+1
    for layer in layers:
        assert all(isinstance(getattr(layer, s), ResidualAdapter) for s in ADAPTER_SLOTS)
    assert len(list(iter_adapters(model))) == 4 * 7
    assert add_adapters(model, 8) == 0  # slots already filled


def test_removing_trained_adapters_gives_back_the_base_model(base_and_adapted):
    base, adapted = base_and_adapted
    _randomise_adapters(adapted)
    x, x_lens = _inputs()
    assert not torch.equal(_encode(base, x, x_lens), _encode(adapted, x, x_lens))
    assert remove_adapters(adapted) == 4 * 7
    assert list(adapted.state_dict()) == list(base.state_dict())
    assert torch.equal(_encode(base, x, x_lens), _encode(adapted, x, x_lens))
    assert remove_adapters(adapted) == 0


def test_fresh_adapters_change_no_output(base_and_adapted):
    base, adapted = base_and_adapted
    x, x_lens = _inputs()
    assert torch.equal(_encode(base, x, x_lens), _encode(adapted, x, x_lens))


def test_disabled_adapters_give_exactly_the_base_output(base_and_adapted):
    base, adapted = base_and_adapted
    _randomise_adapters(adapted)
    x, x_lens = _inputs()
    on = _encode(adapted, x, x_lens)
    set_adapters_enabled(adapted, False)
    off = _encode(adapted, x, x_lens)
    set_adapters_enabled(adapted, True)
    again = _encode(adapted, x, x_lens)
    ref = _encode(base, x, x_lens)
    assert torch.equal(off, ref)
    assert (on - ref).abs().max() > 1e-2  # trained adapters change the output
    assert torch.equal(again, on)
    with adapters_disabled(adapted):
        assert torch.equal(_encode(adapted, x, x_lens), ref)
    assert all(a.enabled for _, a in iter_adapters(adapted))


def test_adapter_is_x_plus_bottleneck_of_x():
    adapter = ResidualAdapter(embed_dim=6, bottleneck_dim=3)
    _randomise_adapters(torch.nn.ModuleList([adapter]))
    x = torch.randn(4, 6, dtype=torch.float64)
    adapter = adapter.double()
    h = adapter.in_proj(x)
    swoosh_l = torch.log1p(torch.exp(h - 4.0)) - 0.08 * h - 0.035
    expected = x + swoosh_l @ adapter.out_proj.weight.T + adapter.out_proj.bias
    assert torch.allclose(adapter(x), expected, atol=1e-12)


def test_freeze_marks_only_adapter_parameters_trainable():
    model = get_model(tiny_params(use_adapters=True))
    freeze_all_but_adapters(model)
    names = set(adapter_parameter_names(model))
    assert names and all(".in_proj." in n or ".out_proj." in n for n in names)
    for n, p in model.named_parameters():
        assert p.requires_grad == (n in names), n
    count = count_parameters(model)
    expected = sum(p.numel() for n, p in model.named_parameters() if n in names)
    assert count.trainable == expected
    assert count.total == sum(p.numel() for p in model.parameters())
    assert str(count).startswith(f"A total of {expected} trainable parameters (")


def test_parameter_count_message_matches_icefall_log(reference_dir):
    from test_model_layout import read_layout

    config, _ = read_layout(reference_dir / "layout-default-adapters16.tsv")
    model = get_model(config)
    freeze_all_but_adapters(model)
    assert str(count_parameters(model)) == (
        "A total of 761344 trainable parameters (1.148% of the whole model)")


def test_adapter_training_mode_keeps_base_in_eval():
    model = get_model(tiny_params(use_adapters=True))
    set_adapter_training(model)
    adapter_ids = {id(m) for _, a in iter_adapters(model) for m in a.modules()}
    for m in model.modules():
        assert m.training == (id(m) in adapter_ids)


def test_adapter_state_dict_round_trip():
    src = get_model(tiny_params(use_adapters=True))
    _randomise_adapters(src)
    state = adapter_state_dict(src)
    assert set(state) == set(adapter_parameter_names(src))
    dst = get_model(tiny_params(use_adapters=True))
    load_adapter_state_dict(dst, state)
    for k, v in adapter_state_dict(dst).items():
        assert torch.equal(v, state[k])
    bad = dict(state)
    key = next(iter(bad))
    bad[key] = bad[key][:1]
    with pytest.raises(ValueError, match="shape"):
        load_adapter_state_dict(dst, bad)
    with pytest.raises(ValueError, match="unexpected adapter key"):
        load_adapter_state_dict(dst, {**state, "encoder.nope.weight": torch.zeros(1)})
