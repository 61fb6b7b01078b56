"""``export.py``: the averaged model as icefall's ``pretrained.pt``, or as a TorchScript
``jit_script.pt`` (``--jit 1``) with the interface icefall's ``jit_pretrained.py`` calls.

- ``pretrained.pt`` is ``{"model": state_dict}`` in float32 with icefall's keys, so
  icefall's ``load_checkpoint(..., strict=True)`` loads it into a model built with the
  same flags (its ``zipformer_adapter`` model with ``--use-adapters 1``; its ``zipformer``
  model when ``--use-adapters 0`` leaves the adapters out), and so do this toolkit's
  ``--finetune-ckpt``, ``pretrained.py`` and ``decode.py`` (linked as ``epoch-N.pt``).
- ``jit_script.pt``: ``model.encoder(features, feature_lengths)`` -> ``(encoder_out (N, T',
  C), encoder_out_lens (N,))``; ``model.decoder(y, need_pad)`` with ``blank_id``,
  ``context_size`` and ``vocab_size`` attributes, ``(N, U) -> (N, U, D)`` (``(N, K) ->
  (N, 1, D)`` without padding); ``model.joiner(encoder_out, decoder_out, project_input=True)``
  with ``encoder_proj``, ``decoder_proj`` and ``output_linear``. icefall scripts its model
  with ``torch.jit.script``; this package's modules use Python that TorchScript does not
  compile, so the encoder and the decoder's network are traced (shapes stay dynamic: any
  batch size and length) and held by small scripted modules that give icefall's
  interface. Adapters are in the traced encoder (``--use-adapters 1``) or left out.
  A causal model is exported with its full-utterance (simulated streaming) behaviour,
  not as icefall's chunk-by-chunk ``jit_script_chunk_*.pt``.

Dimension legend: N = batch, T = feature frames, F = feature dim, T' = encoder frames,
C = encoder output dim, U = label positions, D = decoder dim, J = joiner dim,
V = vocab size, K = decoder context size.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from icefall.checkpoint import save_checkpoint
from icefall.files import atomic_write
from icefall.inference import load_export_model
from icefall.token_table import set_dims_from_tokens
from icefall.zipformer.model import AsrModel

JIT_FILENAME = "jit_script.pt"
PRETRAINED_FILENAME = "pretrained.pt"
# The input the encoder is traced with; other batch sizes and lengths work too.
TRACE_BATCH, TRACE_FRAMES = 2, 120


class _EncoderNet(nn.Module):
    """Frontend + Zipformer2: features (N, T, F), lengths (N,) -> (N, T', C), (N,)."""

    def __init__(self, encoder_embed: nn.Module, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder_embed = encoder_embed
        self.encoder = encoder

    def forward(self, features: Tensor, feature_lengths: Tensor) -> tuple[Tensor, Tensor]:
        x, x_lens = self.encoder_embed(features, feature_lengths)  # (N, T', C0)
        # The padding mask from traced sizes (no Python ints that would freeze the length).
        mask = torch.arange(x.shape[1], device=x.device).unsqueeze(0) >= x_lens.unsqueeze(1)
        out, out_lens = self.encoder(x.permute(1, 0, 2), x_lens, mask)  # (T', N, C)
        return out.permute(1, 0, 2), out_lens


class _DecoderNet(nn.Module):
    """The stateless decoder with left padding: (N, U) ids -> (N, U, D)."""

    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, y: Tensor) -> Tensor:
        return self.decoder(y, need_pad=True)


class JitEncoder(nn.Module):
    """icefall's ``EncoderModel`` interface around the traced encoder; ``feature_dim`` (F,
    the mel bins it takes) is kept for the decoder of the file (icefall's files lack it:
    80)."""

    def __init__(self, traced: torch.jit.ScriptModule, feature_dim: int) -> None:
        super().__init__()
        self.model = traced
        self.feature_dim = feature_dim

    def forward(self, features: Tensor, feature_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """features (N, T, F), feature_lengths (N,) -> encoder_out (N, T', C), lens (N,)."""
        return self.model(features, feature_lengths)


class JitDecoder(nn.Module):
    """icefall's decoder interface (``need_pad``, ``blank_id``, ``context_size``)."""

    def __init__(self, traced: torch.jit.ScriptModule, blank_id: int, context_size: int,
                 vocab_size: int) -> None:
        super().__init__()
        self.model = traced
        self.blank_id = blank_id
        self.context_size = context_size
        self.vocab_size = vocab_size

    def forward(self, y: Tensor, need_pad: bool = True) -> Tensor:
        """y (N, U) -> (N, U, D); without ``need_pad`` y is (N, K) and the output (N, 1, D).
        id -1 (the context before the first label) embeds to zero, as the padding does."""
        out = self.model(y)  # (N, U, D)
        if need_pad:
            return out
        return out[:, -1:]  # the window of all K labels


class JitJoiner(nn.Module):
    """icefall's joiner: output_linear(tanh(encoder_proj(enc) + decoder_proj(dec)))."""

    def __init__(self, joiner: nn.Module) -> None:
        super().__init__()
        self.encoder_proj = copy.deepcopy(joiner.encoder_proj)  # nn.Linear (C -> J)
        self.decoder_proj = copy.deepcopy(joiner.decoder_proj)  # nn.Linear (D -> J)
        self.output_linear = copy.deepcopy(joiner.output_linear)  # nn.Linear (J -> V)

    def forward(self, encoder_out: Tensor, decoder_out: Tensor,
                project_input: bool = True) -> Tensor:
        """encoder_out (..., C), decoder_out (..., D) (both (..., J) without
        ``project_input``) -> (..., V) logits."""
        if project_input:
            logit = self.encoder_proj(encoder_out) + self.decoder_proj(decoder_out)
        else:
            logit = encoder_out + decoder_out
        return self.output_linear(torch.tanh(logit))


class JitTransducer(nn.Module):
    """The scripted container: ``encoder``, ``decoder``, ``joiner`` as icefall names them;
    ``forward`` runs the encoder."""

    def __init__(self, encoder: JitEncoder, decoder: JitDecoder, joiner: JitJoiner) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.joiner = joiner

    def forward(self, features: Tensor, feature_lengths: Tensor) -> tuple[Tensor, Tensor]:
        return self.encoder(features, feature_lengths)


def _trace(module: nn.Module, inputs: tuple[Tensor, ...]) -> torch.jit.ScriptModule:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.trace(module.eval(), inputs, check_trace=False)


def script_model(model: AsrModel) -> torch.jit.ScriptModule:
    """``model`` (eval mode, CPU) as a ScriptModule with icefall's jit interface."""
    model = model.eval()
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(TRACE_BATCH, TRACE_FRAMES, model.encoder_embed.in_channels,
                        generator=g)
    lens = torch.tensor([TRACE_FRAMES, TRACE_FRAMES - 30])
    encoder = _trace(_EncoderNet(model.encoder_embed, model.encoder), (feats, lens))
    dec = model.decoder
    y = torch.randint(0, dec.vocab_size, (3, dec.context_size + 2), generator=g)
    y[:, 0] = -1  # trace the empty context too
    decoder = _trace(_DecoderNet(dec), (y,))
    container = JitTransducer(JitEncoder(encoder, int(model.encoder_embed.in_channels)),
                              JitDecoder(decoder, int(dec.blank_id), int(dec.context_size),
                                         int(dec.vocab_size)),
                              JitJoiner(model.joiner))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit's notice
        return torch.jit.script(container.eval())


def save_jit(scripted: torch.jit.ScriptModule, path: Path) -> None:
    """Writes a ScriptModule atomically."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit's notice
        atomic_write(Path(path), lambda tmp: torch.jit.save(scripted, str(tmp)))


def export_model(params: Mapping[str, Any]) -> Path:
    """export.py: ``pretrained.pt`` (``params["jit"]`` false) or ``jit_script.pt`` in
    ``exp_dir`` from the model chosen by the checkpoint flags; returns the path written.

    Raises:
      ValueError, OSError: bad tokens file, missing or mismatched checkpoints.
    """
    params = dict(params)
    set_dims_from_tokens(params, params["tokens"])
    model, source = load_export_model(params)
    exp_dir = Path(params["exp_dir"])
    if params["jit"]:
        path = exp_dir / JIT_FILENAME
        logging.info(f"Tracing and scripting {source}")
        with torch.no_grad():
            save_jit(script_model(model), path)
    else:
        path = exp_dir / PRETRAINED_FILENAME
        state = {k: v.float() if v.is_floating_point() else v
                 for k, v in model.state_dict().items()}
        save_checkpoint(path, model=state)
    logging.info(f"Saved {path} ({source})")
    return path
