"""Zipformer2 transducer with adapters, icefall-compatible.

Modules: scaling (primitives), subsampling (frontend), attention, layer, encoder,
adapter_kinds (base classes and the registry of kinds), adapters (the residual kind and the
helpers for every kind), lora (icefall's zipformer_lora), placement (--adapter-targets,
installing one adapter), named (several named adapters in one model), decoder, joiner, model
(AsrModel), build (get_model and its defaults).
"""

from icefall.zipformer.adapter_kinds import (
    Adapter,
    OutputAdapter,
    WrapperAdapter,
    adapter_kind,
    adapter_kinds,
    register_adapter_kind,
)
from icefall.zipformer.adapters import (
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
    LoRAEmbedding,
    LoRALayer,
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
from icefall.zipformer.named import (
    NamedAdapter,
    active_adapter,
    add_named_adapter,
    named_adapters,
    use_adapter,
)
from icefall.zipformer.placement import (
    DEFAULT_ADAPTER_NAME,
    PRESETS,
    AdapterConfig,
    adapter_config_from_params,
    infer_adapter_config,
    install_adapter,
    installed_adapter_config,
    output_adapter_of,
    resolve_sites,
    uninstall_adapters,
)

__all__ = [
    "MODEL_DEFAULTS", "Adapter", "AsrModel", "OutputAdapter", "ResidualAdapter",
    "WrapperAdapter", "adapter_kind", "adapter_kinds", "register_adapter_kind",
    "adapter_parameter_names", "adapter_parameters",
    "adapter_state_dict", "adapters_disabled", "add_adapters",
    "count_parameters", "freeze_all_but_adapters", "get_model",
    "has_adapters", "iter_adapters", "load_adapter_state_dict", "model_config", "remove_adapters",
    "set_adapter_training", "set_adapters_enabled",
    "LoRAActivationDropoutAndLinear", "LoRAEmbedding", "LoRALayer", "LoRALinear", "add_lora",
    "lora_modules", "lora_parameters", "lora_unmerged", "lora_weight_aliases", "merge_lora",
    "merged_state_dict", "unmerge_lora",
    "NamedAdapter", "active_adapter", "add_named_adapter", "named_adapters", "use_adapter",
    "DEFAULT_ADAPTER_NAME", "PRESETS", "AdapterConfig", "adapter_config_from_params",
    "infer_adapter_config", "install_adapter", "installed_adapter_config", "output_adapter_of",
    "resolve_sites", "uninstall_adapters",
]
