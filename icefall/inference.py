"""Choosing, averaging and loading the model for decoding, export and transcription.

icefall's flags: ``--epoch E --avg N`` averages ``epoch-(E-N+1) .. epoch-E.pt``;
``--iter B --avg N`` averages the N newest ``checkpoint-*.pt`` up to batch B; with
``--use-averaged-model 1`` the running averages of two checkpoints N apart give the
model averaged over every batch between them (``epoch-(E-N).pt`` and ``epoch-E.pt``,
or the newest and the (N+1)-th newest ``checkpoint-*.pt``). Adapter-only checkpoints
(:mod:`icefall.adapter_files`) are chosen and averaged the same way; their base is read from
the path they record (``--base-checkpoint`` overrides it) and must have their fingerprint.

Adapters: the base model of the flags is built, the checkpoint's base weights loaded, and
the checkpoint's own adapter (its configuration recorded in the checkpoint, or read from its
keys for older and icefall's checkpoints) and every ``--adapter-file`` are held as named
adapters (:mod:`icefall.zipformer.named`). One of them is put in use when adapters are on
(``--use-adapters 1`` or ``--use-lora 1``): the one ``--adapter-name`` names, or the only
one there is. With adapters off the model is the base model exactly (nothing installed);
with adapters on and none there, that is an error. An adapter file trained on another base
(its fingerprint differs) is refused.

Model flags not given on the command line are taken from the configuration the newest
chosen checkpoint stores (:mod:`icefall.model_config`); icefall's files store none.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from icefall.adapter_files import (
    base_checkpoint_of,
    base_fingerprint,
    check_same_base,
    is_adapter_only,
    load_base_state,
    named_adapter_from,
    read_adapter_file,
)
from icefall.checkpoint import (
    CheckpointError,
    average_loaded_with_averaged_model,
    average_state_dicts,
    check_state_dict_fits,
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
    with_flags_hint,
)
from icefall.zipformer import (
    AdapterConfig,
    NamedAdapter,
    adapter_parameter_names,
    add_named_adapter,
    get_model,
    infer_adapter_config,
    install_adapter,
    installed_adapter_config,
    lora_modules,
    merged_state_dict,
    named_adapters,
    use_adapter,
)
from icefall.zipformer.model import AsrModel

# Top-level fields of a checkpoint that say what it holds (the rest is training state).
INFO_KEYS = ("format", "version", "adapter_only", "adapter", "base_fingerprint",
             "base_checkpoint", "model_config")


@dataclass
class SelectedCheckpoint:
    """The (averaged) ``model`` state chosen by the flags, a description of where it came
    from, and the checkpoint's :data:`INFO_KEYS` fields."""

    state: dict[str, Tensor]
    source: str
    info: dict[str, Any] = field(default_factory=dict)


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


def _averaged_model_files(params: Mapping[str, Any]) -> tuple[Path, Path]:
    """(start, end) of --use-averaged-model 1."""
    exp_dir, avg = Path(params["exp_dir"]), params["avg"]
    if params["iter"] > 0:
        files = _iter_files(exp_dir, params["iter"], avg + 1, avg)
        return files[-1], files[0]
    if params["epoch"] - avg < 1:
        raise CheckpointError(
            f"--use-averaged-model 1 --epoch {params['epoch']} --avg {avg} needs "
            f"epoch-{params['epoch'] - avg}.pt, which cannot exist; use --avg "
            f"{params['epoch'] - 1} or less, or --use-averaged-model 0")
    start, end = (_epoch_files(exp_dir, e, e)[0] for e in (params["epoch"] - avg,
                                                           params["epoch"]))
    return start, end


def _averaged_files(params: Mapping[str, Any]) -> list[Path]:
    """The files --avg N averages without --use-averaged-model."""
    exp_dir, avg = Path(params["exp_dir"]), params["avg"]
    if params["iter"] > 0:
        return _iter_files(exp_dir, params["iter"], avg, avg)
    files = _epoch_files(exp_dir, params["epoch"] - avg + 1, params["epoch"])
    if len(files) < avg:
        raise CheckpointError(f"--epoch {params['epoch']} --avg {avg}: only "
                              f"{len(files)} epochs exist before epoch {params['epoch']}")
    return files


def _info(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: data[k] for k in INFO_KEYS if k in data}


def _check_one_run(infos: list[dict[str, Any]], files: list[Path]) -> None:
    """Checkpoints averaged together hold the same things: all whole models, or all
    adapters of one configuration trained on one base."""
    first = infos[0]
    for info, path in zip(infos[1:], files[1:]):
        same = (is_adapter_only(info) == is_adapter_only(first) and
                info.get("base_fingerprint") == first.get("base_fingerprint") and
                info.get("adapter") == first.get("adapter"))
        if not same:
            raise CheckpointError(f"cannot average {files[0]} and {path}: one holds adapters "
                                  "only, or they hold other adapters or bases")


