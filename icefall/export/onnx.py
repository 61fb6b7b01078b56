"""ONNX export of the transducer in the layout sherpa-onnx reads (``export-onnx.py``).

Three files, as icefall's ``zipformer/export-onnx.py`` writes them and sherpa-onnx's offline
transducer reads them (``model_type`` "transducer", the zipformer2 encoder):

- ``encoder-<tag>.onnx``: inputs ``x`` (N, T, 80) float32 and ``x_lens`` (N,) int64;
  outputs ``encoder_out`` (N, T', joiner_dim), the joiner's ``encoder_proj`` already
  applied, and ``encoder_out_lens`` (N,) int64; N and T dynamic. Metadata ``model_type``
  = ``zipformer2``, ``version``, ``model_author``, ``comment`` (and informative extras).
- ``decoder-<tag>.onnx``: input ``y`` (N, context_size) int64 (-1 is the empty context);
  output ``decoder_out`` (N, joiner_dim), ``decoder_proj`` applied. Metadata
  ``context_size`` and ``vocab_size``, which sherpa-onnx requires.
- ``joiner-<tag>.onnx``: inputs ``encoder_out`` and ``decoder_out`` (N, joiner_dim);
  output ``logit`` (N, vocab_size). Metadata ``joiner_dim``.

plus ``.int8.onnx`` versions (ONNX Runtime dynamic quantisation of the weights of MatMul,
and of the decoder's embedding Gather, as icefall's adapter recipe does) and ``tokens.txt``.
``<tag>`` is icefall's export tag, ``epoch-E-avg-N`` or ``iter-B-avg-N``. Opset 13, the
TorchScript exporter (``dynamo=False``).

Adapters: the adapter in use (``--use-adapters 1``, ``--adapter-file``, ``--adapter-name``;
:mod:`icefall.inference`) is baked into the graphs (an output adapter on the decoder or the
joiner's projections goes into those graphs); LoRA is merged into the weights of a model
built without it, as icefall's zipformer_lora export does, so the graphs and their size are
the base model's. With adapters off (``--use-adapters 0``) nothing is installed: the graphs
and weights are the base model's, even from an adapter checkpoint. The encoder's metadata
says which adapter is in (``adapters``, ``adapter_name``). Causal models export their eval
behaviour (the first chunk size and left context, utterances shorter than a chunk as one
chunk).

Dimension legend: N = batch, T = feature frames, T' = encoder frames, C = encoder output
dim, D = decoder dim, J = joiner dim, V = vocab size, K = decoder context size.
"""

from __future__ import annotations

import io
import logging
import shutil
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import Tensor, nn

from icefall.files import StagedFiles, atomic_write_bytes, temporary_path
from icefall.inference import checkpoint_suffix, load_export_model
from icefall.token_table import set_dims_from_tokens
from icefall.utils import to_int_tuple
from icefall.zipformer import installed_adapter_config, iter_adapters
from icefall.zipformer.model import AsrModel

OPSET_VERSION = 13
# The input the encoder is traced with; every other batch size and length works too.
EXPORT_BATCH, EXPORT_FRAMES = 1, 100
MODEL_AUTHOR = "zipformer-adapter"


