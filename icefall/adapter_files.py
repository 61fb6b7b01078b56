"""Adapter files and adapter-only checkpoints: adapters kept and shared apart from the base.

``adapter-<name>.pt`` is a dict that loads with ``torch.load(..., weights_only=True)``:

- ``format``: ``"zipformer-adapter/adapter"``, ``version``: 1;
- ``adapter``: the configuration (``{"name", "kind", "dim", "targets"}``, plain types);
- ``model``: the adapter's weights, keyed as in the model's state dict with the adapter in;
- ``base_fingerprint``: :func:`state_fingerprint` of the base weights it was trained on;
- ``base_checkpoint``: the path of that base checkpoint (for messages and for finding it);
- ``model_config``: the model-construction values (``icefall.zipformer.model_config``).

A training run with adapters writes *adapter-only checkpoints* (``epoch-N.pt``,
``checkpoint-B.pt``, ``best-*.pt``) unless ``--save-full-checkpoints 1``: the fields above
plus ``adapter_only: True``, ``model_avg`` (the running average of the adapter weights),
``optimizer``, ``scheduler``, ``grad_scaler``, ``sampler``, ``params``, ``rng`` and
``whiten_state``; so an adapter-only checkpoint is an adapter file as well.

The fingerprint is a SHA-256 over the base model's state-dict entries (sorted by key: key,
dtype, shape and bytes), adapters left out: the same weights give the same fingerprint on
any device, in any process; any changed weight gives another one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from icefall.checkpoint import (
    CheckpointError,
    load_checkpoint_file,
    model_state_from,
    save_checkpoint,
    strip_ddp_prefix,
)
from icefall.zipformer import (
    AdapterConfig,
    NamedAdapter,
    adapter_parameter_names,
    adapter_state_dict,
    lora_weight_aliases,
)

ADAPTER_FORMAT = "zipformer-adapter/adapter"
ADAPTER_VERSION = 1


def adapter_file_name(name: str) -> str:
    """``adapter-<name>.pt``."""
    return f"adapter-{name}.pt"


def base_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The model's state dict without its adapters (and without the second names LoRA
    gives to wrapped weights): what a checkpoint of the base model holds."""
    skip = set(adapter_parameter_names(model)) | set(lora_weight_aliases(model))
    return {k: v for k, v in model.state_dict().items() if k not in skip}


def state_fingerprint(state: Mapping[str, Tensor]) -> str:
    """``sha256:<hex>`` of the entries of ``state`` (see the module docstring)."""
    digest = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach()
        digest.update(f"{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        data = t.cpu().contiguous().reshape(-1).view(torch.uint8)
        digest.update(memoryview(data.numpy()))
    return f"sha256:{digest.hexdigest()}"


def base_fingerprint(model: nn.Module) -> str:
    """:func:`state_fingerprint` of :func:`base_state_dict`."""
    return state_fingerprint(base_state_dict(model))


def is_adapter_only(data: Mapping[str, Any]) -> bool:
    """True for an adapter file or an adapter-only training checkpoint."""
    return data.get("format") == ADAPTER_FORMAT or data.get("adapter_only") is True


def adapter_fields(config: AdapterConfig, fingerprint: str, base_checkpoint: str | Path,
                   model_config: Mapping[str, Any]) -> dict[str, Any]:
    """The fields that make a checkpoint adapter-only (with ``model`` = adapter weights)."""
    return {"format": ADAPTER_FORMAT, "version": ADAPTER_VERSION, "adapter_only": True,
            "adapter": config.to_dict(), "base_fingerprint": fingerprint,
            "base_checkpoint": str(base_checkpoint), "model_config": dict(model_config)}


def named_adapter_from(data: Mapping[str, Any], source: str | Path,
                       key: str = "model") -> NamedAdapter:
    """The adapter of an adapter file or adapter-only checkpoint (its ``key`` weights).

    Raises:
      CheckpointError: the dict is not one, or its fields are malformed.
    """
    if not is_adapter_only(data) or not isinstance(data.get("adapter"), Mapping):
        raise CheckpointError(f"{source} is not an adapter file (no adapter configuration; "
                              "adapter files are written by export-adapter.py, adapter-only "
                              "checkpoints by train.py with adapters)")
    try:
        config = AdapterConfig.from_dict(data["adapter"])
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from e
    state = model_state_from(data, source, key)
    bad = next((k for k, v in state.items() if not isinstance(v, Tensor)), None)
    if bad is not None:
        raise CheckpointError(f"{source}: adapter weight '{bad}' is not a tensor")
    fingerprint = data.get("base_fingerprint")
    if not isinstance(fingerprint, str):
        raise CheckpointError(f"{source} has no base_fingerprint")
    return NamedAdapter(config, state, fingerprint, str(source))


def read_adapter_file(path: str | Path) -> NamedAdapter:
    """An adapter file (or adapter-only checkpoint), read with ``weights_only=True``.

    Raises:
      CheckpointError: missing, unreadable, or not an adapter file.
    """
    return named_adapter_from(load_checkpoint_file(path, allow_unsafe=False), path)


def save_adapter_file(path: str | Path, model: nn.Module, config: AdapterConfig,
                      fingerprint: str, base_checkpoint: str | Path,
                      model_config: Mapping[str, Any]) -> Path:
    """Writes ``model``'s installed adapter (its weights now) to ``path``, atomically."""
    save_checkpoint(path, model=adapter_state_dict(model),
                    **adapter_fields(config, fingerprint, base_checkpoint, model_config))
    return Path(path)


def base_checkpoint_of(data: Mapping[str, Any], source: str | Path,
                       override: str | Path | None = None) -> Path:
    """The base checkpoint an adapter-only checkpoint was trained on: ``override`` when
    given (``--base-checkpoint``), else the path it records.

    Raises:
      CheckpointError: the file is not there (the message says how to point to it).
    """
    path = Path(override) if override else Path(str(data.get("base_checkpoint") or ""))
    if not path.name or not path.is_file():
        where = "--base-checkpoint" if override else f"recorded in {source}"
        raise CheckpointError(f"base checkpoint {path} ({where}) not found: {source} holds "
                              "only adapter weights; pass --base-checkpoint PATH (the "
                              "checkpoint it was fine-tuned from)")
    return path


def load_base_state(path: str | Path, allow_unsafe: bool = False) -> dict[str, Tensor]:
    """The model state dict of a base checkpoint.

    Raises:
      CheckpointError: unreadable, or itself adapter-only.
    """
    data = load_checkpoint_file(path, allow_unsafe=allow_unsafe)
    if is_adapter_only(data):
        raise CheckpointError(f"{path} holds only adapter weights; a base checkpoint holds "
                              "the whole model")
    return strip_ddp_prefix(model_state_from(data, path))


def check_same_base(adapter: NamedAdapter, fingerprint: str, base_source: str) -> None:
    """Raises CheckpointError when ``adapter`` was trained on another base than the one
    whose fingerprint is ``fingerprint``."""
    if adapter.base_fingerprint is None or adapter.base_fingerprint == fingerprint:
        return
    raise CheckpointError(
        f"{adapter.source}: adapter '{adapter.name}' was trained on another base model "
        f"(base fingerprint {adapter.base_fingerprint[:19]}..., this base {base_source}: "
        f"{fingerprint[:19]}...); use it with the base it was trained on")
