"""Adapter files, adapter-only checkpoints and base fingerprints (icefall.adapter_files):
round trips, the size targets on the default model, and refusals."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from conftest import tiny_params

from icefall.adapter_files import (
    base_fingerprint,
    base_state_dict,
    check_same_base,
    read_adapter_file,
    save_adapter_file,
    state_fingerprint,
)
from icefall.checkpoint import CheckpointError, save_checkpoint
from icefall.trainer import get_params, make_optimizer, save_training_checkpoint
from icefall.utils import AttributeDict
from icefall.zipformer import (
    adapter_state_dict,
    add_named_adapter,
    freeze_all_but_adapters,
    get_model,
    installed_adapter_config,
    iter_adapters,
    lora_unmerged,
    model_config,
    use_adapter,
)


def _randomise(model, seed: int = 5) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad(), lora_unmerged(model):
        for _, a in iter_adapters(model):
            for _, p in a.adapter_parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def test_fingerprint_is_of_the_base_weights_alone():
    torch.manual_seed(0)
    base = get_model(tiny_params())
    expected = state_fingerprint(base.state_dict())
    for flags in ({"use_adapters": True}, {"use_lora": True, "lora_r": 2}):
        model = get_model(tiny_params(**flags))
        model.load_state_dict(base.state_dict(), strict=False)
        assert set(base_state_dict(model)) == set(base.state_dict())
        assert base_fingerprint(model) == expected
        _randomise(model)
        model.eval()  # LoRA merged: the base weights are still what the state dict holds
        assert base_fingerprint(model) == expected
    other = copy.deepcopy(base)
    with torch.no_grad():
        other.joiner.output_linear.bias[3] += 1e-6
    assert base_fingerprint(other) != expected
    assert state_fingerprint({"a": torch.zeros(2)}) != state_fingerprint({"a": torch.zeros(1, 2)})
    assert state_fingerprint({"a": torch.zeros(2)}) != state_fingerprint({"b": torch.zeros(2)})


@pytest.mark.parametrize("flags", [{"use_adapters": True},
                                   {"use_lora": True, "lora_r": 2,
                                    "adapter_targets": "encoder,decoder"}])
def test_adapter_file_round_trip(flags, tmp_path):
    torch.manual_seed(0)
    source = get_model(tiny_params(adapter_name="podcasts", **flags))
    _randomise(source)
    path = save_adapter_file(tmp_path / "adapter-podcasts.pt", source,
                             installed_adapter_config(source), base_fingerprint(source),
                             "base.pt", model_config(tiny_params()))
    raw = torch.load(path, weights_only=True)  # plain types and tensors only
    assert raw["adapter"]["name"] == "podcasts" and raw["base_checkpoint"] == "base.pt"
    adapter = read_adapter_file(path)
    assert adapter.config == installed_adapter_config(source)
    assert adapter.base_fingerprint == base_fingerprint(source)
    base = get_model(tiny_params())
    base.load_state_dict(base_state_dict(source))
    check_same_base(adapter, base_fingerprint(base), "base.pt")
    add_named_adapter(base, adapter)
    use_adapter(base, "podcasts")
    g = torch.Generator().manual_seed(2)
    x, x_lens = torch.randn(2, 61, 80, generator=g), torch.tensor([61, 47])
    with torch.no_grad():
        assert torch.equal(base.eval().forward_encoder(x, x_lens)[0],
                           source.eval().forward_encoder(x, x_lens)[0])


def test_adapter_from_another_base_and_non_adapter_files_are_refused(tmp_path):
    torch.manual_seed(0)
    model = get_model(tiny_params(use_adapters=True))
    path = save_adapter_file(tmp_path / "a.pt", model, installed_adapter_config(model),
                             base_fingerprint(model), "base.pt", {})
    with pytest.raises(CheckpointError, match="trained on another base model"):
        check_same_base(read_adapter_file(path), "sha256:" + "0" * 64, "other.pt")
    save_checkpoint(tmp_path / "base.pt", model=get_model(tiny_params()).state_dict())
    with pytest.raises(CheckpointError, match="is not an adapter file"):
        read_adapter_file(tmp_path / "base.pt")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        read_adapter_file(tmp_path / "missing.pt")
    evil = io.BytesIO()
    torch.save({"format": "zipformer-adapter/adapter", "adapter": AttributeDict(name="x")},
               evil)
    (tmp_path / "evil.pt").write_bytes(evil.getvalue())
    with pytest.raises(CheckpointError, match="stores Python objects"):
        read_adapter_file(tmp_path / "evil.pt")  # weights_only=True, never unpickled


def _tensor_bytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


@pytest.mark.slow
def test_default_model_targets_adapter_file_and_epoch_checkpoint(tmp_path):
    """The default 65.5M model at --adapter-dim 16: adapter-<name>.pt under 5 MB, and an
    adapter-only epoch checkpoint under 3% of a whole one (whose model and running average
    alone are 2 x 4 bytes per parameter)."""
    torch.manual_seed(0)
    model = get_model({"use_adapters": True, "adapter_dim": 16})
    config = installed_adapter_config(model)
    fingerprint = base_fingerprint(model)
    path = save_adapter_file(tmp_path / "adapter-default.pt", model, config, fingerprint,
                             "pretrained.pt", model_config({}))
    assert path.stat().st_size < 5_000_000
    freeze_all_but_adapters(model)
    params = AttributeDict(get_params(), **model_config({"use_adapters": True}),
                           base_lr=0.045, lr_batches=7500, lr_epochs=3.5,
                           lr_warmup_batches=500, adapter_min_rms=0.01,
                           adapter_only_checkpoints=True, base_fingerprint=fingerprint,
                           base_checkpoint="pretrained.pt")
    optimizer, scheduler = make_optimizer(model, params)
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.randn_like(p) * 1e-3
    optimizer.step()  # optimizer state for every adapter parameter
    avg = get_model({"use_adapters": True, "adapter_dim": 16})  # stands in for model_avg
    save_training_checkpoint(tmp_path / "epoch-1.pt", params, model, avg, optimizer,
                             scheduler, torch.amp.GradScaler("cpu", enabled=False), None)
    size = (tmp_path / "epoch-1.pt").stat().st_size
    whole = 2 * 4 * sum(p.numel() for p in model.parameters()) + \
        _tensor_bytes(optimizer.state_dict())
    assert size < 0.03 * whole, (size, whole)
    saved = torch.load(tmp_path / "epoch-1.pt", weights_only=True)
    assert set(saved["model"]) == set(adapter_state_dict(model)) == set(saved["model_avg"])
