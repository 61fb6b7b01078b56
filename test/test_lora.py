"""LoRA as icefall's zipformer_lora: layout, golden function, merging, freezing."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from conftest import tiny_params
from test_model_golden import max_valid_diff
from test_model_layout import read_layout

from icefall.utils import to_int_tuple
from icefall.zipformer import (
    LoRAActivationDropoutAndLinear,
    LoRALinear,
    adapter_parameter_names,
    adapter_state_dict,
    add_adapters,
    add_lora,
    count_parameters,
    freeze_all_but_adapters,
    get_model,
    load_adapter_state_dict,
    lora_modules,
    lora_parameters,
    lora_weight_aliases,
    merge_lora,
    merged_state_dict,
    set_adapter_training,
    unmerge_lora,
)
from icefall.zipformer.scaling import ActivationDropoutAndLinear, swoosh

TOL = 1e-4
R = 4


def _inputs(n: int = 2, t: int = 61) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, t, 80, generator=g), torch.tensor([t, t - 13])[:n]


def _encode(model, x, x_lens) -> torch.Tensor:
    with torch.no_grad():
        return model.forward_encoder(x, x_lens)[0]


def _randomise_lora(model, seed: int = 7) -> None:
    """Non-zero lora_A and lora_B (in whatever merge state: unmerged around the write)."""
    g = torch.Generator().manual_seed(seed)
    merged = [m for m in lora_modules(model) if m.unmerge()]
    with torch.no_grad():
        for m in lora_modules(model):
            m.lora_A.copy_(torch.randn(m.lora_A.shape, generator=g) * 0.2)
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.2)
    for m in merged:
        m.merge()


def _lora_names(model) -> set[str]:
    ids = {id(p) for p in lora_parameters(model)}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def _lora_model(**overrides):
    return get_model(tiny_params(use_lora=True, lora_r=R, **overrides))


# ---------------------------------------------------------------------------
# Layout and golden function
# ---------------------------------------------------------------------------


def test_default_lora_model_has_reference_layout(reference_dir):
    config, rows = read_layout(reference_dir / "layout-lora-default.tsv")
    model = get_model(dict(config, use_lora=True))
    sd = model.state_dict()
    assert list(sd) == [key for key, _, _ in rows]
    for key, shape, numel in rows:
        assert tuple(sd[key].shape) == shape and sd[key].numel() == numel, key
    assert sum(p.numel() for p in model.parameters()) == 66_809_043
    assert sum(p.numel() for p in lora_parameters(model)) == 1_260_032
    assert len(lora_modules(model)) == 16 * 9  # 3 attention + 6 feed-forward per layer
    # out_proj.l.weight/bias are out_proj.weight/bias, and nothing else is an alias.
    aliases = lora_weight_aliases(model)
    assert len(aliases) == 16 * 3 * 2
    for alias, key in aliases.items():
        assert sd[alias].data_ptr() == sd[key].data_ptr()
    _, base_rows = read_layout(reference_dir / "layout-default.tsv")
    assert set(sd) - set(aliases) - _lora_names(model) == {k for k, _, _ in base_rows}


@pytest.fixture(scope="module")
def golden_lora(reference_dir):
    return torch.load(reference_dir / "golden-lora-tiny.pt", weights_only=True)


def _golden_diff(model, g, key: str) -> float:
    enc, lens = model.eval().forward_encoder(g["x"], g["x_lens"])
    assert torch.equal(lens, g["encoder_out_lens"]) and enc.shape == g[key].shape
    return max_valid_diff(enc.detach(), g[key], lens)


def test_golden_lora_loads_strictly_and_computes_the_reference(golden_lora):
    g = golden_lora
    model = get_model(dict(g["config"], use_lora=True))
    model.load_state_dict(g["state_dict"], strict=True)
    with torch.no_grad():
        assert _golden_diff(model, g, "encoder_out") <= TOL
        # The comparison can tell LoRA from no LoRA.
        assert _golden_diff(model, g, "encoder_out_without_lora") > 10 * TOL
        # Loading again into the merged (eval-mode) model changes nothing.
        model.load_state_dict(g["state_dict"], strict=True)
        assert _golden_diff(model, g, "encoder_out") <= TOL


def test_golden_lora_with_lora_b_zeroed_is_the_base_model(golden_lora):
    g = golden_lora
    sd = {k: torch.zeros_like(v) if k.endswith(".lora_B") else v
          for k, v in g["state_dict"].items()}
    model = get_model(dict(g["config"], use_lora=True)).eval()  # loads into merged layers
    model.load_state_dict(sd, strict=True)
    with torch.no_grad():
        assert _golden_diff(model, g, "encoder_out_without_lora") <= TOL


def test_merged_state_dict_gives_the_base_model_the_lora_function(golden_lora):
    g = golden_lora
    model = get_model(dict(g["config"], use_lora=True))
    model.load_state_dict(g["state_dict"], strict=True)
    base = get_model(g["config"])
    base.load_state_dict(merged_state_dict(model), strict=True)
    assert not lora_modules(base)
    with torch.no_grad():
        assert _golden_diff(base, g, "encoder_out") <= TOL


# ---------------------------------------------------------------------------
# The layer against its formula
# ---------------------------------------------------------------------------


def _random_lora_linear(in_f: int = 12, out_f: int = 7, r: int = 3) -> LoRALinear:
    layer = LoRALinear(torch.nn.Linear(in_f, out_f), r)
    with torch.no_grad():
        layer.lora_B.normal_()
    return layer


def test_lora_linear_follows_its_formula_merged_and_unmerged():
    layer = _random_lora_linear()
    W, b = layer.weight.detach().clone(), layer.bias.detach().clone()
    A, B = layer.lora_A.detach(), layer.lora_B.detach()
    x = torch.randn(5, 2, 12, dtype=torch.float64).float()
    unmerged = x @ W.T + b + (x @ A.T @ B.T) * (4.0 / 3)
    merged = x @ (W + B @ A * (4.0 / 3)).T + b
    assert layer.training and not layer.merged
    y_train = layer(x)
    assert torch.allclose(y_train, unmerged, atol=1e-5)
    layer.eval()
    assert layer.merged and torch.allclose(layer.weight, W + B @ A * (4.0 / 3), atol=1e-6)
    y_eval = layer(x)
    assert torch.allclose(y_eval, merged, atol=1e-5)
    assert torch.allclose(y_eval, y_train, atol=1e-5)
    assert (y_eval - x @ W.T - b).abs().max() > 0.1  # the update is there


def test_fresh_lora_linear_is_initialised_as_icefall():
    torch.manual_seed(3)
    base = torch.nn.Linear(64, 10)
    layer = LoRALinear(base, 8)
    assert layer.weight is base.weight and layer.bias is base.bias
    assert not layer.weight.requires_grad and layer.bias.requires_grad
    assert layer.scaling == 4.0 / 8 and torch.equal(layer.lora_B, torch.zeros(10, 8))
    # Kaiming-uniform with a = sqrt(5): U(-1/sqrt(in), 1/sqrt(in)), variance 1 / (3 in).
    bound = 64 ** -0.5
    assert layer.lora_A.abs().max() <= bound and layer.lora_A.abs().max() > 0.9 * bound
    assert abs(float(layer.lora_A.detach().var()) - 1 / (3 * 64)) < 0.15 / (3 * 64)


def test_feed_forward_out_proj_wrapper_follows_its_formula():
    base = ActivationDropoutAndLinear(10, 6, activation="SwooshL", dropout_p=0.3,
                                      dropout_shared_dim=0, initial_scale=0.1).eval()
    wrapper = LoRAActivationDropoutAndLinear(base, 2).eval()
    assert wrapper.weight is base.weight and wrapper.l.weight is base.weight
    x = torch.randn(4, 3, 10)
    with torch.no_grad():
        assert torch.equal(wrapper(x), base(x))  # lora_B = 0
        wrapper.l.unmerge()
        wrapper.l.lora_B.normal_()
        h = swoosh(x, "SwooshL")
        expected = base(x) + (h @ wrapper.l.lora_A.T @ wrapper.l.lora_B.T) * 2.0
        assert torch.allclose(wrapper(x), expected, atol=1e-5)


# ---------------------------------------------------------------------------
# Merging, unmerging and the state dict
# ---------------------------------------------------------------------------


def test_merged_and_unmerged_models_compute_the_same_function():
    model = _lora_model()
    _randomise_lora(model)
    x, x_lens = _inputs()
    merged = _encode(model.eval(), x, x_lens)
    assert all(m.merged for m in lora_modules(model))
    set_adapter_training(model)  # LoRA in train mode (unmerged), the rest in eval mode
    assert all(m.training and not m.merged for m in lora_modules(model))
    unmerged = _encode(model, x, x_lens)
    assert (merged - unmerged).abs().max() < 1e-5
    base = _encode(get_model(tiny_params()).eval(), x, x_lens)
    assert (merged - base).abs().max() > 10 * TOL  # different weights, different function


def test_merge_then_unmerge_restores_the_weights():
    model = _lora_model()
    _randomise_lora(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert merge_lora(model) == len(lora_modules(model)) and merge_lora(model) == 0
    for m in lora_modules(model):
        name = next(n for n, p in model.named_parameters() if p is m.weight)
        delta = m.lora_B.detach() @ m.lora_A.detach() * m.scaling
        assert torch.allclose(m.weight, before[name] + delta, atol=1e-6)
    assert unmerge_lora(model) == len(lora_modules(model)) and unmerge_lora(model) == 0
    for n, p in model.named_parameters():
        assert torch.allclose(p, before[n], atol=1e-6), n


def test_state_dict_never_holds_merged_weights():
    model = _lora_model()
    _randomise_lora(model)
    x, x_lens = _inputs()
    train_sd = {k: v.clone() for k, v in model.state_dict().items()}
    expected = _encode(model.eval(), x, x_lens)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)  # written in eval mode, weights merged
    eval_sd = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    assert list(eval_sd) == list(train_sd)
    for k in train_sd:
        assert torch.allclose(eval_sd[k], train_sd[k], atol=1e-6), k
    m = lora_modules(model)[0]
    name = next(n for n, p in model.named_parameters() if p is m.weight)
    assert (model.state_dict()[name] - m.weight).abs().max() > 1e-3  # the param is merged
    fresh = _lora_model()
    fresh.load_state_dict(eval_sd, strict=True)
    assert (_encode(fresh.eval(), x, x_lens) - expected).abs().max() < 1e-5


def test_fresh_lora_model_is_exactly_the_base_model():
    base = get_model(tiny_params()).eval()
    model = _lora_model()
    missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
    # out_proj.l.weight/bias come from out_proj.weight/bias: only LoRA's own are missing.
    assert not unexpected and set(missing) == _lora_names(model)
    # Frozen alike: torch picks its matmul kernel by requires_grad (even under no_grad),
    # and LoRA freezes the weights it wraps, as icefall does.
    base.requires_grad_(False)
    freeze_all_but_adapters(model)
    x, x_lens = _inputs()
    expected = _encode(base, x, x_lens)
    assert torch.equal(_encode(model.eval(), x, x_lens), expected)
    set_adapter_training(model)
    assert torch.equal(_encode(model, x, x_lens), expected)


# ---------------------------------------------------------------------------
# Construction, freezing and adapter helpers
# ---------------------------------------------------------------------------


def _expected_lora_count(params: dict, r: int) -> int:
    """r * (in + out) summed over icefall's LoRA targets, from the configuration."""
    cfg = {k: to_int_tuple(params[k], k) for k in
           ("num_encoder_layers", "encoder_dim", "num_heads", "feedforward_dim",
            "query_head_dim", "pos_head_dim", "value_head_dim")}
    total = 0
    for i, layers in enumerate(cfg["num_encoder_layers"]):
        C, H, F = cfg["encoder_dim"][i], cfg["num_heads"][i], cfg["feedforward_dim"][i]
        Dq, Dp, Dv = cfg["query_head_dim"][0], cfg["pos_head_dim"][0], cfg["value_head_dim"][0]
        per_layer = (C + (2 * Dq + Dp) * H) + 2 * (C + H * Dv)
        per_layer += sum(2 * (C + f) for f in (3 * F // 4, F, 5 * F // 4))
        total += layers * r * per_layer
    return total


def test_get_model_builds_lora_only_when_asked():
    assert _expected_lora_count(tiny_params(), R) == \
        sum(p.numel() for p in lora_parameters(_lora_model()))
    base_keys = list(get_model(tiny_params()).state_dict())
    for off in (dict(use_lora=False, lora_r=R), dict(use_lora=True, lora_r=0)):
        assert list(get_model(tiny_params(**off)).state_dict()) == base_keys
    with pytest.raises(ValueError, match="lora-r"):
        get_model(tiny_params(use_lora=True, lora_r=-1))
    with pytest.raises(ValueError, match="lora-r"):
        add_lora(get_model(tiny_params()), 0)
    with pytest.raises(ValueError, match="one kind"):  # one adapter, one kind
        _lora_model(use_adapters=True)
    model = _lora_model()
    assert add_adapters(model, 8) == 4 * 7  # both kinds together, at the model level
    assert add_lora(model, R) == 0  # already there
    assert set(adapter_parameter_names(model)) > _lora_names(model)


def test_freezing_leaves_only_lora_trainable_and_gradients_reach_it():
    model = _lora_model()
    freeze_all_but_adapters(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == _lora_names(model)
    assert count_parameters(model).trainable == _expected_lora_count(tiny_params(), R)
    set_adapter_training(model)
    x, x_lens = _inputs()
    model.forward_encoder(x, x_lens)[0].square().sum().backward()
    for m in lora_modules(model):
        # lora_B = 0, so d/dA = 0 (A enters only through B); d/dB does not vanish.
        assert torch.equal(m.lora_A.grad, torch.zeros_like(m.lora_A))
        assert m.lora_B.grad.abs().max() > 0
    assert all(p.grad is None for n, p in model.named_parameters() if n not in trainable)


def test_adapter_state_dict_round_trip_into_a_merged_model():
    source = _lora_model()
    base_sd = copy.deepcopy(source.state_dict())
    _randomise_lora(source)
    x, x_lens = _inputs()
    expected = _encode(source.eval(), x, x_lens)
    state = adapter_state_dict(source)
    assert set(state) == _lora_names(source)
    target = _lora_model()
    target.load_state_dict(base_sd, strict=True)
    target.eval()  # merged, with lora_B = 0
    load_adapter_state_dict(target, state)
    assert all(m.merged for m in lora_modules(target))
    assert (_encode(target, x, x_lens) - expected).abs().max() < 1e-5


def test_lora_follows_the_model_dtype():
    model = get_model(tiny_params()).to(torch.float64)
    add_lora(model, R)
    _randomise_lora(model)
    assert all(p.dtype == torch.float64 for p in lora_parameters(model))
    x, x_lens = _inputs()
    x = x.double()
    merged = _encode(model.eval(), x, x_lens)
    unmerged = _encode(set_adapter_training(model), x, x_lens)
    assert merged.dtype == torch.float64 and (merged - unmerged).abs().max() < 1e-10


def test_merging_keeps_float32_under_autocast_and_runs_on_the_meta_device():
    layer = _random_lora_linear()
    exact = layer.lora_B.detach().double() @ layer.lora_A.detach().double() * layer.scaling
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as under --use-bf16
        delta = layer.delta_weight()
    assert delta.dtype == torch.float32 and (delta.double() - exact).abs().max() < 1e-6
    with torch.device("meta"):  # how decoding probes a checkpoint's layout
        model = _lora_model()
    model.eval()
    assert all(m.merged for m in lora_modules(model))
    assert list(model.state_dict()) == list(_lora_model().state_dict())


def test_running_average_updates_a_shared_weight_once_and_leaves_frozen_ones():
    """out_proj.l.weight is out_proj.weight: one update, avg * (1 - w) + cur * w. Frozen
    parameters (the base under LoRA) are constants: the average keeps them as they are."""
    from icefall.checkpoint import update_averaged_model

    model = _lora_model()
    _randomise_lora(model)
    model.requires_grad_(True)  # everything trains (the shared weight too)
    avg = copy.deepcopy(model).to(torch.float64)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    name = next(k for k in lora_weight_aliases(model).values())
    before = avg.state_dict()[name].clone()
    update_averaged_model(avg, model, batch_idx_train=4, average_period=1)
    expected = before * 0.75 + model.state_dict()[name].double() * 0.25
    assert torch.allclose(avg.state_dict()[name], expected, atol=1e-12)
    freeze_all_but_adapters(model)
    frozen = {k: v.clone() for k, v in avg.state_dict().items()}
    update_averaged_model(avg, model, batch_idx_train=8, average_period=1)
    lora = _lora_names(model)
    for k, v in avg.state_dict().items():
        assert torch.equal(v, frozen[k]) == (k not in lora), k
