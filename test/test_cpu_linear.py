"""Decoding-time linear layers: the oneDNN route equals the layer, and is taken only where
it may be (no grad, float32 CPU, at least MIN_ROWS rows, not while exporting)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from icefall.zipformer import cpu_linear
from icefall.zipformer.cpu_linear import (
    MIN_ROWS,
    decoding_linear,
    kernel_for,
    linear,
    use_onednn,
)
from icefall.zipformer.derived import cached_names


def _layer(bias: bool = True, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(48, 40, bias=bias)


def test_the_onednn_operator_is_there_on_x86_builds():
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this PyTorch build has no oneDNN")
    assert cpu_linear._onednn_works()


def test_an_operator_that_disagrees_is_never_used(monkeypatch):
    class WrongReference:  # F.linear as the check sees it, off by one everywhere
        @staticmethod
        def linear(x, w, b):
            return torch.nn.functional.linear(x, w, b) + 1.0

    monkeypatch.setattr(cpu_linear, "_works", None)
    monkeypatch.setattr(cpu_linear, "F", WrongReference)
    layer = _layer()
    x = torch.randn(16, 48)
    with torch.inference_mode():
        assert kernel_for(x, layer) == "torch"
        assert torch.equal(linear(x, layer), layer(x))
    assert cpu_linear._works is False


@pytest.mark.parametrize("rows", [1, 2, MIN_ROWS, 16, 300])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_equals_the_layer_on_every_route(rows, bias):
    layer = _layer(bias)
    x = torch.randn(rows, 48)
    with torch.inference_mode():
        out = linear(x, layer)
        ref = torch.nn.functional.linear(x, layer.weight, layer.bias)
        route = kernel_for(x, layer)
    expected = "onednn" if rows >= MIN_ROWS and cpu_linear._onednn_works() else "torch"
    assert route == expected
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    if route == "torch":
        assert torch.equal(out, ref)


def test_leading_dimensions_and_non_contiguous_input():
    layer = _layer()
    x = torch.randn(7, 5, 48).transpose(0, 1)  # (5, 7, 48), not contiguous
    with torch.inference_mode():
        out = linear(x, layer)
    assert out.shape == (5, 7, 40)
    torch.testing.assert_close(out, layer(x).detach(), rtol=1e-5, atol=1e-5)


def test_training_small_inputs_other_dtypes_and_the_switch_take_the_layer():
    layer = _layer()
    x = torch.randn(16, 48)
    out = linear(x, layer)  # grad enabled: the layer, differentiable
    assert kernel_for(x, layer) == "torch" and out.requires_grad
    out.sum().backward()
    assert layer.weight.grad is not None
    with torch.no_grad():
        assert kernel_for(x[:MIN_ROWS - 1], layer) == "torch"
        assert kernel_for(x.double(), layer.double()) == "torch"
        layer.float()
        previous = use_onednn(False)
        try:
            assert kernel_for(x, layer) == "torch"
            assert torch.equal(linear(x, layer), layer(x))
        finally:
            use_onednn(previous)


def test_tracing_records_a_plain_linear():
    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = _layer()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return linear(x, self.layer)

    with torch.no_grad():
        traced = torch.jit.trace(Wrapper(), torch.randn(16, 48))
    graph = str(traced.inlined_graph)
    assert "aten::linear" in graph and "mkldnn" not in graph


def test_environment_variable_turns_the_route_off():
    code = ("import torch; from torch import nn; from icefall.zipformer.cpu_linear import "
            "kernel_for; torch.set_grad_enabled(False); "
            "print(kernel_for(torch.randn(16, 8), nn.Linear(8, 4)))")
    env = {**os.environ, "ICEFALL_ONEDNN_LINEAR": "0"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True)
    assert res.stdout.strip() == "torch"


def test_the_packed_weight_is_reused_until_the_weight_changes():
    layer = _layer()
    x = torch.randn(16, 48)
    with torch.inference_mode():
        if kernel_for(x, layer) != "onednn":
            pytest.skip("no oneDNN route on this build")
        first = cpu_linear.packed_weight(layer)
        assert cpu_linear.packed_weight(layer) is first
    with torch.no_grad():
        layer.weight.mul_(-2.0)  # in place: the version counter moves
    with torch.inference_mode():
        torch.testing.assert_close(linear(x, layer), layer(x), rtol=1e-5, atol=1e-5)
        assert cpu_linear.packed_weight(layer) is not first
    layer.load_state_dict(_layer(seed=3).state_dict())
    with torch.inference_mode():
        torch.testing.assert_close(linear(x, layer), layer(x), rtol=1e-5, atol=1e-5)
        layer.weight.add_(1.0)  # a normal tensor changed inside inference mode
        torch.testing.assert_close(linear(x, layer), layer(x), rtol=1e-5, atol=1e-5)


def test_layers_created_in_inference_mode_work_without_a_cache():
    with torch.inference_mode():
        layer = _layer()
        x = torch.randn(16, 48)
        torch.testing.assert_close(linear(x, layer), layer(x), rtol=1e-5, atol=1e-5)
    assert cached_names(layer) == []


@pytest.mark.parametrize("shape", [(1, 48), (2, 48), (16, 48), (3, 5, 48)])
def test_decoding_linear_equals_linear(shape):
    layer = _layer()
    x = torch.randn(*shape)
    with torch.inference_mode():
        fn = decoding_linear(layer)
        out, ref, route = fn(x), linear(x, layer), kernel_for(x, layer)
        if route == "torch":
            assert torch.equal(out, layer(x))
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_decoding_linear_decides_its_route_when_made():
    layer = _layer()
    x = torch.randn(16, 48)
    fn = decoding_linear(layer)  # grad on: the plain layer, whatever the later mode
    with torch.inference_mode():
        assert torch.equal(fn(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
        previous = use_onednn(False)
        try:
            off = decoding_linear(layer)
        finally:
            use_onednn(previous)
        assert torch.equal(off(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
