#!/usr/bin/env python3
"""One training step of the default 65.5M Zipformer transducer: full vs adapters-only.

Usage:
  python bench/model.py                      # 8 x 10 s, 2 threads, writes docs/benchmarks.md
  python bench/model.py --batch-size 2 --duration 4 --steps 1 --write 0   # quick look

A step is forward + backward of the transducer loss (simple + pruned RNN-T) on random
features and labels. "full" trains every parameter with the whole model in train mode;
"adapters" freezes the base (requires_grad=False, eval mode: no dropout, layer skipping
or gradient-only regularisers) and trains the 761,344 adapter parameters (dim 16).

Time: both models are stepped alternately in one process, so that machine noise hits
both alike; the median step time of each is reported. Memory: each mode runs one step
in a fresh subprocess; the figure is the peak resident set size during the step minus
the resident size before it (VmHWM / VmRSS of /proc/self/status, so Linux only): model
weights and inputs excluded, gradients and saved activations included.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import write_section  # noqa: E402
from icefall.zipformer import (  # noqa: E402
    count_parameters,
    freeze_all_but_adapters,
    get_model,
    set_adapter_training,
)

MODES = ("full", "adapters")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--duration", type=float, default=10.0, help="Seconds per utterance.")
    p.add_argument("--tokens-per-second", type=float, default=3.0,
                   help="Label length per second of audio (BPE-500 LibriSpeech: about 3).")
    p.add_argument("--steps", type=int, default=3, help="Timed steps per mode.")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--write", type=int, default=1, help="1: write docs/benchmarks.md.")
    p.add_argument("--memory-worker", choices=MODES, help=argparse.SUPPRESS)
    return p


def make_model(mode: str) -> torch.nn.Module:
    """The default model with adapters (dim 16), set up for ``mode``."""
    torch.manual_seed(0)
    model = get_model({"use_adapters": True, "adapter_dim": 16})
    if mode == "adapters":
        freeze_all_but_adapters(model)
        set_adapter_training(model)
    else:
        model.train()
    return model


def make_batch(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    """(N, T, 80) features, (N,) lengths, and N random label sequences."""
    g = torch.Generator().manual_seed(0)
    frames = int(args.duration * 100)  # 10 ms frame shift
    x = torch.randn(args.batch_size, frames, 80, generator=g)
    x_lens = torch.full((args.batch_size,), frames, dtype=torch.int64)
    n_tok = max(1, int(args.duration * args.tokens_per_second))
    y = torch.randint(1, 500, (args.batch_size, n_tok), generator=g).tolist()
    return x, x_lens, y


def train_step(model: torch.nn.Module, batch) -> float:
    """Forward + backward of the late-training loss 0.5 * simple + pruned; returns seconds."""
    x, x_lens, y = batch
    start = time.perf_counter()
    simple, pruned, _ = model(x, x_lens, y, prune_range=5, am_scale=0.0, lm_scale=0.25)
    (0.5 * simple + pruned).backward()
    elapsed = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return elapsed


def _status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status (kB), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> None:
    """Resets VmHWM to the current RSS (Linux: write 5 to clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")


def memory_worker(args: argparse.Namespace) -> None:
    """Runs in a fresh process: one step of one mode; prints JSON with the increase of
    the peak resident set size over the resident size before the step."""
    torch.set_num_threads(args.threads)
    model = make_model(args.memory_worker)
    batch = make_batch(args)
    before = _status_mb("VmRSS")
    reset_peak_rss()
    train_step(model, batch)
    print(json.dumps({"peak_mb": _status_mb("VmHWM") - before}))


def measure_memory(args: argparse.Namespace, mode: str) -> float:
    cmd = [sys.executable, __file__, "--memory-worker", mode, "--batch-size",
           str(args.batch_size), "--duration", str(args.duration), "--tokens-per-second",
           str(args.tokens_per_second), "--threads", str(args.threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mb"]


def measure_time(args: argparse.Namespace) -> dict[str, list[float]]:
    models = {m: make_model(m) for m in MODES}
    batch = make_batch(args)
    for m in MODES:  # warm-up
        train_step(models[m], batch)
    times: dict[str, list[float]] = {m: [] for m in MODES}
    for _ in range(args.steps):
        for m in MODES:
            times[m].append(train_step(models[m], batch))
    return times


def main() -> None:
    args = get_parser().parse_args()
    if args.memory_worker:
        memory_worker(args)
        return
    torch.set_num_threads(args.threads)
    memory = {m: measure_memory(args, m) for m in MODES}  # before this process grows
    times = measure_time(args)
    audio = args.batch_size * args.duration
    med = {m: statistics.median(times[m]) for m in MODES}
    trainable = count_parameters(make_model("adapters"))
    rows = [f"| {m} | {med[m]:.2f} | {audio / med[m]:.1f} | {memory[m]:.0f} |" for m in MODES]
    body = "\n".join([
        f"Batch {args.batch_size} x {args.duration:g} s, {args.threads} threads, "
        f"median of {args.steps} alternating steps. Adapters-only: {trainable}.",
        "",
        "| mode | s / step | audio s / s | peak memory (MB) |",
        "|---|---|---|---|",
        *rows,
        "",
        f"Adapters-only / full: time {med['adapters'] / med['full']:.3f}x "
        f"(target <= 0.65x), peak memory {memory['adapters'] / memory['full']:.3f}x.",
        "Reference implementation on this kind of machine: 8.4 (full) and 14.6 (adapters) "
        "audio s / s at 4.0 and 3.0 GB.",
    ])
    print(body)
    if args.write:
        cmd = "python bench/model.py" + "".join(f" {a}" for a in sys.argv[1:])
        write_section("model", "Training step: full vs adapters-only (bench/model.py)",
                      cmd, body)


if __name__ == "__main__":
    main()
