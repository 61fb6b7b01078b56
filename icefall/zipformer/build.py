"""``get_model(params)`` and the model-construction values it reads (``MODEL_DEFAULTS``).

Names and defaults are icefall's flags' (egs/librispeech/ASR/zipformer_adapter/train.py),
so recipes and checkpoints move between the two toolkits unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from icefall.utils import AttributeDict, to_int_tuple
from icefall.zipformer.decoder import Decoder
from icefall.zipformer.encoder import Zipformer2
from icefall.zipformer.joiner import Joiner
from icefall.zipformer.model import AsrModel
from icefall.zipformer.placement import adapter_config_from_params, install_adapter
from icefall.zipformer.scaling import ScheduledFloat
from icefall.zipformer.subsampling import Conv2dSubsampling

# Per-stack flags: a comma-separated string with one value or one per stack.
PER_STACK_FLAGS = (
    "num_encoder_layers", "downsampling_factor", "feedforward_dim", "num_heads",
    "encoder_dim", "query_head_dim", "value_head_dim", "pos_head_dim",
    "encoder_unmasked_dim", "cnn_module_kernel",
)

# Every value get_model reads, with icefall's defaults. Checkpoints store these.
MODEL_DEFAULTS: dict[str, Any] = {
    "num_encoder_layers": "2,2,3,4,3,2",
    "downsampling_factor": "1,2,4,8,4,2",
    "feedforward_dim": "512,768,1024,1536,1024,768",
    "num_heads": "4,4,4,8,4,4",
    "encoder_dim": "192,256,384,512,384,256",
    "query_head_dim": "32",
    "value_head_dim": "12",
    "pos_head_dim": "4",
    "pos_dim": 48,
    "encoder_unmasked_dim": "192,192,256,256,256,192",
    "cnn_module_kernel": "31,31,15,15,15,31",
    "decoder_dim": 512,
    "joiner_dim": 512,
    "causal": False,
    "chunk_size": "16,32,64,-1",
    "left_context_frames": "64,128,256,-1",
    "use_transducer": True,
    "use_ctc": False,
    "use_adapters": False,
    "adapter_dim": 16,
    # zipformer_lora: LoRA of rank lora_r when use_lora (and lora_r > 0, as in icefall).
    "use_lora": False,
    "lora_r": 0,
    # The adapter's kind (with use_adapters), where it goes and its name
    # (icefall.zipformer.placement).
    "adapter_kind": "residual",
    "adapter_targets": "encoder",
    "adapter_name": "default",
    "feature_dim": 80,
    "vocab_size": 500,
    "blank_id": 0,
    "context_size": 2,
}


def model_config(params: Mapping[str, Any] | object) -> dict[str, Any]:
    """The model-construction values of ``params`` as plain types (for checkpoints).

    Missing keys (and None values) take icefall's defaults.
    """
    src = params if isinstance(params, Mapping) else vars(params)
    cfg = {}
    for key, default in MODEL_DEFAULTS.items():
        value = src.get(key)
        value = default if value is None else value
        cfg[key] = value if isinstance(value, (str, int, float, bool)) else str(value)
    return cfg


def _tuple(cfg: Mapping[str, Any], key: str) -> tuple[int, ...]:
    return to_int_tuple(cfg[key], key)


def get_encoder_model(cfg: Mapping[str, Any]) -> Zipformer2:
    """The Zipformer2 encoder described by ``cfg`` (see MODEL_DEFAULTS)."""
    return Zipformer2(
        output_downsampling_factor=2,
        downsampling_factor=_tuple(cfg, "downsampling_factor"),
        num_encoder_layers=_tuple(cfg, "num_encoder_layers"),
        encoder_dim=_tuple(cfg, "encoder_dim"),
        encoder_unmasked_dim=_tuple(cfg, "encoder_unmasked_dim"),
        query_head_dim=_tuple(cfg, "query_head_dim"),
        pos_head_dim=_tuple(cfg, "pos_head_dim"),
        value_head_dim=_tuple(cfg, "value_head_dim"),
        pos_dim=int(cfg["pos_dim"]),
        num_heads=_tuple(cfg, "num_heads"),
        feedforward_dim=_tuple(cfg, "feedforward_dim"),
        cnn_module_kernel=_tuple(cfg, "cnn_module_kernel"),
        dropout=ScheduledFloat((0.0, 0.3), (20000.0, 0.1)),
        warmup_batches=4000.0,
        causal=bool(cfg["causal"]),
        chunk_size=_tuple(cfg, "chunk_size"),
        left_context_frames=_tuple(cfg, "left_context_frames"),
    )


def get_model(params: Mapping[str, Any] | object) -> AsrModel:
    """Builds the transducer from icefall-named values (an AttributeDict, dict or Namespace).

    With ``use_adapters`` true, adapters of ``adapter_kind`` (residual: the four slots of
    every encoder layer) and ``adapter_dim`` at ``adapter_targets``; with ``use_lora`` true
    and ``lora_r`` > 0, LoRA of rank ``lora_r`` as icefall's zipformer_lora (see
    :func:`icefall.zipformer.placement.adapter_config_from_params`).

    Raises:
      ValueError: for a negative ``lora_r``, both kinds at once, or targets naming nothing.
    """
    cfg = AttributeDict(model_config(params))
    adapter = adapter_config_from_params(cfg)
    encoder_dims = _tuple(cfg, "encoder_dim")
    encoder_embed = Conv2dSubsampling(in_channels=int(cfg.feature_dim),
                                      out_channels=encoder_dims[0],
                                      dropout=ScheduledFloat((0.0, 0.3), (20000.0, 0.1)))
    encoder = get_encoder_model(cfg)
    decoder = joiner = None
    if cfg.use_transducer:
        decoder = Decoder(vocab_size=int(cfg.vocab_size), decoder_dim=int(cfg.decoder_dim),
                          blank_id=int(cfg.blank_id), context_size=int(cfg.context_size))
        joiner = Joiner(encoder_dim=max(encoder_dims), decoder_dim=int(cfg.decoder_dim),
                        joiner_dim=int(cfg.joiner_dim), vocab_size=int(cfg.vocab_size))
    model = AsrModel(encoder_embed=encoder_embed, encoder=encoder, decoder=decoder,
                     joiner=joiner, encoder_dim=max(encoder_dims),
                     decoder_dim=int(cfg.decoder_dim), vocab_size=int(cfg.vocab_size),
                     use_transducer=bool(cfg.use_transducer), use_ctc=bool(cfg.use_ctc))
    if adapter is not None:
        install_adapter(model, adapter)
    return model
