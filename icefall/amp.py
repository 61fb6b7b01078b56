"""Mixed precision for training: ``--use-fp16`` (float16 autocast with a gradient scaler)
and ``--use-bf16`` (bfloat16 autocast, no scaler), with icefall's grad-scale management.

icefall starts the scaler at 1.0, not PyTorch's 65536, and steers it by hand: every 100
batches it doubles a scale below 8 (below 32 only every 400 batches); below 0.01 it warns
and saves ``bad-model-first-warning-<rank>.pt`` once; below 1e-5 it saves
``bad-model-<rank>.pt`` and stops, since the run is then producing non-finite gradients
batch after batch. :class:`GradScaleGuard` is that rule; it reads the scale from the device
once every 100 batches only.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from icefall.errors import TrainingStoppedError

INITIAL_GRAD_SCALE = 1.0
SMALL_GRAD_SCALE = 0.01
FATAL_GRAD_SCALE = 1.0e-5


class GradScaleTooSmallError(TrainingStoppedError):
    """fp16 training produced non-finite gradients until the scale fell below 1e-5."""


@dataclass(frozen=True)
class Precision:
    """How the forward pass is computed.

    Attributes:
      device_type: ``"cuda"`` or ``"cpu"``.
      dtype: the autocast dtype, or None for float32 throughout.
    """

    device_type: str
    dtype: torch.dtype | None = None

    @property
    def uses_scaler(self) -> bool:
        """float16 needs a gradient scaler; bfloat16 has float32's range and does not."""
        return self.dtype == torch.float16

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context of a forward pass (a no-op for float32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def describe(self) -> str:
        return "float32" if self.dtype is None else f"autocast {self.dtype} on {self.device_type}"


def check_precision_flags(use_fp16: bool, use_bf16: bool, device: torch.device) -> None:
    """Raises ValueError when both flags are set, or bfloat16 is asked of a GPU without it."""
    if use_fp16 and use_bf16:
        raise ValueError("--use-fp16 1 and --use-bf16 1 exclude each other: choose one")
    if use_bf16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        name = torch.cuda.get_device_name(device)
        raise ValueError(f"--use-bf16 1: {name} does not support bfloat16; use --use-fp16 1")


def choose_precision(use_fp16: bool, use_bf16: bool, device: torch.device) -> Precision:
    """The precision of ``--use-fp16`` / ``--use-bf16`` on ``device``.

    float16 needs CUDA: on a CPU it falls back to float32 with a warning. bfloat16 works on
    CUDA devices that support it and on CPUs.

    Raises:
      ValueError: as :func:`check_precision_flags`.
    """
    check_precision_flags(use_fp16, use_bf16, device)
    if use_bf16:
        return Precision(device.type, torch.bfloat16)
    if use_fp16:
        if device.type != "cuda":
            logging.warning("--use-fp16 1 needs CUDA; training in float32 on the CPU "
                            "(--use-bf16 1 works on CPUs)")
            return Precision(device.type)
        return Precision(device.type, torch.float16)
    return Precision(device.type)


def make_grad_scaler(precision: Precision) -> torch.amp.GradScaler:
    """A GradScaler starting at icefall's 1.0, enabled for float16 only."""
    return torch.amp.GradScaler(precision.device_type, init_scale=INITIAL_GRAD_SCALE,
                                enabled=precision.uses_scaler)


class GradScaleGuard:
    """icefall's grad-scale management (see the module docstring).

    Args:
      scaler: the training's GradScaler (nothing happens when it is disabled).
      save_bad_model: called with a file-name suffix (``"-first-warning"`` or ``""``)
        to save the current model for inspection.
    """

    CHECK_EVERY = 100

    def __init__(self, scaler: torch.amp.GradScaler,
                 save_bad_model: Callable[[str], None]) -> None:
        self.scaler = scaler
        self.save_bad_model = save_bad_model
        self.warned = False

    def after_step(self, batch_idx: int) -> float | None:
        """Applies the rule after batch ``batch_idx`` of the epoch (0-based).

        Returns:
          The scale read on this batch, or None when the rule did not run.
        Raises:
          GradScaleTooSmallError: the scale fell below 1e-5 (after saving the model).
        """
        if not self.scaler.is_enabled() or batch_idx % self.CHECK_EVERY != 0:
            return None
        scale = self.scaler.get_scale()  # reads the device: once every 100 batches
        if scale < 8.0 or (scale < 32.0 and batch_idx % 400 == 0):
            self.scaler.update(scale * 2.0)
        if scale < SMALL_GRAD_SCALE:
            if not self.warned:
                self.save_bad_model("-first-warning")
                self.warned = True
            logging.warning(f"Grad scale is small: {scale}")
        if scale < FATAL_GRAD_SCALE:
            self.save_bad_model("")
            raise GradScaleTooSmallError(
                f"grad_scale is too small, exiting: {scale} (fp16 gradients were not finite "
                "batch after batch; lower --base-lr by 0.005 and try again, or train with "
                "--use-bf16 1)")
        return scale
