"""Fine-tuning: initialise a model from a pretrained checkpoint and choose what trains.

``--do-finetune 1 --finetune-ckpt F`` loads F's ``model`` state dict (icefall's
``pretrained.pt`` is ``{"model": state_dict}``); adapter parameters absent from F (and the
second names LoRA gives to the weights it wraps) are the only keys allowed to be missing.
``--init-modules encoder,decoder`` loads only the parameters under those prefixes. With
adapters (``--use-adapters 1`` or ``--use-lora 1``), every other parameter is frozen.

What an adapter run's checkpoints hold (:func:`choose_checkpoint_contents`): only what
trains, plus the base checkpoint's path and fingerprint (:mod:`icefall.adapter_files`),
when the base is exactly a checkpoint on disk (``--finetune-ckpt`` without
``--init-modules``, or the base of the adapter-only checkpoint the run resumes from) and
``--save-full-checkpoints`` is 0; the whole model otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from icefall.adapter_files import (
    base_checkpoint_of,
    base_fingerprint,
    is_adapter_only,
)
from icefall.checkpoint import (
    CheckpointError,
    check_state_dict_fits,
    load_checkpoint_file,
    model_state_from,
    strip_ddp_prefix,
)
from icefall.model_config import check_fits_flags, stored_model_config
from icefall.zipformer import (
    adapter_config_from_params,
    adapter_parameter_names,
    count_parameters,
    freeze_all_but_adapters,
    lora_weight_aliases,
)


def trains_adapters(params: Mapping[str, Any]) -> bool:
    """True when the flags ask for adapters (``--use-adapters 1``, or ``--use-lora 1`` with a
    rank above 0): then only they train."""
    return adapter_config_from_params(params) is not None


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
    if is_adapter_only(data):
        raise CheckpointError(f"{filename} holds only adapter weights: fine-tune from its "
                              f"base ({data.get('base_checkpoint')}), and load the adapter "
                              "with --adapter-file at decoding")
    allowed_missing = set(adapter_parameter_names(model)) | set(lora_weight_aliases(model))
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
    """With adapters (any kind), freezes everything but them; logs icefall's
    parameter-count lines."""
    if use_adapters:
        freeze_all_but_adapters(model)
    count = count_parameters(model)
    logging.info(f"Number of model parameters: {count.total}")
    logging.info(str(count))


def load_adapter_run_base(params: Mapping[str, Any], model: nn.Module,
                          data: Mapping[str, Any], source: str | Path) -> tuple[str, str]:
    """Loads the base of an adapter-only checkpoint ``data`` into ``model`` (from the path
    it records, or ``--finetune-ckpt`` when given) and checks it is the base the adapters
    were trained on.

    Returns:
      (base checkpoint path, base fingerprint).
    Raises:
      CheckpointError: the base is missing, does not fit, or is another model.
    """
    path = base_checkpoint_of(data, source, params.get("finetune_ckpt"))
    state = finetune_state(model, path, None, bool(params.get("trust_checkpoint")))
    model.load_state_dict(state, strict=False)
    fingerprint = base_fingerprint(model)
    if fingerprint != data.get("base_fingerprint"):
        raise CheckpointError(f"{path} is not the base model {source} was trained on (its "
                              "base fingerprint differs); pass the right one with "
                              "--finetune-ckpt")
    logging.info(f"Base model of {source}: {path}")
    return str(path), fingerprint


def choose_checkpoint_contents(params: dict, model: nn.Module, rank: int,
                               resuming: bool) -> None:
    """Decides whether the run's checkpoints are adapter-only (``params.adapter_only_
    checkpoints``; see the module docstring) and, for a new adapter run, sets
    ``params.base_checkpoint`` and, on rank 0 (which writes them), ``params.base_fingerprint``
    (a resumed adapter-only run has them from :func:`load_adapter_run_base`)."""
    reason = None
    if not trains_adapters(params):
        reason = ""
    elif params.get("save_full_checkpoints"):
        reason = "--save-full-checkpoints 1"
    elif params.get("init_modules"):
        reason = "--init-modules: the base is not exactly a checkpoint on disk"
    elif not params.get("base_checkpoint"):
        if resuming or not (params.get("do_finetune") and params.get("finetune_ckpt")):
            reason = "the run resumes from a whole-model checkpoint"
        else:
            params["base_checkpoint"] = str(Path(params["finetune_ckpt"]).resolve())
            if rank == 0:
                params["base_fingerprint"] = base_fingerprint(model)
    params["adapter_only_checkpoints"] = reason is None
    if reason:
        logging.info(f"Checkpoints hold the whole model ({reason})")
    elif reason is None:
        logging.info(f"Checkpoints hold the adapters only (base: {params['base_checkpoint']})")
