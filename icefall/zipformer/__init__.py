"""Zipformer2 transducer with residual adapters, icefall-compatible.

Modules: scaling (primitives), subsampling (frontend), attention, layer, encoder,
adapters, lora (icefall's zipformer_lora), decoder, joiner, model (AsrModel), build
(get_model and its defaults).
"""

from icefall.zipformer.adapters import (
    Adapter,
    ResidualAdapter,
    adapter_parameter_names,
    adapter_parameters,
    adapter_state_dict,
    adapters_disabled,
    add_adapters,
    count_parameters,
    freeze_all_but_adapters,
    has_adapters,
    iter_adapters,
    load_adapter_state_dict,
    remove_adapters,
    set_adapter_training,
    set_adapters_enabled,
)
from icefall.zipformer.build import (
    MODEL_DEFAULTS,
    get_model,
    model_config,
)
from icefall.zipformer.lora import (
    LoRAActivationDropoutAndLinear,
    LoRALinear,
    add_lora,
    lora_modules,
    lora_parameters,
    lora_unmerged,
    lora_weight_aliases,
    merge_lora,
    merged_state_dict,
    unmerge_lora,
)
from icefall.zipformer.model import AsrModel

__all__ = [
    "MODEL_DEFAULTS", "Adapter", "AsrModel", "ResidualAdapter", "adapter_parameter_names",
    "adapter_parameters",
    "adapter_state_dict", "adapters_disabled", "add_adapters",
    "count_parameters", "freeze_all_but_adapters", "get_model",
    "has_adapters", "iter_adapters", "load_adapter_state_dict", "model_config", "remove_adapters",
    "set_adapter_training", "set_adapters_enabled",
    "LoRAActivationDropoutAndLinear", "LoRALinear", "add_lora", "lora_modules",
    "lora_parameters", "lora_unmerged", "lora_weight_aliases", "merge_lora",
    "merged_state_dict", "unmerge_lora",
]
