"""Adapter kinds: the base classes every kind derives from, and the registry naming them.

A kind is one class and one registration. Two families:

- :class:`OutputAdapter`: acts on a tensor, ``(..., C) -> (..., C)``, and is the identity when
  switched off (and, by convention, when freshly made). It goes into the encoder layers'
  adapter slots, or onto the output of a linear layer or of the decoder (``--adapter-targets``).
  It is built as ``cls(C, adapter_dim)``; a subclass implements :meth:`OutputAdapter.adapt`::

      @register_adapter_kind("ia3")
      class IA3(OutputAdapter):
          def __init__(self, dim: int, adapter_dim: int) -> None:
              super().__init__(dim, adapter_dim)
              self.scale = nn.Parameter(torch.ones(dim))

          def adapt(self, x: Tensor) -> Tensor:
              return x * self.scale

- :class:`WrapperAdapter`: takes the place of a target module (a linear layer, an
  embedding), sharing its weights and adding an update (LoRA). ``cls.wrap(module, dim)``
  returns the module to put in the target's place (or None when the kind cannot wrap that
  module), and that module's ``unwrap()`` returns the original.

Adapters are found by type (:class:`Adapter`), never by name. ``kind`` (the registered name)
is set on the class by :func:`register_adapter_kind`.

Dimension legend: C = the feature size the adapter acts on, A = adapter_dim.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import ClassVar, TypeVar

from torch import Tensor, nn

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_KINDS: dict[str, type[Adapter]] = {}

A = TypeVar("A", bound=type)


class Adapter(nn.Module):
    """Base class of every adapter kind. A switched-off (``enabled = False``) adapter makes
    its site compute exactly what it computes without the adapter.

    Class attributes:
      kind: the registered name of the kind (set by :func:`register_adapter_kind`).
      uses_adapter_min_rms: whether training puts the adapter's parameters in the
        ScaledAdam group floored by ``--adapter-min-rms`` (zero-initialised bottlenecks need
        it; LoRA keeps icefall's default floor).
    """

    kind: ClassVar[str | None] = None
    uses_adapter_min_rms: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__()
        self.enabled = True

    def adapter_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) of what trains: by default every parameter of the module."""
        return list(self.named_parameters())


class OutputAdapter(Adapter):
    """An adapter on a tensor: ``forward(x) = adapt(x)`` when enabled, else ``x``.

    Args:
      dim: C, the last dimension of the tensors it acts on; adapter_dim: A, the kind's size
        parameter (bottleneck width, rank, ...; a kind may ignore it).
    """

    def __init__(self, dim: int, adapter_dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.adapter_dim = adapter_dim

    def adapt(self, x: Tensor) -> Tensor:
        """x: (..., C) -> (..., C)."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., C) -> (..., C)."""
        return self.adapt(x) if self.enabled else x


class WrapperAdapter(Adapter):
    """An adapter that takes the place of the module it adapts, sharing that module's
    parameters (which stay frozen) and adding its own."""

    is_adapter_wrapper: ClassVar[bool] = True  # found and unwrapped by uninstall_adapters

    @classmethod
    def wrap(cls, module: nn.Module, adapter_dim: int) -> nn.Module | None:
        """The module to put in ``module``'s place, or None if this kind cannot wrap it."""
        raise NotImplementedError

    def unwrap(self) -> nn.Module:
        """The original module, as it was before :meth:`wrap` (its weights unmerged)."""
        raise NotImplementedError


def register_adapter_kind(name: str) -> Callable[[A], A]:
    """Class decorator: registers an :class:`OutputAdapter` or :class:`WrapperAdapter`
    subclass under ``name`` (``--adapter-kind NAME``).

    Raises:
      ValueError: for a malformed name, a class of neither family, or a name already taken
        by another class.
    """
    if not _NAME.match(name):
        raise ValueError(f"adapter kind names are lower-case identifiers, got '{name}'")

    def register(cls: A) -> A:
        if not (issubclass(cls, OutputAdapter) or issubclass(cls, WrapperAdapter)):
            raise ValueError(f"adapter kind '{name}': {cls.__name__} must derive from "
                             "OutputAdapter or WrapperAdapter")
        taken = _KINDS.get(name)
        if taken is not None and taken.__qualname__ != cls.__qualname__:
            raise ValueError(f"adapter kind '{name}' is already registered "
                             f"({taken.__module__}.{taken.__qualname__})")
        cls.kind = name
        _KINDS[name] = cls
        return cls

    return register


def adapter_kind(name: str) -> type[Adapter]:
    """The class registered under ``name``.

    Raises:
      ValueError: naming the registered kinds when ``name`` is not one of them.
    """
    try:
        return _KINDS[name]
    except KeyError:
        raise ValueError(f"unknown adapter kind '{name}' (registered: "
                         f"{', '.join(adapter_kinds())})") from None


def adapter_kinds() -> list[str]:
    """The registered kind names, sorted."""
    return sorted(_KINDS)


def is_output_kind(cls: type[Adapter]) -> bool:
    """True for :class:`OutputAdapter` kinds, False for :class:`WrapperAdapter` kinds."""
    return issubclass(cls, OutputAdapter)
