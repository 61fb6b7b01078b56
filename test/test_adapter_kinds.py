"""The registry of adapter kinds: the README's user-defined kind (IA3) is one class and one
registration, and then works everywhere a built-in kind does."""

from __future__ import annotations

import re
import types

import pytest
import torch
from conftest import ROOT, tiny_params
from runs import ADAPTER

from icefall.cli.train import get_parser
from icefall.zipformer import (
    OutputAdapter,
    adapter_kind,
    adapter_kinds,
    adapter_parameter_names,
    adapter_state_dict,
    freeze_all_but_adapters,
    get_model,
    iter_adapters,
    load_adapter_state_dict,
    register_adapter_kind,
    set_adapter_training,
)


def readme_kind() -> types.ModuleType:
    """Runs the README's user-defined kind (the python block after "A kind of your own")."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("A kind of your own"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    module = types.ModuleType("my_kinds")
    exec(compile(code, "README.md", "exec"), module.__dict__)
    return module


def test_builtin_kinds_are_registered():
    assert {"residual", "lora"} <= set(adapter_kinds())
    assert adapter_kind("residual").kind == "residual"
    with pytest.raises(ValueError, match="unknown adapter kind 'x'.*residual"):
        adapter_kind("x")


def test_readme_kind_is_one_class_and_one_registration():
    module = readme_kind()
    assert adapter_kind("ia3") is module.IA3
    assert len([c for c in vars(module).values() if isinstance(c, type)
                and issubclass(c, OutputAdapter) and c is not OutputAdapter]) == 1
    args = get_parser(ADAPTER.train).parse_args(["--adapter-kind", "ia3"])
    assert args.adapter_kind == "ia3"  # a flag value as soon as it is registered


def test_readme_kind_trains_and_round_trips_like_a_builtin_one():
    readme_kind()
    base = get_model(tiny_params()).eval()
    model = get_model(tiny_params(use_adapters=True, adapter_kind="ia3",
                                  adapter_targets="encoder,joiner"))
    model.load_state_dict(base.state_dict(), strict=False)
    adapters = list(iter_adapters(model))
    assert len(adapters) == 4 * 7 + 2
    expected = 4 * sum(layer.embed_dim for layer in model.encoder.modules()
                       if hasattr(layer, "mid_adapter")) + 2 * 64
    assert sum(p.numel() for _, a in adapters for p in a.parameters()) == expected
    g = torch.Generator().manual_seed(1)
    x, x_lens = torch.randn(2, 61, 80, generator=g), torch.tensor([61, 50])
    with torch.no_grad():
        assert torch.equal(model.eval().forward_encoder(x, x_lens)[0],
                           base.forward_encoder(x, x_lens)[0])  # scales start at 1
    freeze_all_but_adapters(model)
    set_adapter_training(model)
    simple, pruned, _ = model(x, x_lens, [[1, 2], [3]], prune_range=3)
    (simple + pruned).backward()
    names = set(adapter_parameter_names(model))
    assert all((p.grad is not None) == (n in names) for n, p in model.named_parameters())
    with torch.no_grad():
        for _, a in adapters:
            a.scale.mul_(1.5)
    state = adapter_state_dict(model)
    other = get_model(tiny_params(use_adapters=True, adapter_kind="ia3",
                                  adapter_targets="encoder,joiner"))
    load_adapter_state_dict(other, state)
    assert all(torch.equal(v, adapter_state_dict(other)[k]) for k, v in state.items())


def test_registration_refuses_bad_names_classes_and_clashes():
    with pytest.raises(ValueError, match="lower-case identifiers"):
        register_adapter_kind("My Kind")
    with pytest.raises(ValueError, match="must derive from"):
        register_adapter_kind("plain")(torch.nn.Linear)

    class Other(OutputAdapter):
        def adapt(self, x):
            return x

    with pytest.raises(ValueError, match="already registered"):
        register_adapter_kind("residual")(Other)
    assert adapter_kind("residual").__name__ == "ResidualAdapter"
