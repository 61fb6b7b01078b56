"""Convolutional frontend: 2x time subsampling with a ConvNeXt block (Zipformer paper, 3.1).

Dimension legend: N = batch, T = input frames, F = feature bins (80),
T' = (T - 7) // 2 output frames, C = output channels (encoder_dim[0]).
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
)

# Frames consumed by the three 3x3 convolutions: T' = (T - 7) // 2.
MIN_INPUT_FRAMES = 9


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
          (N, C, T, F)
        """
        bypass = x
        x = self.pointwise_conv1(self.depthwise_conv(x))
        x = self.activation(self.hidden_balancer(x))
        x = self.pointwise_conv2(x)
        rate = float(self.layerdrop_rate) if self.training else 0.0
        if rate != 0.0:
            keep = torch.rand((x.shape[0], 1, 1, 1), device=x.device) > rate
            x = x * keep.to(x.dtype)
        x = self.out_balancer(bypass + x)
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
        out_width = (((in_channels - 1) // 2) - 1) // 2
        self.out = nn.Linear(out_width * layer3_channels, out_channels)
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
        x = self.convnext(x)
        n, c, t, f = x.shape
        x = x.transpose(1, 2).reshape(n, t, c * f)  # (N, T', 128 * F')
        x = self.out_whiten(self.out(x))
        x = self.dropout(self.out_norm(x))
        return x, subsampled_length(x_lens)
