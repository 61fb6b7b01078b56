"""Tests for icefall.optim: ScaledAdam, Eden and get_parameter_groups_with_lrs."""

from __future__ import annotations

import copy
import io
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from icefall.optim import Eden, LRScheduler, ScaledAdam, get_parameter_groups_with_lrs

GOLDEN = "golden-scaled-adam-eden.pt"


class _TinyNet(nn.Module):
    """Two same-shape linears (batched together by ScaledAdam) and a scalar parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 6)
        self.b = nn.Linear(6, 6)
        self.out = nn.Linear(6, 3)
        self.gain = nn.Parameter(torch.tensor(0.7))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.b(torch.tanh(self.a(x))))) * self.gain


def _data(n_steps: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(5, 6, generator=g), torch.randn(5, 3, generator=g)) for _ in range(n_steps)
    ]


def _train(
    model: nn.Module,
    opt: ScaledAdam,
    sch: LRScheduler | None,
    data: list[tuple[torch.Tensor, torch.Tensor]],
    first_batch: int = 0,
) -> None:
    for i, (x, t) in enumerate(data):
        loss = nn.functional.mse_loss(model(x), t)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if sch is not None:
            sch.step_batch(first_batch + i + 1)


def _assert_same_params(m1: nn.Module, m2: nn.Module) -> None:
    for (n1, p1), (n2, p2) in zip(m1.named_parameters(), m2.named_parameters()):
        assert n1 == n2
        assert torch.equal(p1, p2), n1


# --------------------------------------------------------------------------- golden replay


def test_golden_trajectory_matches_reference(reference_dir: Path) -> None:
    """Follow the reference recipe; parameters within 1e-5 and lr within 1e-7 at every point."""
    golden = torch.load(reference_dir / GOLDEN, weights_only=True)
    recipe = golden["recipe"]
    print("recipe:", recipe)
    # The replay below encodes this recipe; fail loudly if the oracle ever changes it.
    for fragment in (
        "ScaledAdam([{named_params: list(model.named_parameters()), lr: 0.045}], lr=0.045, "
        "clipping_scale=2.0)",
        "Eden(lr_batches=5, lr_epochs=2, warmup_batches=3)",
        "if step%10==0: step_epoch(step//10+1)",
        "opt.step(); sch.step_batch(step+1)",
    ):
        assert fragment in recipe

    model = nn.Sequential(nn.Linear(20, 30), nn.Tanh(), nn.Linear(30, 5))
    model.load_state_dict(golden["init"])
    opt = ScaledAdam(
        [{"named_params": list(model.named_parameters()), "lr": 0.045}],
        lr=0.045,
        clipping_scale=2.0,
    )
    sch = Eden(opt, lr_batches=5, lr_epochs=2, warmup_batches=3)
    expected = dict(golden["traj"])
    n_steps = len(golden["lrs"])
    assert n_steps == golden["xs"].shape[0] == 40

    max_dev = 0.0
    for step in range(n_steps):
        if step % 10 == 0:
            sch.step_epoch(step // 10 + 1)
        loss = nn.functional.mse_loss(model(golden["xs"][step]), golden["ts"][step])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sch.step_batch(step + 1)
        assert sch.get_last_lr()[0] == pytest.approx(golden["lrs"][step], abs=1e-7)
        assert opt.param_groups[0]["lr"] == pytest.approx(golden["lrs"][step], abs=1e-7)
        if step in expected:
            for name, value in model.state_dict().items():
                dev = (value - expected[step][name]).abs().max().item()
                max_dev = max(max_dev, dev)
                assert dev < 1e-5, (step, name, dev)
    assert sorted(expected) == [0, 1, 4, 9, 19, 39]
    print(f"max deviation from golden trajectory: {max_dev:.3e}")


# --------------------------------------------------------------------------- closed forms


def test_first_step_matches_closed_form() -> None:
    """Step 1: tensors move by lr*(1-beta1)*rms(p)*sign(g), scalars by lr*0.1*(1-beta1)."""
    model = _TinyNet()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    lr = 0.05
    opt = ScaledAdam(model.parameters(), lr=lr, clipping_scale=2.0)
    x, t = _data(1)[0]
    nn.functional.mse_loss(model(x), t).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt.step()
    for name, p in model.named_parameters():
        p0, g = before[name], grads[name]
        # exp_avg_sq after one step is (1-beta2) g^2 and the bias correction divides it out.
        if p0.numel() == 1:
            step_size = lr * 0.1 * (1 - 0.9)
        else:
            step_size = lr * (1 - 0.9) * p0.pow(2).mean().sqrt()
        expected = p0 - step_size * g / (g.abs() + 1e-8)
        torch.testing.assert_close(p.detach(), expected, atol=1e-6, rtol=1e-5, msg=name)


def test_scalar_parameters_are_clamped_to_scalar_max() -> None:
    """A scalar beyond scalar_max is clamped before its (here zero) update is applied."""
    w = nn.Parameter(torch.tensor(50.0))
    v = nn.Parameter(torch.tensor(-0.5))
    opt = ScaledAdam([w, v], lr=0.03, scalar_max=10.0)
    w.grad = torch.tensor(0.0)
    v.grad = torch.tensor(0.0)
    opt.step()
    assert w.item() == pytest.approx(10.0)
    assert v.item() == pytest.approx(-0.5)


# --------------------------------------------------------------------------- state dicts


def test_state_dict_round_trip_continues_identically() -> None:
    model = _TinyNet()
    opt = ScaledAdam(
        [{"named_params": list(model.named_parameters())}],
        lr=0.04,
        clipping_scale=2.0,
        clipping_update_period=4,
    )
    sch = Eden(opt, lr_batches=10, lr_epochs=2, warmup_batches=5)
    sch.step_epoch(1)
    data = _data(16)
    k = 9  # past two size updates and two clipping-threshold updates
    _train(model, opt, sch, data[:k])
    # Clipping statistics live in the state of the first batch in (dtype, *shape) order:
    # the 0-dim scalar `gain`.
    assert "model_norm_threshold" in opt.state[model.gain]

    buf = io.BytesIO()
    torch.save({"optimizer": opt.state_dict(), "scheduler": sch.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)

    model2 = copy.deepcopy(model)
    opt2 = ScaledAdam(
        [{"named_params": list(model2.named_parameters())}],
        lr=0.04,
        clipping_scale=2.0,
        clipping_update_period=4,
    )
    sch2 = Eden(opt2, lr_batches=10, lr_epochs=2, warmup_batches=5)
    opt2.load_state_dict(saved["optimizer"])
    sch2.load_state_dict(saved["scheduler"])
    assert sch2.state_dict() == sch.state_dict()
    assert sch2.get_last_lr() == sch.get_last_lr()
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert opt2.parameters_names == opt.parameters_names  # names survive loading
    assert opt2.parameters_names[0][0] == "gain"

    _train(model, opt, sch, data[k:], first_batch=k)
    _train(model2, opt2, sch2, data[k:], first_batch=k)
    _assert_same_params(model, model2)
    assert sch2.get_last_lr() == sch.get_last_lr()


# --------------------------------------------------------------------------- clipping


def _weighted_grad_norm(opt: ScaledAdam, model: nn.Module) -> float:
    """Norm that ScaledAdam clips: grad * param_rms, scalars weighted by scalar_lr_scale."""
    sumsq = 0.0
    for p in model.parameters():
        if p.numel() == 1:
            sumsq += (p.grad.item() * 0.1) ** 2
        else:
            rms = opt.state[p]["param_rms"].reshape(())
            sumsq += ((p.grad * rms) ** 2).sum().item()
    return math.sqrt(sumsq)


def _distance(model: nn.Module, before: list[torch.Tensor]) -> float:
    return math.sqrt(sum(((p - b) ** 2).sum().item() for p, b in zip(model.parameters(), before)))


def test_huge_gradient_is_clipped_to_threshold() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 7), nn.Tanh(), nn.Linear(7, 3))
    opt = ScaledAdam(model.parameters(), lr=0.04, clipping_scale=2.0, clipping_update_period=4)
    data = _data(7, seed=5)
    _train(model, opt, None, data[:5])  # the threshold is set at step 4
    before_normal = [p.detach().clone() for p in model.parameters()]
    _train(model, opt, None, data[5:6])
    normal_change = _distance(model, before_normal)
    state0 = opt.state[model[2].bias]  # first batch in (dtype, *shape) order: shape (3,)
    threshold = state0["model_norm_threshold"]
    assert threshold > 0 and state0["num_clipped"] == 0

    x, t = data[6]
    opt.zero_grad()
    nn.functional.mse_loss(model(x), t).backward()
    for p in model.parameters():
        p.grad *= 1.0e6
    huge_norm = _weighted_grad_norm(opt, model)
    assert threshold / huge_norm < 1e-4

    # Twin A clips; twin B gets the gradient pre-scaled to the threshold, no clipping;
    # twin C gets the huge gradient with clipping switched off.
    huge = [p.grad.clone() for p in model.parameters()]
    twin_b, twin_c = copy.deepcopy((model, opt)), copy.deepcopy((model, opt))
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()
    assert state0["num_clipped"] == 1

    model_b, opt_b = twin_b
    opt_b.param_groups[0]["clipping_scale"] = None
    for p, g in zip(model_b.parameters(), huge):
        p.grad = g * (threshold / huge_norm)
    opt_b.step()
    for p, pb in zip(model.parameters(), model_b.parameters()):
        torch.testing.assert_close(p, pb, atol=1e-7, rtol=1e-6)

    model_c, opt_c = twin_c
    opt_c.param_groups[0]["clipping_scale"] = None
    for p, g in zip(model_c.parameters(), huge):
        p.grad = g.clone()
    opt_c.step()
    change, change_c = _distance(model, before), _distance(model_c, before)
    print(f"update norms: normal {normal_change:.3e} clipped {change:.3e} unclipped {change_c:.3e}")
    assert change < 1.5 * normal_change
    # The second-moment statistics stay sane only with clipping.
    assert opt.state[model[0].weight]["exp_avg_sq"].max() < 1.0
    assert opt_c.state[model_c[0].weight]["exp_avg_sq"].max() > 1.0e6


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_non_finite_gradient_is_zeroed_after_threshold(bad: float) -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
    opt = ScaledAdam(model.parameters(), lr=0.04, clipping_scale=2.0, clipping_update_period=3)
    g = torch.Generator().manual_seed(2)
    data = [(torch.randn(5, 4, generator=g), torch.randn(5, 2, generator=g)) for _ in range(4)]
    # Steps 0..3: the threshold is set at step 3; step 4 (below) has no size update.
    _train(model, opt, None, data)
    before = [p.detach().clone() for p in model.parameters()]
    # Every parameter has its own shape here, so each holds a batch of one.
    deltas = [opt.state[p]["delta"][0].clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.full_like(p, bad)
    opt.step()
    for p, b, d in zip(model.parameters(), before, deltas):
        assert torch.isfinite(p).all()
        # Zero gradient: only the decayed momentum moves the parameter.
        torch.testing.assert_close(p.detach(), b + 0.9 * d, atol=1e-6, rtol=1e-5)


# --------------------------------------------------------------------------- Eden


def _eden_by_hand(base, batch, epoch, lr_batches, lr_epochs, warmup_batches, warmup_start):
    b = (1.0 + (batch / lr_batches) ** 2) ** -0.25
    e = (1.0 + (epoch / lr_epochs) ** 2) ** -0.25
    if batch < warmup_batches:
        w = warmup_start + (1.0 - warmup_start) * batch / warmup_batches
    else:
        w = 1.0
    return base * b * e * w


@pytest.mark.parametrize(
    ("batch", "epoch"),
    [(0, 0), (1, 1), (25, 1), (49, 2), (50, 2), (100, 3), (7500, 4), (100000, 30)],
)
def test_eden_formula_table(batch: int, epoch: int) -> None:
    model = _TinyNet()
    groups = [
        {"params": [model.a.weight, model.a.bias], "lr": 0.01},
        {"params": [p for n, p in model.named_parameters() if not n.startswith("a.")]},
    ]
    opt = ScaledAdam(groups, lr=0.045)
    sch = Eden(opt, lr_batches=100, lr_epochs=3.5, warmup_batches=50, warmup_start=0.3)
    sch.step_epoch(epoch)
    sch.step_batch(batch)
    cfg = dict(lr_batches=100, lr_epochs=3.5, warmup_batches=50, warmup_start=0.3)
    expected = [_eden_by_hand(base, batch, epoch, **cfg) for base in (0.01, 0.045)]
    assert sch.get_last_lr() == pytest.approx(expected, rel=1e-12)
    assert [g["lr"] for g in opt.param_groups] == sch.get_last_lr()
    assert [g["base_lr"] for g in opt.param_groups] == [0.01, 0.045]


def test_eden_known_value_and_counters() -> None:
    opt = ScaledAdam([nn.Parameter(torch.ones(3))], lr=0.045)
    sch = Eden(opt, lr_batches=5, lr_epochs=2, warmup_batches=3)
    assert sch.get_last_lr() == [0.045]  # untouched until the first step
    sch.step_epoch(1)
    sch.step_batch(1)
    # 0.045 * 1.04**-0.25 * 1.25**-0.25 * (0.5 + 0.5/3)
    assert sch.get_last_lr()[0] == pytest.approx(0.028095412746146412, abs=1e-12)
    sch.step_batch()
    sch.step_epoch()
    assert (sch.batch, sch.epoch) == (2, 2)
    assert sch.state_dict() == {"base_lrs": [0.045], "epoch": 2, "batch": 2}


def test_invalid_arguments_raise_value_error() -> None:
    p = nn.Parameter(torch.ones(3))
    with pytest.raises(ValueError):
        ScaledAdam([], lr=0.03)
    with pytest.raises(ValueError):
        ScaledAdam([p], lr=-1.0)
    with pytest.raises(ValueError):
        ScaledAdam([p], betas=(0.9, 1.0))
    with pytest.raises(ValueError):
        ScaledAdam([p], clipping_scale=0.0)
    with pytest.raises(ValueError):
        ScaledAdam([p], size_update_period=0)
    with pytest.raises(ValueError):
        ScaledAdam([p, ("q", nn.Parameter(torch.ones(2)))])
    with pytest.raises(ValueError):
        ScaledAdam([{"named_params": [p]}])
    opt = ScaledAdam([p])
    with pytest.raises(ValueError):
        Eden(opt, lr_batches=10, lr_epochs=2, warmup_start=1.5)
    with pytest.raises(ValueError):
        Eden(opt, lr_batches=0, lr_epochs=2)
    with pytest.raises(ValueError):
        Eden(opt, lr_batches=10, lr_epochs=2).load_state_dict({"epoch": 1})


# --------------------------------------------------------------------------- group forms


def test_parameter_group_forms_give_identical_updates() -> None:
    reference = _TinyNet()
    data = _data(10, seed=7)
    kwargs = dict(lr=0.04, clipping_scale=2.0, clipping_update_period=3)
    models = [copy.deepcopy(reference) for _ in range(4)]
    named_group = {"named_params": list(models[2].named_parameters())}
    optimizers = [
        ScaledAdam(models[0].parameters(), **kwargs),
        ScaledAdam([{"params": list(models[1].parameters())}], **kwargs),
        ScaledAdam([named_group], **kwargs),
        ScaledAdam(models[3].named_parameters(), **kwargs),
    ]
    assert "named_params" in named_group  # the caller's dict is left alone
    assert optimizers[2].parameters_names[0] == [n for n, _ in models[2].named_parameters()]
    assert optimizers[0].parameters_names[0][0] == "foo"
    assert not optimizers[0].show_dominant_parameters
    assert optimizers[2].show_dominant_parameters and optimizers[3].show_dominant_parameters
    for model, opt in zip(models, optimizers):
        _train(model, opt, None, data)
    assert not torch.equal(models[0].a.weight, reference.a.weight)
    for model in models[1:]:
        _assert_same_params(models[0], model)


# --------------------------------------------------------------------------- lr_scale groups


class _Nested(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
        self.decoder = nn.Linear(3, 2)
        self.joiner = nn.Linear(2, 2)


def test_get_parameter_groups_with_lrs_respects_lr_scale() -> None:
    model = _Nested()
    model.encoder.lr_scale = 0.5
    model.encoder[1].lr_scale = 0.5
    groups = get_parameter_groups_with_lrs(model, lr=0.04)
    by_lr = {g["lr"]: g["params"] for g in groups}
    assert set(by_lr) == {0.02, 0.01, 0.04}
    assert [id(p) for p in by_lr[0.02]] == [id(p) for p in model.encoder[0].parameters()]
    assert [id(p) for p in by_lr[0.01]] == [id(p) for p in model.encoder[1].parameters()]
    expected_plain = [*model.decoder.parameters(), *model.joiner.parameters()]
    assert [id(p) for p in by_lr[0.04]] == [id(p) for p in expected_plain]

    model.lr_scale = 2.0  # the root module scales everything
    named = get_parameter_groups_with_lrs(model, lr=0.04, include_names=True)
    by_lr_named = {g["lr"]: [n for n, _ in g["named_params"]] for g in named}
    assert by_lr_named == {
        0.04: ["encoder.0.weight", "encoder.0.bias"],
        0.02: ["encoder.1.weight", "encoder.1.bias"],
        0.08: ["decoder.weight", "decoder.bias", "joiner.weight", "joiner.bias"],
    }
    frozen = get_parameter_groups_with_lrs(model, lr=0.04, freeze_modules=["encoder"])
    assert [g["lr"] for g in frozen] == [0.08]

    opt = ScaledAdam(named, lr=0.04)
    sch = Eden(opt, lr_batches=10, lr_epochs=2)
    assert [g["base_lr"] for g in opt.param_groups] == [0.04, 0.02, 0.08]
    assert opt.parameters_names[1] == ["encoder.1.weight", "encoder.1.bias"]
    sch.step_batch(10**6)
    lrs = sch.get_last_lr()
    assert lrs[0] / lrs[2] == pytest.approx(0.5) and lrs[1] / lrs[2] == pytest.approx(0.25)


def test_clipping_decided_on_the_device_matches_the_host_reference() -> None:
    """host_clipping_checks=False (no device read per step) updates exactly as the
    reference's host path, through normal, clipped and NaN-gradient steps."""
    torch.manual_seed(7)
    base = nn.Sequential(nn.Linear(6, 7), nn.Tanh(), nn.Linear(7, 3))
    models = [copy.deepcopy(base), copy.deepcopy(base)]
    opts = [ScaledAdam(m.parameters(), lr=0.04, clipping_scale=2.0, clipping_update_period=4,
                       host_clipping_checks=host) for m, host in zip(models, (True, False))]
    for step, (x, t) in enumerate(_data(24, seed=11)):
        for model, opt in zip(models, opts):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), t).backward()
            if step in (9, 15):
                for p in model.parameters():
                    p.grad *= 1.0e5  # clipped
            if step == 12:
                model[0].weight.grad[0, 0] = float("nan")  # dropped (factor 0)
            opt.step()
        for p, q in zip(*(m.parameters() for m in models)):
            assert torch.equal(p, q), step
    host_state, device_state = (o.state[models[i][2].bias] for i, o in enumerate(opts))
    assert device_state["model_norm_threshold"] == host_state["model_norm_threshold"]
