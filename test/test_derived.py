"""Values derived from weights are rebuilt exactly when a weight changes, and stay out of
the module's state, copies and pickles."""

from __future__ import annotations

import copy
import gc
import pickle
import weakref

import torch
from torch import nn

from icefall.zipformer.derived import cached_names, derived


class Counting:
    """A build function that counts its calls and returns the weight's sum."""

    def __init__(self, layer: nn.Linear) -> None:
        self.layer, self.calls = layer, 0

    def __call__(self) -> torch.Tensor:
        self.calls += 1
        return self.layer.weight.detach().sum()


def _value(layer: nn.Linear, build: Counting) -> torch.Tensor:
    return derived(layer, "total", (layer.weight,), build)


def test_built_once_while_the_weight_is_unchanged():
    torch.manual_seed(0)
    layer = nn.Linear(4, 3)
    build = Counting(layer)
    first = _value(layer, build)
    assert _value(layer, build) is first and build.calls == 1
    assert cached_names(layer) == ["total"]


def test_every_kind_of_change_rebuilds():
    torch.manual_seed(0)
    layer = nn.Linear(4, 3)
    build = Counting(layer)
    _value(layer, build)
    changes = [
        lambda: layer.weight.mul_(2.0),  # in place (as optimisers do): the version moves
        lambda: layer.load_state_dict({"weight": torch.ones(3, 4), "bias": torch.zeros(3)}),
        lambda: setattr(layer, "weight", nn.Parameter(torch.full((3, 4), 0.5))),
        lambda: layer.double(),
    ]
    for calls, change in enumerate(changes, start=2):
        with torch.no_grad():
            change()
        value = _value(layer, build)
        assert build.calls == calls
        assert torch.equal(value, layer.weight.detach().sum())


def test_inference_tensors_are_never_cached():
    with torch.inference_mode():
        layer = nn.Linear(4, 3)
        build = Counting(layer)
        _value(layer, build)
        _value(layer, build)
    assert build.calls == 2 and cached_names(layer) == []


def test_the_cache_stays_out_of_state_copies_and_pickles_and_dies_with_the_module():
    torch.manual_seed(0)
    layer = nn.Linear(4, 3)
    _value(layer, Counting(layer))
    assert set(layer.state_dict()) == {"weight", "bias"}
    clone = copy.deepcopy(layer)
    assert cached_names(clone) == []
    assert cached_names(pickle.loads(pickle.dumps(layer))) == []
    build = Counting(clone)
    _value(clone, build)
    assert build.calls == 1  # the copy builds its own value
    assert len(cached_names(layer)) == 1
    layer_ref, value_ref = weakref.ref(layer), weakref.ref(_value(layer, Counting(layer)))
    del layer
    gc.collect()
    assert layer_ref() is None  # the cache does not keep the module alive
    assert value_ref() is None  # and its entry went with it
