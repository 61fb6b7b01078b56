"""Checkpoints in icefall's format, loadable with ``torch.load(..., weights_only=True)``.

A checkpoint is a dict with ``model`` (state dict), ``model_avg``, ``optimizer``,
``scheduler``, ``grad_scaler``, ``sampler``, ``params`` (plain values: the model
construction arguments under ``params["model"]`` plus training counters) and ``rng``.
Files are written atomically: a temporary file in the same folder, then a rename.

Files holding pickled Python objects (icefall's own ``epoch-N.pt`` stores ``params`` as
an AttributeDict) are refused with an explanation unless the caller opts in for files
they trust; icefall's ``pretrained.pt`` (``{"model": state_dict}``) loads safely.
"""

from __future__ import annotations

import glob
import logging
import pickle
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from icefall.files import atomic_write
from icefall.pickle_scan import dangerous_globals, pickle_globals, untrusted_globals


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or does not fit the model."""


def to_cpu(value: Any) -> Any:
    """``value`` with every tensor in it (in dicts, lists and tuples) copied to the CPU."""
    if isinstance(value, Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_cpu(v) for v in value)
    return value


def save_checkpoint(filename: str | Path, **content: Any) -> None:
    """Saves ``content`` (plain types and tensors only) atomically to ``filename``.

    Values that are modules, optimizers, schedulers or samplers are replaced by their
    ``state_dict()``; None values are kept as None. Tensors are saved from CPU copies, so
    a checkpoint written on a GPU loads on a machine without one (and the reverse).
    """
    filename = Path(filename)
    data = to_cpu({k: (v.state_dict() if hasattr(v, "state_dict") else v)
                   for k, v in content.items()})
    filename.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(filename, lambda tmp: torch.save(data, tmp))


def load_checkpoint_file(filename: str | Path, allow_unsafe: bool = False) -> dict[str, Any]:
    """Reads a checkpoint with ``weights_only=True``.

    Args:
      filename: the .pt file.
      allow_unsafe: also accept files that need full unpickling (only for trusted files).
    Raises:
      CheckpointError: the file is missing, corrupt, not a dict, or holds Python objects
        and ``allow_unsafe`` is False.
    """
    path = Path(filename)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if re.search(r"GLOBAL ([\w.]+)", str(e)) is None:  # the file itself is broken
            raise CheckpointError(f"cannot read checkpoint {path}: not a valid torch "
                                  "checkpoint file") from e
        _check_may_unpickle(path, allow_unsafe)
        data = _load_trusted(path)
    except Exception as e:  # noqa: BLE001 - any read/format failure is reported the same way
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a checkpoint dict (got {type(data)})")
    return data


def _check_may_unpickle(path: Path, allow_unsafe: bool) -> None:
    """Raises CheckpointError unless full unpickling of ``path`` is allowed: the user opted
    in, and its pickle imports nothing that runs commands, touches files or evaluates code
    (such a file is refused even then)."""
    names = pickle_globals(path)
    dangerous = dangerous_globals(names)
    if dangerous:
        raise CheckpointError(
            f"refusing {path}: unpickling it would call {', '.join(dangerous[:5])}, which no "
            "checkpoint needs (it can run commands or touch files); do not load this file")
    if not allow_unsafe:
        listed = ", ".join(untrusted_globals(names)[:6]) or "Python objects"
        raise CheckpointError(
            f"{path} stores Python objects ({listed}), so it only loads with full "
            "unpickling (icefall's own epoch-N.pt keeps params as an AttributeDict). If you "
            "trust the file, pass --trust-checkpoint 1, or keep only its model weights: "
            "torch.save({'model': ckpt['model']}, ...)")


def _load_trusted(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)  # user opted in
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from e


def model_state_from(data: Mapping[str, Any], path: str | Path, key: str = "model"
                     ) -> dict[str, Tensor]:
    """The state dict stored under ``key`` (icefall's files keep the model under "model")."""
    state = data.get(key)
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path} has no '{key}' state dict (keys: {sorted(data)})")
    return dict(state)