def select_checkpoint(params: Mapping[str, Any]) -> SelectedCheckpoint:
    """The (averaged) model state chosen by the flags, read once per file."""
    avg, unsafe = params["avg"], params["trust_checkpoint"]
    if avg < 1:
        raise ValueError(f"--avg must be >= 1, got {avg}")
    if params["use_averaged_model"]:
        start, end = _averaged_model_files(params)
        a, b = load_checkpoint_file(start, unsafe), load_checkpoint_file(end, unsafe)
        _check_one_run([_info(a), _info(b)], [start, end])
        state = average_loaded_with_averaged_model(a, b, start, end)
        return SelectedCheckpoint(strip_ddp_prefix(state),
                                  f"the averaged model between {start} and {end}", _info(b))
    files = _averaged_files(params)
    states, infos = [], []
    for f in files:
        data = load_checkpoint_file(f, unsafe)
        states.append(model_state_from(data, f))
        infos.append(_info(data))
        del data
    _check_one_run(infos, files)
    if len(files) == 1:
        return SelectedCheckpoint(strip_ddp_prefix(states[0]), str(files[0]), infos[-1])
    return SelectedCheckpoint(strip_ddp_prefix(average_state_dicts(states)),
                              f"average of {', '.join(str(f) for f in files)}", infos[-1])


def select_state_dict(params: Mapping[str, Any]) -> tuple[dict[str, Tensor], str]:
    """The (averaged) model state chosen by the flags, and a description of it."""
    chosen = select_checkpoint(params)
    return chosen.state, chosen.source


# ---------------------------------------------------------------------------------------
# Building the model: base weights, named adapters, the one in use
# ---------------------------------------------------------------------------------------


def base_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The flags with adapters off: the base model's construction values."""
    return {**params, "use_adapters": False, "use_lora": False}


def adapters_requested(params: Mapping[str, Any]) -> bool:
    """Adapters on: ``--use-adapters 1`` or ``--use-lora 1``."""
    return bool(params.get("use_adapters")) or bool(params.get("use_lora"))


def _split_whole_state(params: Mapping[str, Any], chosen: SelectedCheckpoint,
                       base: AsrModel) -> tuple[dict[str, Tensor], NamedAdapter | None]:
    """(base weights, the checkpoint's own adapter) of a whole-model state."""
    state, source = chosen.state, chosen.source
    base_keys = list(base.state_dict())
    extra = {k: v for k, v in state.items() if k not in set(base_keys)}
    recorded = chosen.info.get("adapter")
    config = (AdapterConfig.from_dict(recorded) if isinstance(recorded, Mapping)
              else infer_adapter_config(extra, base) if extra else None)
    if config is None:
        check_state_dict_fits(base, state, source)  # names the unexpected key
        return state, None
    with torch.device("meta"):
        probe = get_model(base_params(params))
        install_adapter(probe, config)
    check_state_dict_fits(probe, state, source)
    own = {k: state[k] for k in adapter_parameter_names(probe)}
    return {k: state[k] for k in base_keys}, NamedAdapter(config, own, None, source)


def _base_and_own_adapter(params: Mapping[str, Any], chosen: SelectedCheckpoint,
                          base: AsrModel) -> tuple[dict[str, Tensor], str, NamedAdapter | None]:
    """(base weights, where they come from, the checkpoint's own adapter or None)."""
    if not is_adapter_only(chosen.info):
        state, own = _split_whole_state(params, chosen, base)
        return state, chosen.source, own
    path = base_checkpoint_of(chosen.info, chosen.source, params.get("base_checkpoint"))
    state = load_base_state(path, bool(params.get("trust_checkpoint")))
    own = named_adapter_from({**chosen.info, "model": chosen.state}, chosen.source)
    return state, str(path), own


def choose_adapter_name(params: Mapping[str, Any], model: AsrModel, source: str) -> str | None:
    """The named adapter to use (None: adapters off).

    Raises:
      ValueError: adapters on and none there, several and none chosen, or an unknown name.
    """
    if not adapters_requested(params):
        return None
    bank = named_adapters(model)
    name = params.get("adapter_name")
    if name:
        if name not in bank:
            have = ", ".join(f"'{n}'" for n in bank) or "none"
            raise ValueError(f"--adapter-name {name}: no such adapter in {source} or the "
                             f"--adapter-file files (adapters: {have})")
        return name
    if not bank:
        raise CheckpointError(f"{source} has no adapter weights: decode it with "
                              "--use-adapters 0 --use-lora 0, or add --adapter-file")
    if len(bank) > 1:
        raise ValueError(f"{len(bank)} adapters ({', '.join(bank)}): choose one with "
                         "--adapter-name")
    return next(iter(bank))


