"""Small helpers shared by the library and the recipes.

Dimension legend: N = batch size, T = frames.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from pathlib import Path

import torch


class AttributeDict(dict):
    """A dict whose keys are also attributes: ``params.encoder_dim``.

    Recipes keep their configuration in one of these, as icefall does.
    """

    def __getattr__(self, key: str):
        try:
            return self[key]
        except KeyError as e:
            raise AttributeError(f"No attribute '{key}'") from e

    def __setattr__(self, key: str, value) -> None:
        self[key] = value

    def __delattr__(self, key: str) -> None:
        try:
            del self[key]
        except KeyError as e:
            raise AttributeError(f"No attribute '{key}'") from e


def to_int_tuple(s: str | int | Iterable[int], name: str = "value") -> tuple[int, ...]:
    """Parses a per-stack flag such as ``"2,2,3,4,3,2"`` into ``(2, 2, 3, 4, 3, 2)``.

    Raises:
      ValueError: naming ``name`` when an element is not an integer.
    """
    if isinstance(s, int):
        return (s,)
    if isinstance(s, str):
        parts = [p.strip() for p in s.split(",") if p.strip() != ""]
    else:
        parts = list(s)
    try:
        return tuple(int(p) for p in parts)
    except (TypeError, ValueError) as e:
        raise ValueError(f"--{name.replace('_', '-')}: expected comma-separated integers, "
                         f"got '{s}'") from e


def make_pad_mask(lengths: torch.Tensor, max_len: int = 0) -> torch.Tensor:
    """Mask of padded positions.

    Args:
      lengths: (N,) number of valid frames per sequence.
      max_len: width of the mask, at least ``lengths.max()``; 0 reads ``lengths.max()``
        (which waits for the device when lengths is on a GPU).
    Returns:
      (N, T) bool, True at padded positions (t >= lengths[n]).
    """
    if lengths.ndim != 1:
        raise ValueError(f"lengths must be 1-D, got shape {tuple(lengths.shape)}")
    if max_len <= 0:
        max_len = int(lengths.max()) if lengths.numel() > 0 else 0
    t = torch.arange(max_len, device=lengths.device)
    return t.unsqueeze(0) >= lengths.unsqueeze(1)


def setup_logger(log_filename: str | Path | None = None, log_level: str = "info",
                 rank: int = 0) -> None:
    """icefall-style logging to stderr and, when given, to ``log_filename``.

    Each rank of a distributed run logs to ``<log_filename>-<rank>``.
    """
    fmt = "%(asctime)s %(levelname)s [%(filename)s:%(lineno)d] %(message)s"
    if rank > 0:
        fmt = f"%(asctime)s %(levelname)s [%(filename)s:%(lineno)d] ({rank}) %(message)s"
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_filename is not None:
        path = Path(f"{log_filename}-{rank}" if rank > 0 else log_filename)
        path.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(path, mode="a"))
    logging.basicConfig(level=getattr(logging, log_level.upper()), format=fmt,
                        handlers=handlers, force=True)
