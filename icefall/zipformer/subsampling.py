"""Convolutional frontend: 2x time subsampling with a ConvNeXt block (Zipformer paper, 3.1).

Streaming (icefall's ``streaming_forward``): a chunk of features gives (T - 7) // 2 - 3
frames; the ConvNeXt block's 3 frames of left context are cached between chunks, its 3
frames of right context come from the chunk's end.

Dimension legend: N = batch, T = input frames, F = feature bins (80),
T' = (T - 7) // 2 output frames, C = output channels (encoder_dim[0]),
P = the ConvNeXt block's time padding (3).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from icefall.zipformer.scaling import (
    Balancer,
    BiasNorm,
    Dropout3,
    FloatLike,
    ScaledConv2d,
    ScaleGrad,
    ScheduledFloat,
    SwooshL,
    SwooshR,
    Whiten,
    _is_exporting,
)

# Frames consumed by the three 3x3 convolutions: T' = (T - 7) // 2.
MIN_INPUT_FRAMES = 9
# Streaming: the ConvNeXt block's right context, in output frames (its 7x7 kernel's reach).
STREAMING_RIGHT_CONTEXT = 3
# Streaming: the fewest feature frames giving one output frame, (15 - 7) // 2 - 3 = 1.
MIN_STREAMING_FRAMES = 7 + 2 * (STREAMING_RIGHT_CONTEXT + 1)


def subsampled_length(x_lens: Tensor) -> Tensor:
    """Number of frames the frontend outputs for ``x_lens`` input frames: (T - 7) // 2."""
    return torch.div(x_lens - 7, 2, rounding_mode="floor")