def model_from_checkpoint(params: Mapping[str, Any], chosen: SelectedCheckpoint,
                          stored: Mapping[str, Any] | None = None) -> AsrModel:
    """The base model of the flags around ``chosen`` (see the module docstring), with its
    adapters and the ``adapter_file`` ones held by name, the chosen one in use. ``stored``
    (the checkpoint's model configuration) names the flags that would fit when the weights
    do not."""
    model = get_model(base_params(params))
    try:
        state, base_source, own = _base_and_own_adapter(params, chosen, model)
    except CheckpointError as e:
        if "flags" not in str(e):  # not a mismatch of weights and flags
            raise
        raise with_flags_hint(e, params, chosen.state, chosen.source, stored) from e
    check_fits_flags(model, state, base_source, params, stored)
    model.load_state_dict(state)
    files = [Path(f) for f in params.get("adapter_file") or []]
    fingerprint = None
    if files or (own is not None and own.base_fingerprint is not None):
        fingerprint = base_fingerprint(model)
    for adapter in ([own] if own is not None else []) + [read_adapter_file(f) for f in files]:
        check_same_base(adapter, fingerprint, base_source)
        add_named_adapter(model, adapter)
    use_adapter(model, choose_adapter_name(params, model, chosen.source))
    return model


def model_from_state(params: Mapping[str, Any], state: Mapping[str, Tensor],
                     source: str, info: Mapping[str, Any] | None = None,
                     stored: Mapping[str, Any] | None = None) -> AsrModel:
    """:func:`model_from_checkpoint` of a state dict (and its checkpoint's info fields and
    stored model configuration)."""
    return model_from_checkpoint(params, SelectedCheckpoint(dict(state), source,
                                                            dict(info or {})), stored)


def describe_adapters(model: AsrModel) -> str:
    """``adapter 'x': lora, dim 8, targets encoder`` / ``adapters off`` / ``no adapters``."""
    config = installed_adapter_config(model)
    if config is not None:
        return config.describe()
    names = list(named_adapters(model))
    return f"adapters off ({', '.join(names)} held)" if names else "no adapters"


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
        return None, None  # select_checkpoint names what is missing
    stored = read_model_config(path, params["trust_checkpoint"])
    return stored, apply_model_config(params, stored, MODEL_KEYS, path)


def chosen_checkpoint_model(params: dict[str, Any]
                            ) -> tuple[AsrModel, SelectedCheckpoint, str | None]:
    """The model of the checkpoints the flags choose, its checkpoint, and the line for the
    log naming the model flags taken from it (None when none were): model flags not given
    on the command line come from the checkpoint, and ``params`` is updated."""
    stored, note = apply_checkpoint_config(params)
    chosen = select_checkpoint(params)
    return model_from_checkpoint(params, chosen, stored), chosen, note


def load_model_with_notes(params: dict[str, Any], device: torch.device | str = "cpu"
                          ) -> tuple[AsrModel, list[str]]:
    """The model chosen by the checkpoint flags, in eval mode on ``device`` (see
    :func:`chosen_checkpoint_model`), and the lines for the log that say what was taken,
    for a caller whose log is not set up yet."""
    model, chosen, note = chosen_checkpoint_model(params)
    notes = [note] if note else []
    notes.append(f"Using {chosen.source}; {describe_adapters(model)}; "
                 f"{sum(p.numel() for p in model.parameters())} parameters")
    return model.to(device).eval(), notes


def load_model(params: dict[str, Any], device: torch.device | str = "cpu") -> AsrModel:
    """:func:`load_model_with_notes`, its lines logged now."""
    model, notes = load_model_with_notes(params, device)
    for line in notes:
        logging.info(line)
    return model


def merged_lora_model(params: Mapping[str, Any], model: AsrModel) -> AsrModel:
    """A model built without adapters holding ``model``'s weights with its LoRA merged in
    (``merged_adapter`` records which), as icefall's zipformer_lora export hands the merged
    weights to a model built with --use-lora 0."""
    config = installed_adapter_config(model)
    base = get_model(base_params(params))
    base.load_state_dict(merged_state_dict(model))
    base.merged_adapter = config
    return base


def load_export_model(params: dict[str, Any]) -> tuple[AsrModel, str]:
    """The checkpoint model chosen by the flags, in eval mode on the CPU (model flags not
    given come from the checkpoint: ``params`` is updated), with the adapter in use baked
    in, LoRA merged into the weights, or (adapters off) the base model."""
    model, chosen, note = chosen_checkpoint_model(params)
    if note:
        logging.info(note)
    if lora_modules(model):
        model = merged_lora_model(params, model)
        logging.info(f"Merged {model.merged_adapter.describe()} into the weights")
    elif named_adapters(model) and installed_adapter_config(model) is None:
        logging.info(f"Left the adapters of {chosen.source} out of the export")
    return model.to("cpu").eval(), chosen.source