def strip_ddp_prefix(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Removes the ``module.`` prefix that DistributedDataParallel adds to every key."""
    if state and all(k.startswith("module.") for k in state):
        logging.info("Loading a checkpoint saved from a DDP-wrapped model")
        return {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def check_state_dict_fits(model: nn.Module, state: Mapping[str, Tensor], path: str | Path,
                          allowed_missing: Iterable[str] = ()) -> None:
    """Raises CheckpointError naming the first key whose shape differs, or that is
    missing (other than ``allowed_missing``) or unexpected."""
    own = model.state_dict()
    for key, value in state.items():
        if key not in own:
            raise CheckpointError(f"{path}: unexpected key '{key}' (not in the model built "
                                  "from the given flags)")
        if tuple(value.shape) != tuple(own[key].shape):
            raise CheckpointError(f"{path}: key '{key}' has shape {tuple(value.shape)} in the "
                                  f"checkpoint but {tuple(own[key].shape)} in the model built "
                                  "from the given flags")
    allowed = set(allowed_missing)
    missing = [k for k in own if k not in state and k not in allowed]
    if missing:
        raise CheckpointError(f"{path}: missing key '{missing[0]}' ({len(missing)} missing); "
                              "do the model flags match the checkpoint?")


def load_model_state(model: nn.Module, filename: str | Path, key: str = "model",
                     allowed_missing: Iterable[str] = (), allow_unsafe: bool = False
                     ) -> dict[str, Any]:
    """Loads ``filename``'s ``key`` state dict into model after checking it fits.

    Returns:
      The whole checkpoint dict (for optimizer, scheduler, ... state).
    """
    data = load_checkpoint_file(filename, allow_unsafe=allow_unsafe)
    state = model_state_from(data, filename, key)
    allowed = list(allowed_missing)
    check_state_dict_fits(model, state, filename, allowed)
    model.load_state_dict(state, strict=not allowed)
    return data


def average_state_dicts(states: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Element-wise mean of state dicts (floating tensors; others taken from the first).

    Sums in float64 so that averaging many checkpoints adds no rounding drift.
    """
    if not states:
        raise ValueError("no state dicts to average")
    out: dict[str, Tensor] = {}
    for key, first in states[0].items():
        if not first.is_floating_point():
            out[key] = first.clone()
            continue
        acc = torch.zeros(first.shape, dtype=torch.float64)
        for s in states:
            acc += s[key].double()
        out[key] = (acc / len(states)).to(first.dtype)
    return out


def average_checkpoints(filenames: Sequence[str | Path], key: str = "model",
                        allow_unsafe: bool = False) -> dict[str, Tensor]:
    """Mean of the ``key`` state dicts of ``filenames`` (icefall's --avg without
    --use-averaged-model)."""
    states = [model_state_from(load_checkpoint_file(f, allow_unsafe), f, key)
              for f in filenames]
    return average_state_dicts(states)


def average_checkpoints_with_averaged_model(filename_start: str | Path,
                                            filename_end: str | Path,
                                            allow_unsafe: bool = False) -> dict[str, Tensor]:
    """The average of the model over the batches between two checkpoints, from their
    running averages (icefall's --use-averaged-model 1):

      avg = (avg_end * k_end - avg_start * k_start) / (k_end - k_start)

    where k is the number of updates each running average holds: ``batch_idx_train //
    average_period`` (both stored in the checkpoint's params). icefall weighs by the batch
    counts n instead, which is the same when they are multiples of the period, and
    extrapolates when they are not (a start checkpoint before the first update, as short
    epochs give); a file without ``average_period`` is weighed by n as icefall does.

    Raises:
      CheckpointError: no update of the running average falls between the two checkpoints
        (the result would be the start's stale average, or an extrapolation).
    """
    start = load_checkpoint_file(filename_start, allow_unsafe)
    end = load_checkpoint_file(filename_end, allow_unsafe)
    return average_loaded_with_averaged_model(start, end, filename_start, filename_end)


def average_loaded_with_averaged_model(start: Mapping[str, Any], end: Mapping[str, Any],
                                       filename_start: str | Path, filename_end: str | Path
                                       ) -> dict[str, Tensor]:
    """:func:`average_checkpoints_with_averaged_model` of two checkpoints already read."""
    k_start, k_end = _average_updates(start, end, filename_start, filename_end)
    avg_start = model_state_from(start, filename_start, "model_avg")
    avg_end = model_state_from(end, filename_end, "model_avg")
    weight_end, weight_start = k_end / (k_end - k_start), -k_start / (k_end - k_start)
    out: dict[str, Tensor] = {}
    for k, v in avg_end.items():
        if v.is_floating_point():
            out[k] = (v.double() * weight_end + avg_start[k].double() * weight_start).to(v.dtype)
        else:
            out[k] = v.clone()
    return out


def _average_updates(start: Mapping[str, Any], end: Mapping[str, Any], path_start: str | Path,
                     path_end: str | Path) -> tuple[int, int]:
    """(k_start, k_end): how many updates each running average holds (see above)."""
    p_start, p_end = _params(start, path_start), _params(end, path_end)
    n_start, n_end = int(p_start["batch_idx_train"]), int(p_end["batch_idx_train"])
    if n_end <= n_start:
        raise CheckpointError(f"{path_end} (batch {n_end}) is not later than "
                              f"{path_start} (batch {n_start})")
    period = p_end.get("average_period")
    if not period:
        return n_start, n_end
    k_start, k_end = n_start // int(period), n_end // int(period)
    if k_end <= k_start:
        raise CheckpointError(
            f"--use-averaged-model 1: the running average is updated every "
            f"--average-period {period} batches, and none falls between {path_start} (batch "
            f"{n_start}) and {path_end} (batch {n_end}); use --use-averaged-model 0, or "
            "checkpoints further apart (a larger --avg)")
    return k_start, k_end


def _params(data: Mapping[str, Any], path: str | Path) -> Mapping[str, Any]:
    params = data.get("params")
    if not isinstance(params, Mapping) and "batch_idx_train" in data:
        params = data  # icefall's own checkpoints keep their params at the top level
    if not isinstance(params, Mapping) or "batch_idx_train" not in params:
        raise CheckpointError(f"{path} has no params['batch_idx_train']; it was not written "
                              "by train.py with --average-period")
    return params


def update_averaged_model(model_avg: nn.Module, model: nn.Module, batch_idx_train: int,
                          average_period: int) -> None:
    """Running average of the model over all batches so far, updated every
    ``average_period`` batches: avg = avg * (1 - w) + cur * w, w = period / batch.

    ``model_avg`` may live on another device and in another dtype than ``model`` (training
    keeps a float64 average on the CPU while the model trains on a GPU): each tensor of
    ``model`` is copied to the average's device and dtype.

    Frozen parameters of ``model`` (the base under adapters) are left as they are: the
    average of a constant is that constant. A tensor listed under two names (LoRA's
    ``out_proj.l.weight`` is ``out_proj.weight``) is updated once. Keep ``model_avg``
    unmerged (never in eval mode), so that its state dict holds its parameters.
    """
    weight_cur = average_period / batch_idx_train
    cur = model.state_dict()
    frozen = {n for n, p in model.named_parameters(remove_duplicate=False)
              if not p.requires_grad}
    seen: set[int] = set()
    with torch.no_grad():
        for k, v in model_avg.state_dict().items():
            if not v.is_floating_point() or k in frozen or v.data_ptr() in seen:
                continue
            if v.numel():
                seen.add(v.data_ptr())
            v.mul_(1.0 - weight_cur).add_(cur[k].to(device=v.device, dtype=v.dtype),
                                          alpha=weight_cur)


_CKPT_RE = re.compile(r"checkpoint-(\d+)\.pt$")


def find_checkpoints(exp_dir: str | Path, iteration: int = 0) -> list[Path]:
    """``checkpoint-B.pt`` files in exp_dir, newest (largest B) first.

    With ``iteration > 0`` only those with B <= iteration, as ``--iter`` selects them.
    """
    found = []
    for f in glob.glob(str(Path(exp_dir) / "checkpoint-[0-9]*.pt")):
        m = _CKPT_RE.search(f)
        if m:
            found.append((int(m.group(1)), Path(f)))
    found.sort(reverse=True)
    if iteration > 0:
        found = [(b, f) for b, f in found if b <= iteration]
    return [f for _, f in found]


def remove_checkpoints(exp_dir: str | Path, keep_last_k: int) -> list[Path]:
    """Deletes all but the ``keep_last_k`` newest ``checkpoint-B.pt``; returns the removed."""
    if keep_last_k <= 0:
        return []
    old = find_checkpoints(exp_dir)[keep_last_k:]
    for f in old:
        f.unlink(missing_ok=True)
        logging.info(f"Removed {f}")
    return old
