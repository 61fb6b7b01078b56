"""Choosing, averaging and loading the model for decoding and export.

icefall's flags: ``--epoch E --avg N`` averages ``epoch-(E-N+1) .. epoch-E.pt``;
``--iter B --avg N`` averages the N newest ``checkpoint-*.pt`` up to batch B; with
``--use-averaged-model 1`` the running averages of two checkpoints N apart give the
model averaged over every batch between them (``epoch-(E-N).pt`` and ``epoch-E.pt``,
or the newest and the (N+1)-th newest ``checkpoint-*.pt``).

Model flags not given on the command line are taken from the configuration the newest
chosen checkpoint stores (:mod:`icefall.model_config`); icefall's files store none.

``--use-adapters 0`` with a checkpoint that has adapters keeps them loaded but switched
off, which computes exactly the base model; ``--use-adapters 1`` with a checkpoint
without adapters is an error.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from icefall.checkpoint import (
    CheckpointError,
    average_checkpoints,
    average_checkpoints_with_averaged_model,
    find_checkpoints,
    load_checkpoint_file,
    model_state_from,
    strip_ddp_prefix,
)
from icefall.model_config import (
    MODEL_KEYS,
    apply_model_config,
    check_fits_flags,
    read_model_config,
)
from icefall.zipformer import (
    adapter_parameter_names,
    get_model,
    remove_adapters,
    set_adapters_enabled,
)
from icefall.zipformer.model import AsrModel


def checkpoint_suffix(params: Mapping[str, Any]) -> str:
    """icefall's tag of the chosen model: ``epoch-30-avg-9-use-averaged-model``."""
    base = (f"iter-{params['iter']}" if params["iter"] > 0 else f"epoch-{params['epoch']}")
    tag = f"{base}-avg-{params['avg']}"
    return tag + ("-use-averaged-model" if params["use_averaged_model"] else "")


def _epoch_files(exp_dir: Path, first: int, last: int) -> list[Path]:
    files = [exp_dir / f"epoch-{i}.pt" for i in range(max(first, 1), last + 1)]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise CheckpointError(f"checkpoint not found: {missing[0]} (needed by --epoch "
                              f"{last} --avg); lower --avg or pick another --epoch")
    return files


def _iter_files(exp_dir: Path, iteration: int, count: int, avg: int) -> list[Path]:
    files = find_checkpoints(exp_dir, iteration)[:count]
    if len(files) < count:
        raise CheckpointError(f"--iter {iteration} --avg {avg} needs {count} checkpoint-*.pt "
                              f"files in {exp_dir} up to batch {iteration}, found "
                              f"{len(files)}")
    return files


def select_state_dict(params: Mapping[str, Any]) -> tuple[dict[str, Tensor], str]:
    """The (averaged) model state chosen by the flags, and a description of it."""
    exp_dir, avg, unsafe = Path(params["exp_dir"]), params["avg"], params["trust_checkpoint"]
    if avg < 1:
        raise ValueError(f"--avg must be >= 1, got {avg}")
    if params["use_averaged_model"]:
        if params["iter"] > 0:
            files = _iter_files(exp_dir, params["iter"], avg + 1, avg)
            start, end = files[-1], files[0]
        else:
            if params["epoch"] - avg < 1:
                raise CheckpointError(
                    f"--use-averaged-model 1 --epoch {params['epoch']} --avg {avg} needs "
                    f"epoch-{params['epoch'] - avg}.pt, which cannot exist; use --avg "
                    f"{params['epoch'] - 1} or less, or --use-averaged-model 0")
            start, end = (_epoch_files(exp_dir, e, e)[0]
                          for e in (params["epoch"] - avg, params["epoch"]))
        state = average_checkpoints_with_averaged_model(start, end, allow_unsafe=unsafe)
        return state, f"the averaged model between {start} and {end}"
    if params["iter"] > 0:
        files = _iter_files(exp_dir, params["iter"], avg, avg)
    else:
        files = _epoch_files(exp_dir, params["epoch"] - avg + 1, params["epoch"])
        if len(files) < avg:
            raise CheckpointError(f"--epoch {params['epoch']} --avg {avg}: only "
                                  f"{len(files)} epochs exist before epoch {params['epoch']}")
    if len(files) == 1:
        state = model_state_from(load_checkpoint_file(files[0], unsafe), files[0])
        return strip_ddp_prefix(state), str(files[0])
    state = average_checkpoints(files, allow_unsafe=unsafe)
    return strip_ddp_prefix(state), f"average of {', '.join(str(f) for f in files)}"


