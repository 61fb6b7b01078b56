"""Fine-tuning: initialise a model from a pretrained checkpoint and choose what trains.

``--do-finetune 1 --finetune-ckpt F`` loads F's ``model`` state dict (icefall's
``pretrained.pt`` is ``{"model": state_dict}``); adapter parameters absent from F are the
only keys allowed to be missing. ``--init-modules encoder,decoder`` loads only the
parameters under those prefixes. With adapters, every other parameter is frozen.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from icefall.checkpoint import (
    CheckpointError,
    check_state_dict_fits,
    load_checkpoint_file,
    model_state_from,
    strip_ddp_prefix,
)
from icefall.model_config import check_fits_flags, stored_model_config
from icefall.zipformer.adapters import (
    adapter_parameter_names,
    count_parameters,
    freeze_all_but_adapters,
)


def parse_init_modules(value: str | None) -> list[str]:
    """``"encoder,decoder"`` -> ``["encoder", "decoder"]``; None or "" -> [] (everything)."""
    return [m.strip() for m in (value or "").split(",") if m.strip()]


def _select_modules(model: nn.Module, state: dict[str, Tensor], modules: Sequence[str],
                    path: str | Path) -> tuple[dict[str, Tensor], set[str]]:
    """Keeps the entries of ``state`` under ``modules``; returns them and the model keys
    outside ``modules`` (left at their initial values)."""
    own = model.state_dict()
    prefixes = tuple(m + "." for m in modules)
    for m in modules:
        if not any(k.startswith(m + ".") for k in own):
            raise CheckpointError(f"--init-modules: the model has no module '{m}'")
        if not any(k.startswith(m + ".") for k in state):
            raise CheckpointError(f"{path} has no parameters under '{m}' (--init-modules)")
    selected = {k: v for k, v in state.items() if k.startswith(prefixes)}
    untouched = {k for k in own if not k.startswith(prefixes)}
    return selected, untouched


def finetune_state(model: nn.Module, filename: str | Path, init_modules: str | None = None,
                   allow_unsafe: bool = False, params: Mapping[str, Any] | None = None
                   ) -> dict[str, Tensor]:
    """The entries of ``filename`` that fine-tuning loads into ``model``, checked to fit.

    Args:
      params: the model flags; given, a mismatch also names the flags that would fit.
    Raises:
      CheckpointError: naming the file and the first missing, unexpected or mis-shaped key.
    """
    data = load_checkpoint_file(filename, allow_unsafe=allow_unsafe)
    state = strip_ddp_prefix(model_state_from(data, filename))
    allowed_missing = set(adapter_parameter_names(model))
    modules = parse_init_modules(init_modules)
    if modules:
        logging.info(f"Loading parameters under {modules}")
        state, untouched = _select_modules(model, state, modules, filename)
        allowed_missing |= untouched
    if params is None:
        check_state_dict_fits(model, state, filename, allowed_missing)
    else:
        check_fits_flags(model, state, filename, params, stored_model_config(data),
                         allowed_missing)
    return state


def load_finetune_checkpoint(model: nn.Module, filename: str | Path,
                             init_modules: str | None = None,
                             allow_unsafe: bool = False) -> None:
    """Initialises ``model`` from ``filename`` for fine-tuning (see the module docstring)."""
    logging.info(f"Loading checkpoint from {filename}")
    state = finetune_state(model, filename, init_modules, allow_unsafe)
    model.load_state_dict(state, strict=False)
    missing = [k for k in model.state_dict() if k not in state]
    if missing:
        logging.info(f"{len(missing)} tensors keep their initial values (adapters or "
                     "modules outside --init-modules)")


def setup_trainable_parameters(model: nn.Module, use_adapters: bool) -> None:
    """With adapters, freezes everything but them; logs icefall's parameter-count lines."""
    if use_adapters:
        freeze_all_but_adapters(model)
    count = count_parameters(model)
    logging.info(f"Number of model parameters: {count.total}")
    logging.info(str(count))