class OnnxEncoder(nn.Module):
    """Frontend + Zipformer2 + the joiner's encoder projection.

    forward: x (N, T, F) float32, x_lens (N,) int64 -> encoder_out (N, T', J),
    encoder_out_lens (N,).
    """

    def __init__(self, encoder_embed: nn.Module, encoder: nn.Module,
                 encoder_proj: nn.Module) -> None:
        super().__init__()
        self.encoder_embed = encoder_embed
        self.encoder = encoder
        self.encoder_proj = encoder_proj

    def forward(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
        x, x_lens = self.encoder_embed(x, x_lens)  # (N, T'', C0)
        # The padding mask from traced sizes (no Python ints that would freeze the length).
        mask = torch.arange(x.shape[1], device=x.device).unsqueeze(0) >= x_lens.unsqueeze(1)
        out, out_lens = self.encoder(x.permute(1, 0, 2), x_lens, mask)  # (T', N, C)
        return self.encoder_proj(out.permute(1, 0, 2)), out_lens


class OnnxDecoder(nn.Module):
    """Stateless decoder + the joiner's decoder projection.

    forward: y (N, K) int64 -> (N, J).
    """

    def __init__(self, decoder: nn.Module, decoder_proj: nn.Module) -> None:
        super().__init__()
        self.decoder = decoder
        self.decoder_proj = decoder_proj

    def forward(self, y: Tensor) -> Tensor:
        return self.decoder_proj(self.decoder(y, need_pad=False).squeeze(1))


class OnnxJoiner(nn.Module):
    """The joiner on projected inputs: (N, J), (N, J) -> logit (N, V)."""

    def __init__(self, output_linear: nn.Module) -> None:
        super().__init__()
        self.output_linear = output_linear

    def forward(self, encoder_out: Tensor, decoder_out: Tensor) -> Tensor:
        return self.output_linear(torch.tanh(encoder_out + decoder_out))


class OnnxCtcModel(nn.Module):
    """Frontend + Zipformer2 + CTC head (icefall's export-onnx-ctc.py model).

    forward: x (N, T, F) float32, x_lens (N,) int64 -> log_probs (N, T', V),
    log_probs_len (N,).
    """

    def __init__(self, encoder_embed: nn.Module, encoder: nn.Module,
                 ctc_output: nn.Module) -> None:
        super().__init__()
        self.encoder = OnnxEncoder(encoder_embed, encoder, nn.Identity())
        self.ctc_output = ctc_output

    def forward(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
        encoder_out, lens = self.encoder(x, x_lens)  # (N, T', C)
        return self.ctc_output(encoder_out), lens


@dataclass(frozen=True)
class ExportedFiles:
    """Paths written by :func:`export_transducer`."""

    encoder: Path
    decoder: Path
    joiner: Path
    encoder_int8: Path | None = None
    decoder_int8: Path | None = None
    joiner_int8: Path | None = None


# ---------------------------------------------------------------------------
# Model preparation
# ---------------------------------------------------------------------------


def adapter_metadata(model: AsrModel) -> dict[str, str]:
    """``adapters`` (what is in the graphs: ``8 residual adapters, dim 8``, ``lora rank 8
    merged into the weights``, ``none``) and, with one, ``adapter_name``."""
    config = installed_adapter_config(model)
    merged = getattr(model, "merged_adapter", None)
    if config is not None:
        count = sum(1 for _, a in iter_adapters(model) if a.enabled)
        where = "" if config.targets == ("encoder",) else f" on {','.join(config.targets)}"
        return {"adapters": f"{count} {config.kind} adapters, dim {config.dim}{where}",
                "adapter_name": config.name}
    if merged is not None:
        return {"adapters": f"{merged.kind} rank {merged.dim} on {','.join(merged.targets)} "
                            "merged into the weights", "adapter_name": merged.name}
    return {"adapters": "none"}


def encoder_metadata(params: Mapping[str, Any], model: AsrModel) -> dict[str, str]:
    """The encoder's metadata: what sherpa-onnx reads plus what the model is."""
    meta = {"model_type": "zipformer2", "version": "1", "model_author": MODEL_AUTHOR,
            "comment": "non-streaming zipformer2",
            "feature_dim": str(model.encoder_embed.in_channels), **adapter_metadata(model)}
    if params.get("causal"):
        chunk = to_int_tuple(params["chunk_size"], "chunk_size")[0]
        left = to_int_tuple(params["left_context_frames"], "left_context_frames")[0]
        meta["comment"] = (f"non-streaming export of a causal zipformer2 (chunk {chunk}, "
                           f"left context {left} frames)")
        meta.update(causal="1", chunk_size=str(chunk), left_context_frames=str(left))
    return meta


# ---------------------------------------------------------------------------
# Writing ONNX files
# ---------------------------------------------------------------------------


def _trace_to_onnx(module: nn.Module, args: tuple[Tensor, ...], input_names: list[str],
                   output_names: list[str], dynamic_axes: dict[str, dict[int, str]],
                   opset: int) -> onnx.ModelProto:
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        torch.onnx.export(module.eval(), args, buf, opset_version=opset,
                          input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes, dynamo=False)
    return onnx.load_from_string(buf.getvalue())


def save_with_metadata(proto: onnx.ModelProto, path: Path, metadata: Mapping[str, str]) -> None:
    """Adds ``metadata`` (replacing same-named entries) and writes ``path`` atomically."""
    keep = [(p.key, p.value) for p in proto.metadata_props if p.key not in metadata]
    del proto.metadata_props[:]
    for key, value in [*keep, *metadata.items()]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, str(value)
    atomic_write_bytes(path, proto.SerializeToString())


def export_encoder(model: AsrModel, path: Path, metadata: Mapping[str, str],
                   opset: int = OPSET_VERSION) -> None:
    """encoder-<tag>.onnx: x (N, T, F), x_lens (N,) -> encoder_out (N, T', J), lens (N,)."""
    wrapper = OnnxEncoder(model.encoder_embed, model.encoder, model.joiner.encoder_proj)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(EXPORT_BATCH, EXPORT_FRAMES, model.encoder_embed.in_channels, generator=g)
    x_lens = torch.full((EXPORT_BATCH,), EXPORT_FRAMES, dtype=torch.int64)
    proto = _trace_to_onnx(wrapper, (x, x_lens), ["x", "x_lens"],
                           ["encoder_out", "encoder_out_lens"],
                           {"x": {0: "N", 1: "T"}, "x_lens": {0: "N"},
                            "encoder_out": {0: "N", 1: "T"}, "encoder_out_lens": {0: "N"}},
                           opset)
    save_with_metadata(proto, path, metadata)


def export_decoder(model: AsrModel, path: Path, opset: int = OPSET_VERSION) -> None:
    """decoder-<tag>.onnx: y (N, K) int64 -> decoder_out (N, J); metadata context_size,
    vocab_size."""
    decoder = model.decoder
    y = torch.zeros(10, decoder.context_size, dtype=torch.int64)
    y[:, 0] = -1  # trace with the start context too (id -1 embeds to zero)
    proto = _trace_to_onnx(OnnxDecoder(decoder, model.joiner.decoder_proj), (y,), ["y"],
                           ["decoder_out"], {"y": {0: "N"}, "decoder_out": {0: "N"}}, opset)
    save_with_metadata(proto, path, {"context_size": str(decoder.context_size),
                                     "vocab_size": str(decoder.vocab_size)})


def export_joiner(model: AsrModel, path: Path, opset: int = OPSET_VERSION) -> None:
    """joiner-<tag>.onnx: encoder_out, decoder_out (N, J) -> logit (N, V); metadata
    joiner_dim."""
    output_linear = model.joiner.output_linear
    joiner_dim = output_linear.weight.shape[1]
    g = torch.Generator().manual_seed(0)
    enc, dec = torch.rand(11, joiner_dim, generator=g), torch.rand(11, joiner_dim, generator=g)
    proto = _trace_to_onnx(OnnxJoiner(output_linear), (enc, dec),
                           ["encoder_out", "decoder_out"], ["logit"],
                           {"encoder_out": {0: "N"}, "decoder_out": {0: "N"},
                            "logit": {0: "N"}}, opset)
    save_with_metadata(proto, path, {"joiner_dim": str(joiner_dim)})


class _DropPreprocessingAdvice(logging.Filter):
    """Drops ONNX Runtime's advisory "consider pre-processing" warning, printed for every
    model (icefall quantises without that optional pass too)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def quantize_int8(src: Path, dst: Path, op_types: list[str]) -> None:
    """ONNX Runtime dynamic quantisation (int8 weights of ``op_types``), written atomically;
    ``src``'s metadata is kept."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = temporary_path(dst)  # keeps the .onnx suffix
    root = logging.getLogger()
    quiet, level = _DropPreprocessingAdvice(), root.level
    root.addFilter(quiet)
    # ONNX Runtime's quantiser logs a line per tensor it leaves alone ("Quantization
    # parameters for tensor ... not specified", "Ignore MatMul due to non constant B") on
    # the root logger: only its warnings are kept.
    root.setLevel(max(level, logging.WARNING))
    try:
        quantize_dynamic(model_input=str(src), model_output=str(tmp),
                         op_types_to_quantize=op_types, weight_type=QuantType.QInt8)
        proto = onnx.load(str(tmp))
        meta = {p.key: p.value for p in onnx.load(str(src), load_external_data=False)
                .metadata_props}
        save_with_metadata(proto, dst, meta)
    finally:
        root.setLevel(level)
        root.removeFilter(quiet)
        tmp.unlink(missing_ok=True)


# Writes a model's encoder file: (model, path, metadata, opset) -> None.
EncoderExport = Callable[[AsrModel, Path, Mapping[str, str], int], None]


def export_transducer(model: AsrModel, out_dir: Path, tag: str,
                      encoder_meta: Mapping[str, str], int8: bool = True,
                      opset: int = OPSET_VERSION, extra: Mapping[str, Path] | None = None,
                      encoder_export: EncoderExport | None = None) -> ExportedFiles:
    """Writes encoder/decoder/joiner-<tag>.onnx (and .int8.onnx) into ``out_dir``, and
    copies each ``extra`` file (name in out_dir -> source), as one set: every file is
    written under a temporary name first and all are renamed only when all succeeded, so a
    failed export (a full disk) never leaves new files beside old ones under one tag.
    ``encoder_export`` writes the encoder (default :func:`export_encoder`, the offline
    one)."""
    encoder_export = export_encoder if encoder_export is None else encoder_export
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    paths = {name: out_dir / f"{name}-{tag}.onnx" for name in ("encoder", "decoder", "joiner")}
    int8_paths = {f"{k}_int8": p.with_name(f"{k}-{tag}.int8.onnx") for k, p in paths.items()}
    with StagedFiles() as staged:
        tmp = {k: staged.stage(p) for k, p in paths.items()}
        logging.info(f"Exporting encoder to {paths['encoder']}")
        encoder_export(model, tmp["encoder"], encoder_meta, opset)
        logging.info(f"Exporting decoder to {paths['decoder']}")
        export_decoder(model, tmp["decoder"], opset)
        logging.info(f"Exporting joiner to {paths['joiner']}")
        export_joiner(model, tmp["joiner"], opset)
        if int8:
            ops = {"encoder": ["MatMul"], "decoder": ["MatMul", "Gather"], "joiner": ["MatMul"]}
            for name in paths:
                logging.info(f"Quantising {paths[name].name} to int8")
                quantize_int8(tmp[name], staged.stage(int8_paths[f"{name}_int8"]), ops[name])
        for name, src in (extra or {}).items():
            shutil.copyfile(src, staged.stage(out_dir / name))
    return ExportedFiles(**paths, **(int8_paths if int8 else {}))


# ---------------------------------------------------------------------------
# export-onnx.py
# ---------------------------------------------------------------------------


def export_tag(params: Mapping[str, Any]) -> str:
    """icefall's export-onnx.py tag: ``epoch-E-avg-N`` or ``iter-B-avg-N``."""
    base = f"iter-{params['iter']}" if params["iter"] > 0 else f"epoch-{params['epoch']}"
    return f"{base}-avg-{params['avg']}"


def export_checkpoint(params: Mapping[str, Any], encoder_export: EncoderExport | None = None,
                      metadata: Callable[[Mapping[str, Any], AsrModel], dict[str, str]]
                      = encoder_metadata, tag_suffix: str = "") -> ExportedFiles:
    """export-onnx.py: exports the model chosen by the checkpoint flags in ``params``
    (``exp_dir``, ``epoch``/``iter``, ``avg``, ``use_averaged_model``, the model flags,
    ``tokens``, ``int8``); returns the files written. ``encoder_export``, ``metadata``
    (the encoder's) and ``tag_suffix`` (after icefall's tag) make other exports of the
    same set of files (:mod:`icefall.export.onnx_streaming`)."""
    params = dict(params)
    set_dims_from_tokens(params, params["tokens"])
    model, source = load_export_model(params)
    logging.info(f"Exporting {source}")
    encoder_meta = {**metadata(params, model), "checkpoint": checkpoint_suffix(params)}
    tag = export_tag(params) + tag_suffix
    exp_dir = Path(params["exp_dir"])
    tokens = Path(params["tokens"])
    same = (exp_dir / "tokens.txt").exists() and \
        (exp_dir / "tokens.txt").resolve() == tokens.resolve()
    with torch.no_grad():
        files = export_transducer(model, exp_dir, tag, encoder_meta, int8=params["int8"],
                                  extra={} if same else {"tokens.txt": tokens},
                                  encoder_export=encoder_export)
    logging.info(f"Wrote {files.encoder.name}, {files.decoder.name}, {files.joiner.name}"
                 f"{' and their .int8.onnx versions' if params['int8'] else ''} and "
                 f"tokens.txt to {exp_dir}")
    return files


# ---------------------------------------------------------------------------
# export-onnx-ctc.py
# ---------------------------------------------------------------------------


def export_ctc_model(model: AsrModel, path: Path, opset: int = OPSET_VERSION) -> None:
    """model.onnx: x (N, T, F), x_lens (N,) -> log_probs (N, T', V), log_probs_len (N,),
    with the metadata sherpa-onnx reads for a zipformer2 CTC model."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(EXPORT_BATCH, EXPORT_FRAMES, model.encoder_embed.in_channels, generator=g)
    x_lens = torch.full((EXPORT_BATCH,), EXPORT_FRAMES, dtype=torch.int64)
    wrapper = OnnxCtcModel(model.encoder_embed, model.encoder, model.ctc_output)
    proto = _trace_to_onnx(wrapper, (x, x_lens), ["x", "x_lens"],
                           ["log_probs", "log_probs_len"],
                           {"x": {0: "N", 1: "T"}, "x_lens": {0: "N"},
                            "log_probs": {0: "N", 1: "T"}, "log_probs_len": {0: "N"}}, opset)
    save_with_metadata(proto, path, {"model_type": "zipformer2_ctc", "version": "1",
                                     "model_author": MODEL_AUTHOR,
                                     "comment": "non-streaming zipformer2 CTC"})


def export_ctc_checkpoint(params: Mapping[str, Any]) -> tuple[Path, Path]:
    """export-onnx-ctc.py: ``model.onnx`` and ``model.int8.onnx`` (icefall's names) of the
    CTC head of the model chosen by the checkpoint flags, and tokens.txt, in ``exp_dir``,
    written as one set; returns the two model paths."""
    params = dict(params)
    if not params.get("use_ctc"):
        raise ValueError("export-onnx-ctc.py exports a model's CTC head: pass --use-ctc 1")
    set_dims_from_tokens(params, params["tokens"])
    model, source = load_export_model(params)
    exp_dir = Path(params["exp_dir"])
    path, int8 = exp_dir / "model.onnx", exp_dir / "model.int8.onnx"
    tokens = Path(params["tokens"])
    same = (exp_dir / "tokens.txt").exists() and \
        (exp_dir / "tokens.txt").resolve() == tokens.resolve()
    logging.info(f"Exporting the CTC model of {source}")
    with torch.no_grad(), StagedFiles() as staged:
        tmp = staged.stage(path)
        export_ctc_model(model, tmp, params.get("opset", OPSET_VERSION))
        quantize_int8(tmp, staged.stage(int8), ["MatMul"])
        if not same:
            shutil.copyfile(tokens, staged.stage(exp_dir / "tokens.txt"))
    logging.info(f"Wrote {path} and {int8}")
    return path, int8