def model_from_state(params: Mapping[str, Any], state: Mapping[str, Tensor],
                     source: str, stored: Mapping[str, Any] | None = None) -> AsrModel:
    """Builds the model of the flags around ``state`` (see the module docstring).

    Args:
      stored: the checkpoint's stored model configuration, for the error that names the
        flags that would fit (None: they are inferred from the weights).
    """
    cfg = dict(params)
    cfg["use_adapters"] = True
    with torch.device("meta"):
        probe = get_model(cfg)
    has_adapters = any(k in state for k in adapter_parameter_names(probe))
    if params["use_adapters"] and not has_adapters:
        raise CheckpointError(f"{source} has no adapter weights: decode it with "
                              "--use-adapters 0")
    cfg["use_adapters"] = has_adapters
    model = get_model(cfg)
    check_fits_flags(model, state, source, cfg, stored)
    model.load_state_dict(state)
    set_adapters_enabled(model, bool(params["use_adapters"]))
    return model


def newest_checkpoint(params: Mapping[str, Any]) -> Path:
    """The newest file the checkpoint flags choose: ``epoch-E.pt``, or with ``--iter`` the
    newest ``checkpoint-B.pt`` up to B (which may not exist)."""
    exp_dir = Path(params["exp_dir"])
    if params["iter"] > 0:
        found = find_checkpoints(exp_dir, params["iter"])
        return found[0] if found else exp_dir / f"checkpoint-{params['iter']}.pt"
    return exp_dir / f"epoch-{params['epoch']}.pt"


def apply_checkpoint_config(params: dict[str, Any]
                            ) -> tuple[dict[str, Any] | None, str | None]:
    """Takes the model flags not given on the command line from the newest chosen
    checkpoint's stored configuration (see :mod:`icefall.model_config`).

    Returns:
      The stored configuration (None when there is none) and a line for the log naming
      the flags taken (None when none were).
    """
    path = newest_checkpoint(params)
    if not path.is_file():
        return None, None  # select_state_dict names what is missing
    stored = read_model_config(path, params["trust_checkpoint"])
    return stored, apply_model_config(params, stored, MODEL_KEYS, path)


def load_model_with_notes(params: dict[str, Any], device: torch.device | str = "cpu"
                          ) -> tuple[AsrModel, list[str]]:
    """The model chosen by the checkpoint flags, in eval mode on ``device`` (model flags
    not given on the command line come from the checkpoint: ``params`` is updated), and
    the lines for the log that say so, for a caller whose log is not set up yet."""
    stored, note = apply_checkpoint_config(params)
    state, source = select_state_dict(params)
    model = model_from_state(params, state, source, stored)
    adapters = "on" if params["use_adapters"] else "off (or absent)"
    notes = [note] if note else []
    notes.append(f"Using {source}; adapters {adapters}; "
                 f"{sum(p.numel() for p in model.parameters())} parameters")
    return model.to(device).eval(), notes


def load_model(params: dict[str, Any], device: torch.device | str = "cpu") -> AsrModel:
    """:func:`load_model_with_notes`, its lines logged now."""
    model, notes = load_model_with_notes(params, device)
    for line in notes:
        logging.info(line)
    return model


def load_export_model(params: dict[str, Any]) -> tuple[AsrModel, str]:
    """The checkpoint model chosen by the flags, in eval mode on the CPU (model flags not
    given come from the checkpoint: ``params`` is updated); with ``use_adapters`` false any
    adapters are removed (the base model's graph)."""
    stored, note = apply_checkpoint_config(params)
    if note:
        logging.info(note)
    state, source = select_state_dict(params)
    model = model_from_state(params, state, source, stored)
    if not params["use_adapters"]:
        removed = remove_adapters(model)
        if removed:
            logging.info(f"Left {removed} adapters of {source} out of the export")
    return model.to("cpu").eval(), source