class ConvNeXt(nn.Module):
    """Residual ConvNeXt block on (N, C, T, F): depthwise 7x7, pointwise expand, SwooshL,
    pointwise project. In training the whole residual branch is dropped per sequence with
    probability ``layerdrop_rate``.
    """

    def __init__(self, channels: int, hidden_ratio: int = 3,
                 kernel_size: tuple[int, int] = (7, 7),
                 layerdrop_rate: FloatLike | None = None) -> None:
        super().__init__()
        padding = ((kernel_size[0] - 1) // 2, (kernel_size[1] - 1) // 2)
        hidden = channels * hidden_ratio
        self.padding = padding
        self.layerdrop_rate = (ScheduledFloat((0.0, 0.2), (20000.0, 0.015))
                               if layerdrop_rate is None else layerdrop_rate)
        self.depthwise_conv = nn.Conv2d(channels, channels, kernel_size, groups=channels,
                                        padding=padding)
        self.pointwise_conv1 = nn.Conv2d(channels, hidden, kernel_size=1)
        self.hidden_balancer = Balancer(hidden, channel_dim=1, min_positive=0.3,
                                        max_positive=1.0, min_abs=0.75, max_abs=5.0)
        self.activation = SwooshL()
        self.pointwise_conv2 = ScaledConv2d(hidden, channels, kernel_size=1,
                                            initial_scale=0.01)
        self.out_balancer = Balancer(channels, channel_dim=1, min_positive=0.4,
                                     max_positive=0.6, min_abs=1.0, max_abs=6.0)
        self.out_whiten = Whiten(num_groups=1, whitening_limit=5.0, prob=(0.025, 0.25),
                                 grad_scale=0.01)

    def forward(self, x: Tensor) -> Tensor:
        """
        Args:
          x: (N, C, T, F)
        Returns:
          (N, C, T, F); from the channels-last path a permuted view of (N, T, F, C) memory.
        """
        if self.training and x.device.type == "cpu" and not _is_exporting():
            return self._forward_channels_last(x)
        return self._residual(x, self.depthwise_conv(x))

    def _forward_channels_last(self, x: Tensor) -> Tensor:
        """The same function computed on (N, T, F, C) memory, for training on the CPU.

        oneDNN's CPU kernels differentiate a depthwise convolution 3-4x faster in
        channels-last memory, and the pointwise convolutions become plain matrix products
        over the channels; the balancers and the whitening see the same values per
        channel. GPUs, ONNX export and inference keep the reference's (N, C, T, F) path.

        Args:
          x: (N, C, T, F)
        Returns:
          (N, C, T, F), a permuted view of (N, T, F, C) memory.
        """
        bypass = x.permute(0, 2, 3, 1)  # (N, T, F, C)
        y = self.depthwise_conv(x.contiguous(memory_format=torch.channels_last))
        y = y.permute(0, 2, 3, 1)  # (N, T, F, C), contiguous
        y = nn.functional.linear(y, self.pointwise_conv1.weight.flatten(1),
                                 self.pointwise_conv1.bias)  # (N, T, F, hidden)
        y = self.activation(self.hidden_balancer(y, channel_dim=-1))
        y = nn.functional.linear(y, self.pointwise_conv2.weight.flatten(1),
                                 self.pointwise_conv2.bias)  # (N, T, F, C)
        # y first: the sum takes the layout of its first operand, (N, T, F, C)
        y = self.out_balancer(self._layerdrop(y) + bypass, channel_dim=-1)
        if self.training and y.requires_grad:
            y = self.out_whiten(y)  # whiten over C
        return y.permute(0, 3, 1, 2)  # (N, C, T, F)

    def _layerdrop(self, x: Tensor) -> Tensor:
        """x: (N, ...) residual branch, zeroed per sequence with the layerdrop rate."""
        rate = float(self.layerdrop_rate) if self.training else 0.0
        if rate == 0.0:
            return x
        keep = torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), device=x.device) > rate
        return x * keep.to(x.dtype)

    def streaming_forward(self, x: Tensor, cached_left_pad: Tensor) -> tuple[Tensor, Tensor]:
        """One chunk of a stream: x holds the chunk's T frames and then the P =
        ``padding[0]`` frames after them (the convolution's right context); the P frames
        before them come from the cache.

        Args:
          x: (N, C, T + P, F); cached_left_pad: (N, C, P, F).
        Returns:
          (N, C, T, F) and the updated (N, C, P, F) cache: the chunk's last P frames.
        """
        P = self.padding[0]
        T = x.shape[2] - P
        bypass = x[:, :, :T]
        x = torch.cat((cached_left_pad, x), dim=2)  # (N, C, P + T + P, F)
        conv = self.depthwise_conv
        # The time padding comes from the frames around the chunk: pad frequency only.
        y = nn.functional.conv2d(x, conv.weight, conv.bias, padding=(0, self.padding[1]),
                                 groups=conv.groups)  # (N, C, T, F)
        return self._residual(bypass, y), x[:, :, T: T + P]

    def _residual(self, bypass: Tensor, x: Tensor) -> Tensor:
        """bypass: (N, C, T, F) block input; x: (N, C, T, F) depthwise conv output
        -> (N, C, T, F)."""
        x = self.pointwise_conv1(x)
        x = self.activation(self.hidden_balancer(x))
        x = self.pointwise_conv2(x)
        x = self.out_balancer(bypass + self._layerdrop(x))
        if self.training and x.requires_grad:
            x = self.out_whiten(x.transpose(1, 3)).transpose(1, 3)  # whiten over C
        return x


