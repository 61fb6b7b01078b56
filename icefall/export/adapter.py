"""export-adapter.py: an adapter of the chosen (averaged) checkpoints as ``adapter-<name>.pt``.

The checkpoints are chosen and averaged as decode.py chooses them (``--epoch/--iter --avg
--use-averaged-model``; whole-model or adapter-only checkpoints; :mod:`icefall.inference`),
the adapter in use is written with its configuration and the fingerprint of the base it
sits on (:mod:`icefall.adapter_files`): a few MB, which decode.py, export-onnx.py and
pretrained.py load with ``--adapter-file`` on top of that base.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from icefall.adapter_files import adapter_file_name, base_fingerprint, save_adapter_file
from icefall.export.onnx import set_dims_from_tokens
from icefall.inference import base_params, chosen_checkpoint_model
from icefall.zipformer import installed_adapter_config, model_config


def export_adapter(params: Mapping[str, Any]) -> Path:
    """Writes the adapter in use in the model the checkpoint flags choose to
    ``params["adapter_out"]`` (default ``<exp-dir>/adapter-<name>.pt``); returns the path.

    Raises:
      ValueError: with adapters off, or checkpoints without adapters.
    """
    params = dict(params)
    set_dims_from_tokens(params, params["tokens"])
    if not (params.get("use_adapters") or params.get("use_lora")):
        raise ValueError("export-adapter.py writes the adapter in use: drop --use-adapters 0 "
                         "/ --use-lora 0")
    model, chosen, note = chosen_checkpoint_model(params)  # flags not given: the stored
    if note:
        logging.info(note)
    config = installed_adapter_config(model)
    if params.get("new_adapter_name"):
        config = dataclasses.replace(config, name=params["new_adapter_name"])
    out = Path(params.get("adapter_out") or
               Path(params["exp_dir"]) / adapter_file_name(config.name))
    out.parent.mkdir(parents=True, exist_ok=True)
    base = chosen.info.get("base_checkpoint") or chosen.source
    save_adapter_file(out, model, config, base_fingerprint(model), base,
                      model_config(base_params(params)))
    size = out.stat().st_size
    logging.info(f"Wrote {out} ({config.describe()}; {size / 1e6:.2f} MB) from {chosen.source}")
    return out
