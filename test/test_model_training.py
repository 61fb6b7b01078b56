"""Training-mode forward/backward: finite gradients where they belong, none elsewhere."""

from __future__ import annotations

import torch
from conftest import tiny_params

from icefall.zipformer import (
    adapter_parameter_names,
    freeze_all_but_adapters,
    get_model,
    iter_adapters,
    set_adapter_training,
)
from icefall.zipformer.scaling import set_batch_count


def _batch():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 120, 80, generator=g)
    return x, torch.tensor([120, 100, 80]), [[1, 2, 3, 4], [5, 6], [7, 8, 9, 10, 11]]


def _unused(model) -> set[str]:
    # Each layer's own bypass_scale is in icefall's checkpoints but unused by its forward.
    return {n for n, _ in model.named_parameters() if n.endswith("layers.0.bypass_scale")
            or n.endswith("layers.1.bypass_scale")}


def test_full_training_gives_finite_gradients_for_every_parameter():
    torch.manual_seed(0)
    model = get_model(tiny_params(use_ctc=True)).train()
    set_batch_count(model, 60000.0)  # past every warm-up: no module is skipped
    simple, pruned, ctc = model(*_batch(), prune_range=3)
    assert all(torch.isfinite(v) and v > 0 for v in (simple, pruned, ctc))
    (0.5 * simple + pruned + 0.2 * ctc).backward()
    unused = _unused(model)
    assert len(unused) == 7
    for name, p in model.named_parameters():
        if name in unused:
            assert p.grad is None, name
        else:
            assert p.grad is not None, name
            assert torch.isfinite(p.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for n, p in model.named_parameters()
               if n.startswith("encoder_embed."))


def test_adapter_mode_sends_gradients_to_adapters_only():
    torch.manual_seed(0)
    model = get_model(tiny_params(use_adapters=True))
    freeze_all_but_adapters(model)
    set_adapter_training(model)
    simple, pruned, _ = model(*_batch(), prune_range=3)
    (0.5 * simple + pruned).backward()
    adapter_names = set(adapter_parameter_names(model))
    for name, p in model.named_parameters():
        if name in adapter_names:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        else:
            assert p.grad is None, name
    # Fresh adapters: out_proj is zero, so only out_proj receives a non-zero gradient.
    for _, adapter in iter_adapters(model):
        assert adapter.out_proj.weight.grad.abs().sum() > 0
        assert adapter.in_proj.weight.grad.abs().sum() == 0


def test_training_mode_is_random_but_eval_is_deterministic():
    torch.manual_seed(0)
    model = get_model(tiny_params())
    x, x_lens, _ = _batch()
    set_batch_count(model, 0.0)  # early training: high skip rates
    model.train()
    with torch.no_grad():
        a, _ = model.forward_encoder(x, x_lens)
        b, _ = model.forward_encoder(x, x_lens)
    assert not torch.equal(a, b)
    model.eval()
    with torch.no_grad():
        c, _ = model.forward_encoder(x, x_lens)
        d, _ = model.forward_encoder(x, x_lens)
    assert torch.equal(c, d)


def test_channels_last_convnext_equals_the_reference_layout_in_training():
    """ConvNeXt's CPU training path ((N, T, F, C) memory, pointwise convs as matrix
    products) gives the reference (N, C, T, F) path's output and gradients, balancers,
    whitening and layer drop included (same random draws)."""
    import random

    from icefall.zipformer.scaling import Balancer, Whiten
    from icefall.zipformer.subsampling import ConvNeXt

    torch.manual_seed(0)
    block = ConvNeXt(16, layerdrop_rate=0.3).train()
    for m in block.modules():  # every regulariser active on every call
        if isinstance(m, (Balancer, Whiten)):
            if isinstance(m.prob, torch.nn.Module):
                del m.prob  # a ScheduledFloat submodule
            m.prob = 1.0
    x0 = torch.randn(3, 16, 21, 9) * 2.0 + 0.5
    g = torch.randn(3, 16, 21, 9)
    results = []
    for path in ("reference", "channels_last"):
        random.seed(1)
        torch.manual_seed(1)
        x = x0.clone().requires_grad_(True)
        y = block._residual(x, block.depthwise_conv(x)) if path == "reference" else block(x)
        y.backward(g)
        grads = {n: p.grad.clone() for n, p in block.named_parameters()}
        block.zero_grad()
        results.append((y.detach(), x.grad, grads))
    (y_ref, gx_ref, gp_ref), (y_cl, gx_cl, gp_cl) = results
    assert y_cl.is_contiguous(memory_format=torch.channels_last)  # the fast path ran
    assert torch.allclose(y_cl, y_ref, atol=1e-5)
    assert torch.allclose(gx_cl, gx_ref, atol=1e-5)
    for name, grad in gp_ref.items():
        assert torch.allclose(gp_cl[name], grad, rtol=1e-4, atol=1e-5), name
    block.eval()  # inference keeps the reference layout
    assert block(x0).is_contiguous()