class Conv2dSubsampling(nn.Module):
    """(N, T, F) features -> (N, T', C) embeddings with T' = (T - 7) // 2.

    Module indices of ``conv`` follow the reference so checkpoints load: 0, 4 and 7 are
    the convolutions; the rest hold no parameters.
    """

    def __init__(self, in_channels: int, out_channels: int, layer1_channels: int = 8,
                 layer2_channels: int = 32, layer3_channels: int = 128,
                 dropout: FloatLike = 0.1) -> None:
        super().__init__()
        if in_channels < 7:
            raise ValueError(f"feature_dim must be >= 7 for the frontend, got {in_channels}")
        self.in_channels = in_channels
        self.layer3_channels = layer3_channels
        self.conv = nn.Sequential(
            nn.Conv2d(1, layer1_channels, kernel_size=3, padding=(0, 1)),
            ScaleGrad(0.2),
            Balancer(layer1_channels, channel_dim=1, max_abs=1.0),
            SwooshR(),
            nn.Conv2d(layer1_channels, layer2_channels, kernel_size=3, stride=2, padding=0),
            Balancer(layer2_channels, channel_dim=1, max_abs=4.0),
            SwooshR(),
            nn.Conv2d(layer2_channels, layer3_channels, kernel_size=3, stride=(1, 2)),
            Balancer(layer3_channels, channel_dim=1, max_abs=4.0),
            SwooshR(),
        )
        self.convnext = ConvNeXt(layer3_channels, kernel_size=(7, 7))
        self.out_width = (((in_channels - 1) // 2) - 1) // 2
        self.out = nn.Linear(self.out_width * layer3_channels, out_channels)
        self.out_whiten = Whiten(num_groups=1,
                                 whitening_limit=ScheduledFloat((0.0, 4.0), (20000.0, 8.0),
                                                             default=4.0),
                                 prob=(0.025, 0.25), grad_scale=0.02)
        self.out_norm = BiasNorm(out_channels)
        self.dropout = Dropout3(dropout, shared_dim=1)

    def forward(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
        """
        Args:
          x: (N, T, F) features; x_lens: (N,) valid frames per utterance.
        Returns:
          (N, T', C) embeddings and (N,) their valid lengths (T - 7) // 2.
        """
        x = self.conv(x.unsqueeze(1))  # (N, 1, T, F) -> (N, 128, T', F')
        return self._project(self.convnext(x)), subsampled_length(x_lens)

    def streaming_forward(self, x: Tensor, x_lens: Tensor, cached_left_pad: Tensor
                          ) -> tuple[Tensor, Tensor, Tensor]:
        """One chunk of a stream (icefall's API): the ConvNeXt block takes its left context
        from ``cached_left_pad`` and its right context from the chunk's last
        STREAMING_RIGHT_CONTEXT output frames, which are not returned.

        Args:
          x: (N, T, F) features, T >= MIN_STREAMING_FRAMES: the chunk and the frames after it
            (icefall feeds 2 * chunk_size + 13); x_lens: (N,) valid frames;
          cached_left_pad: (N, layer3_channels, 3, out_width), from :meth:`get_init_states`
            or the previous chunk.
        Returns:
          (N, T'', C) embeddings with T'' = (T - 7) // 2 - 3, (N,) valid lengths
          (x_lens - 7) // 2 - 3 (at least 0), and the updated cache.
        """
        if not _is_exporting():
            self._check_streaming_inputs(x, cached_left_pad)
        x = self.conv(x.unsqueeze(1))  # (N, 1, T, F) -> (N, 128, T'' + 3, F')
        x, cached_left_pad = self.convnext.streaming_forward(x, cached_left_pad)
        lens = (subsampled_length(x_lens) - STREAMING_RIGHT_CONTEXT).clamp(min=0)
        return self._project(x), lens, cached_left_pad

    def get_init_states(self, batch_size: int = 1,
                        device: torch.device | str = "cpu") -> Tensor:
        """The ConvNeXt block's left context before a stream's first chunk: zeros, as the
        full forward pads, of shape (N, layer3_channels, 3, out_width) and the model's dtype."""
        shape = (batch_size, self.layer3_channels, self.convnext.padding[0], self.out_width)
        return torch.zeros(shape, dtype=self.out.weight.dtype, device=device)

    def _check_streaming_inputs(self, x: Tensor, cached_left_pad: Tensor) -> None:
        """Raises ValueError for shapes streaming_forward cannot use (shapes only)."""
        if x.ndim != 3 or x.shape[2] != self.in_channels:
            raise ValueError(f"features must have shape (N, T, {self.in_channels}), got "
                             f"{tuple(x.shape)}")
        if x.shape[1] < MIN_STREAMING_FRAMES:
            raise ValueError(f"a streaming chunk needs at least {MIN_STREAMING_FRAMES} "
                             f"feature frames, got {x.shape[1]}")
        shape = (x.shape[0], self.layer3_channels, self.convnext.padding[0], self.out_width)
        if tuple(cached_left_pad.shape) != shape:
            raise ValueError(f"cached_left_pad must have shape {shape}, got "
                             f"{tuple(cached_left_pad.shape)}")

    def _project(self, x: Tensor) -> Tensor:
        """x: (N, 128, T', F') ConvNeXt output -> (N, T', C) embeddings."""
        n, c, t, f = x.shape
        x = x.transpose(1, 2).reshape(n, t, c * f)  # (N, T', 128 * F')
        x = self.out_whiten(self.out(x))
        return self.dropout(self.out_norm(x))
