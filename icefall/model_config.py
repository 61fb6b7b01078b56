"""The model configuration a checkpoint stores, and flags that match a checkpoint.

The project's checkpoints keep the values :func:`icefall.zipformer.get_model` was built
from under ``params["model"]`` (:func:`icefall.zipformer.build.model_config`). train.py
(from ``--finetune-ckpt`` or the checkpoint it resumes), decode.py, export-onnx.py and
pretrained.py take the model flags from there, except those given on the command line,
which still win. icefall's own ``pretrained.pt`` stores no configuration: the flags'
defaults, icefall's published LibriSpeech Zipformer, apply.

When a checkpoint does not fit the model of the flags, the error says which flags would
fit: the stored configuration where there is one, otherwise what the weights' shapes tell
(:func:`infer_model_config`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, MutableMapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from icefall.checkpoint import CheckpointError, check_state_dict_fits, load_checkpoint_file
from icefall.zipformer.build import MODEL_DEFAULTS, PER_STACK_FLAGS

# What describes the network (taken from a base model for fine-tuning) ...
ARCHITECTURE_KEYS = (*PER_STACK_FLAGS, "pos_dim", "decoder_dim", "joiner_dim", "causal",
                     "chunk_size", "left_context_frames", "use_transducer", "use_ctc",
                     "context_size", "feature_dim")
# ... and what a fine-tuning run adds to it (taken when decoding or resuming that run).
ADAPTER_KEYS = ("adapter_dim", "lora_r")  # the switches stay the recipe's and the flags'
MODEL_KEYS = ARCHITECTURE_KEYS + ADAPTER_KEYS


def stored_model_config(data: Mapping[str, Any]) -> dict[str, Any] | None:
    """``params["model"]`` of a loaded checkpoint dict, or None (icefall's files)."""
    params = data.get("params")
    cfg = params.get("model") if isinstance(params, Mapping) else None
    return dict(cfg) if isinstance(cfg, Mapping) else None


def read_model_config(path: str | Path, allow_unsafe: bool = False) -> dict[str, Any] | None:
    """The configuration stored in the checkpoint ``path`` (None when it has none)."""
    return stored_model_config(load_checkpoint_file(path, allow_unsafe=allow_unsafe))


def flag_text(cfg: Mapping[str, Any], keys: Iterable[str]) -> str:
    """``--encoder-dim 96,128 --causal 0 ...`` for the ``keys`` of ``cfg`` it has."""
    parts = []
    for k in keys:
        if k in cfg:
            v = cfg[k]
            parts.append(f"--{k.replace('_', '-')} {int(v) if isinstance(v, bool) else v}")
    return " ".join(parts)


def apply_model_config(params: MutableMapping[str, Any], cfg: Mapping[str, Any] | None,
                       keys: Iterable[str], source: str | Path) -> str | None:
    """Sets ``params[k] = cfg[k]`` for each of ``keys`` not given on the command line.

    ``params["given_flags"]`` lists the flags given (the command line sets it); without it
    every flag counts as given and nothing changes (a library caller's params are kept).

    Returns:
      A line for the log naming the flags taken (those whose value changed), or None.
      The caller logs it once its logging is set up.
    """
    given = params.get("given_flags")
    if cfg is None or given is None:
        return None
    changed = [k for k in keys if k in cfg and k not in given and
               str(cfg[k]) != str(params.get(k, MODEL_DEFAULTS[k]))]
    for k in changed:
        params[k] = cfg[k]
    return f"Model flags from {source}: {flag_text(cfg, changed)}" if changed else None


def _shape(state: Mapping[str, Tensor], key: str, dim: int) -> int | None:
    value = state.get(key)
    return None if value is None or value.dim() <= dim else int(value.shape[dim])


def _stack_layers(state: Mapping[str, Tensor], i: int) -> tuple[str, int]:
    """(key prefix of layer 0, number of layers) of encoder stack ``i``."""
    for prefix in (f"encoder.encoders.{i}.layers.", f"encoder.encoders.{i}.encoder.layers."):
        layers = {int(m.group(1)) for k in state
                  if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
        if layers:
            return prefix + "0.", len(layers)
    return "", 0


def infer_model_config(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """The model flags that the shapes of a Zipformer state dict determine: stacks and
    their layers, dimensions, downsampling, kernels, decoder, joiner, CTC head, adapters.
    (Head counts and head dimensions are not determined by shapes alone and are left out.)
    """
    stacks = sorted({int(m.group(1)) for k in state
                     if (m := re.match(r"encoder\.encoders\.(\d+)\.", k))})
    per_stack: dict[str, list[int]] = {k: [] for k in (
        "num_encoder_layers", "encoder_dim", "feedforward_dim", "cnn_module_kernel",
        "downsampling_factor")}
    for i in stacks:
        layer0, count = _stack_layers(state, i)
        per_stack["num_encoder_layers"].append(count)
        per_stack["encoder_dim"].append(_shape(state, layer0 + "feed_forward1.in_proj.weight", 1))
        per_stack["feedforward_dim"].append(_shape(state, layer0 +
                                                   "feed_forward2.in_proj.weight", 0))
        per_stack["cnn_module_kernel"].append(
            _shape(state, layer0 + "conv_module1.depthwise_conv.weight", 2))
        per_stack["downsampling_factor"].append(
            _shape(state, f"encoder.encoders.{i}.downsample.bias", 0) or 1)
    cfg: dict[str, Any] = {k: ",".join(str(x) for x in v) for k, v in per_stack.items()
                           if v and None not in v}
    layer0 = _stack_layers(state, 0)[0]
    extra = {"pos_dim": _shape(state, layer0 + "self_attn_weights.linear_pos.weight", 1),
             "decoder_dim": _shape(state, "decoder.embedding.weight", 1),
             "context_size": _shape(state, "decoder.conv.weight", 2) or
             (1 if "decoder.embedding.weight" in state else None),
             "joiner_dim": _shape(state, "joiner.encoder_proj.weight", 0),
             "adapter_dim": next((_shape(state, k, 0) for k in state
                                  if k.endswith("adapter.in_proj.weight")), None)}
    cfg.update({k: v for k, v in extra.items() if v is not None})
    cfg["use_transducer"] = "joiner.output_linear.weight" in state
    cfg["use_ctc"] = any(k.startswith("ctc_output.") for k in state)
    return cfg


def matching_flags(params: Mapping[str, Any], state: Mapping[str, Tensor],
                   stored: Mapping[str, Any] | None) -> str:
    """The flags (of the stored configuration, else inferred from ``state``) whose values
    differ from ``params``: what would make the model fit. Empty when none differ."""
    cfg = stored if stored is not None else infer_model_config(state)
    keys = [k for k in MODEL_KEYS if k in cfg and str(cfg[k]) != str(params.get(k))
            and not (k == "adapter_dim" and stored is None and not params.get("use_adapters"))]
    return flag_text(cfg, keys)


def check_fits_flags(model: nn.Module, state: Mapping[str, Tensor], source: str | Path,
                     params: Mapping[str, Any], stored: Mapping[str, Any] | None,
                     allowed_missing: Iterable[str] = ()) -> None:
    """:func:`icefall.checkpoint.check_state_dict_fits`, whose error also names the flags
    that would match the checkpoint.

    Raises:
      CheckpointError: the first mismatching key and both shapes, then ``flags that match
        <source>: --encoder-dim ...``.
    """
    try:
        check_state_dict_fits(model, state, source, allowed_missing)
    except CheckpointError as e:
        raise with_flags_hint(e, params, state, source, stored) from e


def with_flags_hint(error: CheckpointError, params: Mapping[str, Any],
                    state: Mapping[str, Tensor], source: str | Path,
                    stored: Mapping[str, Any] | None) -> CheckpointError:
    """``error`` (a checkpoint that does not fit the model of the flags) followed by the
    flags that would match the checkpoint."""
    flags = matching_flags(params, state, stored)
    what = "stored in" if stored is not None else "inferred from the weights of"
    hint = f"; flags {what} {Path(source).name}: {flags}" if flags else ""
    return CheckpointError(f"{error}{hint}")
