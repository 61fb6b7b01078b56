"""The transducer (and optional CTC) ASR model around the Zipformer2 encoder.

Dimension legend: N = batch, T = feature frames, F = feature_dim, T'' = encoder frames,
C = max(encoder_dim), S = max label length, D = decoder_dim, J = joiner_dim,
V = vocab_size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from icefall.utils import make_pad_mask
from icefall.zipformer.decoder import Decoder
from icefall.zipformer.encoder import Zipformer2
from icefall.zipformer.joiner import Joiner
from icefall.zipformer.scaling import ScaledLinear, _is_exporting
from icefall.zipformer.subsampling import (
    MIN_INPUT_FRAMES,
    Conv2dSubsampling,
    subsampled_length,
)


class AsrModel(nn.Module):
    """Frontend + Zipformer2 encoder + stateless decoder + joiner (+ CTC head).

    Attribute names and parameter layout are icefall's, so its checkpoints load.
    """

    def __init__(self, encoder_embed: Conv2dSubsampling, encoder: Zipformer2,
                 decoder: Decoder | None = None, joiner: Joiner | None = None,
                 encoder_dim: int = 384, decoder_dim: int = 512, vocab_size: int = 500,
                 use_transducer: bool = True, use_ctc: bool = False) -> None:
        super().__init__()
        if not (use_transducer or use_ctc):
            raise ValueError("at least one of --use-transducer and --use-ctc must be 1")
        self.encoder_embed = encoder_embed
        self.encoder = encoder
        self.use_transducer = use_transducer
        self.use_ctc = use_ctc
        if use_transducer:
            if decoder is None or joiner is None:
                raise ValueError("a transducer model needs a decoder and a joiner")
            self.decoder = decoder
            self.joiner = joiner
            self.simple_am_proj = ScaledLinear(encoder_dim, vocab_size, initial_scale=0.25)
            self.simple_lm_proj = ScaledLinear(decoder_dim, vocab_size)
        if use_ctc:
            self.ctc_output = nn.Sequential(nn.Dropout(p=0.1),
                                            nn.Linear(encoder_dim, vocab_size),
                                            nn.LogSoftmax(dim=-1))

    def check_inputs(self, x: Tensor, x_lens: Tensor) -> None:
        """Raises ValueError for inputs the encoder cannot process meaningfully.

        Reading ``x_lens`` waits for the device when it is on a GPU; training passes it
        on the CPU (see :meth:`forward`).
        """
        feature_dim = self.encoder_embed.in_channels
        if x.ndim != 3 or x.shape[2] != feature_dim:
            raise ValueError(f"features must have shape (N, T, {feature_dim}), got "
                             f"{tuple(x.shape)}")
        if x_lens.shape != (x.shape[0],):
            raise ValueError(f"x_lens must have shape ({x.shape[0]},), got "
                             f"{tuple(x_lens.shape)}")
        if x.shape[0] == 0:
            raise ValueError("empty batch")
        if int(x_lens.max()) > x.shape[1]:
            raise ValueError(f"x_lens has a length {int(x_lens.max())} longer than the "
                             f"{x.shape[1]} frames of x")
        if int(x_lens.min()) < MIN_INPUT_FRAMES:
            raise ValueError(f"an utterance has {int(x_lens.min())} frames; the subsampling "
                             f"frontend needs at least {MIN_INPUT_FRAMES}")

    def forward_encoder(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
        """
        Args:
          x: (N, T, F) features; x_lens: (N,) valid frames.
        Returns:
          encoder_out (N, T'', C) and encoder_out_lens (N,).
        """
        if not _is_exporting():
            self.check_inputs(x, x_lens)
            x_lens = x_lens.to(x.device, non_blocking=True)
        x, x_lens = self.encoder_embed(x, x_lens)  # (N, T', C0)
        mask = make_pad_mask(x_lens, x.shape[1])
        x = x.permute(1, 0, 2)  # (T', N, C0)
        out, out_lens = self.encoder(x, x_lens, mask)
        return out.permute(1, 0, 2), out_lens  # (N, T'', C)

    def forward_ctc(self, encoder_out: Tensor, encoder_out_lens: Tensor, targets: Tensor,
                    target_lengths: Tensor) -> Tensor:
        """Summed CTC loss. targets: (N, S) padded; encoder_out_lens, target_lengths: (N,)
        (on the CPU, ``ctc_loss`` needs no read from the device)."""
        log_probs = self.ctc_output(encoder_out).permute(1, 0, 2)  # (T'', N, V)
        return nn.functional.ctc_loss(log_probs, targets, encoder_out_lens, target_lengths,
                                      blank=0, reduction="sum", zero_infinity=True)

    def forward_transducer(self, encoder_out: Tensor, encoder_out_lens: Tensor, y: Tensor,
                           y_lens: Tensor, prune_range: int = 5, am_scale: float = 0.0,
                           lm_scale: float = 0.0) -> tuple[Tensor, Tensor]:
        """Summed simple (smoothed, trivial-joiner) and pruned RNN-T losses.

        Args:
          encoder_out: (N, T'', C); encoder_out_lens: (N,); y: (N, S) padded labels on
          encoder_out's device; y_lens: (N,) (on the CPU, as :meth:`forward` passes them, the
          loss never waits for the device).
        """
        from icefall import rnnt_loss

        blank_id = self.decoder.blank_id
        sos_y = nn.functional.pad(y, (1, 0), value=blank_id)  # (N, S + 1)
        decoder_out = self.decoder(sos_y)  # (N, S + 1, D)
        # Built where the lengths are: on the CPU in training, so the loss reads it freely.
        boundary = torch.stack([torch.zeros_like(y_lens), torch.zeros_like(y_lens), y_lens,
                                encoder_out_lens], dim=1)  # (N, 4)
        lm = self.simple_lm_proj(decoder_out)
        am = self.simple_am_proj(encoder_out)
        with torch.autocast(encoder_out.device.type, enabled=False), \
                rnnt_loss.trusted_inputs():
            simple_loss, (px_grad, py_grad) = rnnt_loss.rnnt_loss_smoothed(
                lm=lm.float(), am=am.float(), symbols=y, termination_symbol=blank_id,
                lm_only_scale=lm_scale, am_only_scale=am_scale, boundary=boundary,
                reduction="sum", return_grad=True)
        with rnnt_loss.trusted_inputs():
            ranges = rnnt_loss.get_rnnt_prune_ranges(px_grad=px_grad, py_grad=py_grad,
                                                     boundary=boundary, s_range=prune_range)
            am_pruned, lm_pruned = rnnt_loss.do_rnnt_pruning(
                am=self.joiner.encoder_proj(encoder_out),
                lm=self.joiner.decoder_proj(decoder_out),
                ranges=ranges)  # each (N, T'', prune_range, J)
        logits = self.joiner(am_pruned, lm_pruned, project_input=False)
        with torch.autocast(encoder_out.device.type, enabled=False), \
                rnnt_loss.trusted_inputs():
            pruned_loss = rnnt_loss.rnnt_loss_pruned(
                logits=logits.float(), symbols=y, ranges=ranges, termination_symbol=blank_id,
                boundary=boundary, reduction="sum")
        return simple_loss, pruned_loss

    def forward(self, x: Tensor, x_lens: Tensor, y: Sequence[Sequence[int]] | Tensor,
                prune_range: int = 5, am_scale: float = 0.0, lm_scale: float = 0.0
                ) -> tuple[Tensor, Tensor, Tensor]:
        """Training losses, each summed over the batch.

        Args:
          x: (N, T, F); x_lens: (N,); y: token ids per utterance (lists, or an object
            with ``.tolist()`` such as a k2 RaggedTensor).
        Returns:
          (simple_loss, pruned_loss, ctc_loss); absent parts are zero.
        """
        labels = y.tolist() if hasattr(y, "tolist") else [list(u) for u in y]
        if len(labels) != x.shape[0]:
            raise ValueError(f"{len(labels)} label sequences for a batch of {x.shape[0]}")
        y_pad, y_lens = pad_labels(labels)  # on the CPU
        x_lens = x_lens.cpu()  # free when on the CPU already, as training passes it
        encoder_out, encoder_out_lens = self.forward_encoder(x, x_lens)
        out_lens = self.encoder_out_lens(x_lens)  # (N,) on the CPU, equal to encoder_out_lens
        y_pad = y_pad.to(x.device, non_blocking=True)
        zero = encoder_out.new_zeros(())
        simple_loss = pruned_loss = ctc_loss = zero
        if self.use_transducer:
            simple_loss, pruned_loss = self.forward_transducer(
                encoder_out, out_lens, y_pad, y_lens, prune_range=prune_range,
                am_scale=am_scale, lm_scale=lm_scale)
        if self.use_ctc:
            # CPU lengths: ctc_loss reads them on the host anyway.
            ctc_loss = self.forward_ctc(encoder_out, out_lens, y_pad, y_lens)
        return simple_loss, pruned_loss, ctc_loss

    @staticmethod
    def encoder_out_lens(x_lens: Tensor) -> Tensor:
        """(N,) encoder output frames for (N,) input frames, computed where x_lens is:
        the frontend's (T - 7) // 2, then the encoder's final (T' + 1) // 2."""
        return torch.div(subsampled_length(x_lens) + 1, 2, rounding_mode="floor")


def pad_labels(labels: Sequence[Sequence[int]], device: torch.device | str = "cpu",
               pad_value: int = 0) -> tuple[Tensor, Tensor]:
    """Pads label lists into (N, S) int64 and returns (N,) lengths (both built on the host,
    then moved to ``device`` without waiting for it)."""
    lengths = [len(u) for u in labels]
    width = max([1, *lengths])
    rows = [list(u) + [pad_value] * (width - n) for u, n in zip(labels, lengths)]
    out = torch.tensor(rows, dtype=torch.int64).reshape(len(labels), width)  # (N, S)
    lens = torch.tensor(lengths, dtype=torch.int64)  # (N,)
    return out.to(device, non_blocking=True), lens.to(device, non_blocking=True)
