"""Loss bookkeeping for training logs: sums over frames, printed per frame as icefall does."""

from __future__ import annotations

from collections import defaultdict

import torch
import torch.distributed as dist


class MetricsTracker(defaultdict):
    """Sums of ``frames`` and of losses (summed over frames); printed normalised per frame.

    ``tracker * s`` scales every sum, ``a + b`` adds them, so a decaying total is
    ``tot = tot * (1 - 1 / reset_interval) + batch_info``.
    """

    def __init__(self) -> None:
        super().__init__(float)

    def __add__(self, other: MetricsTracker) -> MetricsTracker:
        ans = MetricsTracker()
        for k in set(self) | set(other):
            ans[k] = self.get(k, 0.0) + other.get(k, 0.0)
        return ans

    def __mul__(self, alpha: float) -> MetricsTracker:
        ans = MetricsTracker()
        for k, v in self.items():
            ans[k] = v * alpha
        return ans

    def norm_items(self) -> list[tuple[str, float]]:
        """(name, value per frame) for every loss; (frames, count) first is left out."""
        frames = self.get("frames", 0.0)
        return [(k, v / frames if frames else float("nan"))
                for k, v in sorted(self.items()) if k not in ("frames", "utterances")]

    def __str__(self) -> str:
        losses = ", ".join(f"{k}={v:.4g}" for k, v in self.norm_items())
        return f"{losses}, over {self.get('frames', 0.0):.2f} frames. "

    def reduce(self, device: torch.device) -> None:
        """Sums every entry over all ranks (in place)."""
        keys = sorted(self)
        t = torch.tensor([self[k] for k in keys], dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        for k, v in zip(keys, t.tolist()):
            self[k] = v

    def write_summary(self, tb_writer, prefix: str, batch_idx: int) -> None:
        """Writes each per-frame loss to TensorBoard as ``<prefix><name>``."""
        for k, v in self.norm_items():
            tb_writer.add_scalar(prefix + k, v, batch_idx)
