"""Counts the places where a training step would make a GPU wait: reading a tensor's
value on the host (``item``, ``tolist``, ``bool``/``int``/``float``, ``nonzero``, ``cpu``,
``numpy``) and copying to a device without ``non_blocking=True``.

On a CPU every tensor is a host tensor, so the probe cannot tell a read of a GPU tensor from
a read of a CPU one; it reports each read with the functions it came from, and a test
lists the functions whose reads are of host tensors by design (:data:`HOST_READS`).
"""

from __future__ import annotations

import collections
import contextlib
import sys
from collections.abc import Iterator

import torch

READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero", "cpu",
         "numpy")


def _caller(depth: int = 2) -> tuple[str, str]:
    """(file stem, function) of the nearest caller inside the icefall package."""
    frame = sys._getframe(depth)
    while frame is not None:
        name = frame.f_code.co_filename
        if "/icefall/" in name and not frame.f_code.co_name.startswith("<"):
            return name.rsplit("/", 1)[-1].removesuffix(".py"), frame.f_code.co_name
        frame = frame.f_back
    return "?", "?"


class SyncProbe:
    """Patches torch.Tensor while active; ``counts[(kind, file, function)]`` afterwards."""

    def __init__(self) -> None:
        self.counts: collections.Counter = collections.Counter()
        self.active = False

    @contextlib.contextmanager
    def installed(self) -> Iterator[SyncProbe]:
        originals = {n: getattr(torch.Tensor, n) for n in (*READS, "to")}
        for name in READS:
            setattr(torch.Tensor, name, self._read(name, originals[name]))
        torch.Tensor.to = self._to(originals["to"])
        try:
            yield self
        finally:
            for name, fn in originals.items():
                setattr(torch.Tensor, name, fn)

    def _read(self, name: str, original):
        def wrapper(t, *args, **kwargs):
            if self.active:
                self.counts[(name, *_caller())] += 1
            return original(t, *args, **kwargs)
        return wrapper

    def _to(self, original):
        def wrapper(t, *args, **kwargs):
            moves = any(isinstance(a, (torch.device, str)) for a in args) or "device" in kwargs
            if self.active and moves and not kwargs.get("non_blocking", False):
                self.counts[("blocking to", *_caller())] += 1
            return original(t, *args, **kwargs)
        return wrapper
