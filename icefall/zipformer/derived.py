"""Tensors derived from a module's weights for decoding, kept until the weights change.

Decoding uses forms of some weights that cost time to build and nothing to reuse: the
stateless decoder's one-step tables (:meth:`icefall.zipformer.decoder.Decoder.step_tables`)
and oneDNN's packed copies of linear weights (:mod:`icefall.zipformer.cpu_linear`).
:func:`derived` builds such a value once and returns it again while every weight it was
built from is unchanged: same storage, dtype and shape, and the same version counter
(which moves on every in-place change: an optimiser step, ``load_state_dict``, ``mul_``).
Each entry holds a view of its weights, so their storage cannot be freed and reused by
another tensor at the same address while the entry lives. A change written through
``weight.data`` bypasses the version counter and is not seen: change weights in place
under ``torch.no_grad()`` (as optimisers and ``load_state_dict`` do), or replace them.

The values live in a table keyed weakly by the owning module, outside the module itself,
so that ``state_dict``, ``copy.deepcopy`` and pickling never see them, and an entry goes
away with its module. Weights without a version counter (inference tensors) are never
cached: the value is rebuilt on each call.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

# module -> {name: (weight views, weight versions, value)}
_TABLE: weakref.WeakKeyDictionary[nn.Module, dict[str, tuple[tuple[Tensor, ...],
                                                               tuple[int, ...], Any]]]
_TABLE = weakref.WeakKeyDictionary()


def derived(owner: nn.Module, name: str, weights: tuple[Tensor, ...],
            build: Callable[[], Any]) -> Any:
    """Returns ``build()``, computed once per state of ``weights``.

    Args:
      owner: the module the value belongs to (the cache entry lives as long as it does).
      name: which of the owner's derived values this is.
      weights: the tensors the value is computed from.
      build: computes the value from the current weights (called without arguments).
    Returns:
      The cached value when no weight has changed since it was built, else a new one.
    """
    entries = _TABLE.get(owner)
    cached = None if entries is None else entries.get(name)
    if cached is not None and _unchanged(weights, cached[0], cached[1]):
        return cached[2]
    value = build()
    versions = _versions(weights)
    if versions is not None:
        entries = _TABLE.setdefault(owner, {})
        entries[name] = (tuple(w.detach() for w in weights), versions, value)
    return value


def cached_names(owner: nn.Module) -> list[str]:
    """Names of the values currently cached for ``owner`` (for tests and debugging)."""
    return sorted(_TABLE.get(owner, {}))


def _versions(weights: tuple[Tensor, ...]) -> tuple[int, ...] | None:
    """The weights' version counters; None for inference tensors, which have none."""
    try:
        return tuple(w._version for w in weights)
    except RuntimeError:
        return None


def _unchanged(weights: tuple[Tensor, ...], views: tuple[Tensor, ...],
               versions: tuple[int, ...]) -> bool:
    """True if ``weights`` still hold the storage, layout and version seen in ``views``."""
    same = all(w.data_ptr() == v.data_ptr() and w.dtype == v.dtype and w.shape == v.shape
               and w.device == v.device for w, v in zip(weights, views))
    return same and _versions(weights) == versions
