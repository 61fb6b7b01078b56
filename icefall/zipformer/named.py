"""Named adapters: several adapters held by one model, one of them (or none) in use.

The model keeps each named adapter's configuration and weights (CPU tensors, the state-dict
keys the adapter has when installed) beside its modules; :func:`use_adapter` installs the
chosen one (or, for one with the same structure as the adapter in use, only copies its
weights) and ``use_adapter(model, None)`` removes every adapter: the model is then the base
model exactly. Adapters of any kinds, sizes and targets can share a model this way, since
only one is installed at a time. The bank is a plain attribute, not part of ``state_dict()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from icefall.zipformer.adapters import iter_adapters, load_adapter_state_dict
from icefall.zipformer.placement import (
    AdapterConfig,
    install_adapter,
    installed_adapter_config,
    uninstall_adapters,
)


@dataclass
class NamedAdapter:
    """One adapter's configuration, weights and provenance.

    Attributes:
      state: {state-dict key when installed: tensor} of the adapter's parameters.
      base_fingerprint: of the base weights it was trained on (None when unknown).
      source: where it came from (a file, a checkpoint), for messages.
    """

    config: AdapterConfig
    state: dict[str, Tensor] = field(repr=False)
    base_fingerprint: str | None = None
    source: str = ""

    @property
    def name(self) -> str:
        return self.config.name


def named_adapters(model: nn.Module) -> dict[str, NamedAdapter]:
    """The model's named adapters, by name (in the order they were added)."""
    bank = model.__dict__.get("_adapter_bank")
    if bank is None:
        bank = model.__dict__["_adapter_bank"] = {}
    return bank


def add_named_adapter(model: nn.Module, adapter: NamedAdapter) -> None:
    """Adds ``adapter`` to the model's named adapters (not installing it).

    Raises:
      ValueError: another adapter of that name is there already.
    """
    bank = named_adapters(model)
    other = bank.get(adapter.name)
    if other is not None and other is not adapter:
        raise ValueError(f"two adapters are named '{adapter.name}' ({other.source or '?'} and "
                         f"{adapter.source or '?'}); train or export one under another "
                         "--adapter-name")
    bank[adapter.name] = adapter


def active_adapter(model: nn.Module) -> str | None:
    """The name of the adapter in use, None when the model is the base model."""
    config = installed_adapter_config(model)
    return None if config is None else config.name


def use_adapter(model: nn.Module, name: str | None) -> AdapterConfig | None:
    """Puts the named adapter in use (switched on, in the model's train/eval mode: LoRA
    merged in eval mode), or, with None, removes every adapter. Returns its config.

    Raises:
      ValueError: no adapter of that name (the message lists the names there are), or its
        weights do not fit its configuration.
    """
    if name is None:
        uninstall_adapters(model)
        return None
    bank = named_adapters(model)
    if name not in bank:
        have = ", ".join(f"'{n}'" for n in bank) or "none"
        raise ValueError(f"no adapter named '{name}' (adapters: {have})")
    entry = bank[name]
    if entry.config.same_structure(installed_adapter_config(model)):
        model.adapter_config = entry.config
    else:
        uninstall_adapters(model)
        install_adapter(model, entry.config)
    try:
        load_adapter_state_dict(model, entry.state)
    except ValueError as e:
        uninstall_adapters(model)
        raise ValueError(f"adapter '{name}' ({entry.source}): {e}") from e
    for _, adapter in iter_adapters(model):
        adapter.enabled = True
        adapter.train(model.training)
    return entry.config
