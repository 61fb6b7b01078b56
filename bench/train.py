#!/usr/bin/env python3
"""Training throughput of the default 65.5M model: full training vs adapter fine-tuning.

Usage:
  python bench/train.py                      # 8 x 10 s batches, 2 threads (CPU)
  python bench/train.py --device cuda --batch-size 32 --use-fp16 1   # on a GPU
  python bench/train.py --batch-size 2 --duration 4 --steps 2 --write 0   # quick look

Each step is the recipe's own ``icefall.trainer.train_step``: forward, the weighted
pruned RNN-T loss, backward, Eden and ScaledAdam (with clipping). "full" trains every
parameter (base recipe); "adapters" is ``zipformer_adapter/train.py --do-finetune 1
--use-adapters 1 --adapter-dim 16``: base frozen and in eval mode, 761,344 trainable
parameters, optimizer state for those only.

Throughput: seconds of audio per second of wall time, median over steps that alternate
between the two set-ups in one process. Peak memory: each set-up runs warm-up + one
step in a fresh subprocess; on CPU the peak resident set size minus the size before the
first step (Linux VmHWM), on CUDA ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import write_section  # noqa: E402
from icefall.cli.train import get_parser  # noqa: E402
from icefall.data import load_bpe_model, train_bpe_model  # noqa: E402
from icefall.data.tokenizer import set_model_dims_from_bpe  # noqa: E402
from icefall.trainer import (  # noqa: E402
    get_params,
    make_train_state,
    set_train_mode,
    train_step,
)


def _recipes():
    """egs/librispeech/ASR/recipes.py: the two recipes' defaults."""
    spec = importlib.util.spec_from_file_location(
        "librispeech_recipes", ROOT / "egs" / "librispeech" / "ASR" / "recipes.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


_RECIPES = _recipes()
SETUPS = {"full": _RECIPES.BASE.train, "adapters": _RECIPES.ADAPTER.train}


def _status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status (kB), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> None:
    """Resets VmHWM to the current RSS (Linux: write 5 to clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")



def get_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--duration", type=float, default=10.0, help="Seconds per utterance.")
    p.add_argument("--steps", type=int, default=3, help="Timed steps per set-up.")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--use-fp16", type=int, default=0)
    p.add_argument("--use-bf16", type=int, default=0)
    p.add_argument("--write", type=int, default=1, help="1: write docs/benchmarks.md.")
    p.add_argument("--memory-worker", choices=list(SETUPS), help=argparse.SUPPRESS)
    p.add_argument("--work-dir", help=argparse.SUPPRESS)
    return p.parse_args()


def make_bpe(work_dir: Path) -> Path:
    """A 500-piece BPE model on random word text (the recipe's vocabulary size)."""
    g = torch.Generator().manual_seed(0)
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    words = ["".join(letters[i] for i in torch.randint(0, 26, (int(n),), generator=g))
             for n in torch.randint(2, 9, (3000,), generator=g)]
    lines = [" ".join(words[i: i + 12]) for i in range(0, len(words), 12)]
    return train_bpe_model(lines * 4, work_dir / "lang_bpe_500", vocab_size=500)


def make_state(setup: str, args: argparse.Namespace, bpe: Path):
    """(params, TrainState) as train.py builds them (pretrained weights are random)."""
    recipe = SETUPS[setup]
    flags = get_parser(recipe).parse_args(["--bpe-model", str(bpe), "--tensorboard", "0",
                                           "--do-finetune", "0",
                                           "--use-fp16", str(args.use_fp16),
                                           "--use-bf16", str(args.use_bf16)])
    params = get_params()
    params.update(vars(flags))
    params.update(world_size=1, cur_epoch=1, batch_idx_train=1000)
    sp = load_bpe_model(bpe)
    set_model_dims_from_bpe(params, sp)
    torch.manual_seed(0)
    st, _ = make_train_state(params, 0, 1, torch.device(args.device), sp)
    set_train_mode(st.model, params)
    return params, st


def make_batch(args: argparse.Namespace) -> dict:
    """A lhotse-style batch: (N, T, 80) features and transcripts of ~3 words a second."""
    g = torch.Generator().manual_seed(1)
    frames = int(args.duration * 100)
    words = ["THE", "QUICK", "BROWN", "FOX", "JUMPS", "OVER", "LAZY", "DOG", "AGAIN"]
    n_words = int(args.duration * 3)
    texts = [" ".join(words[int(i)] for i in torch.randint(0, len(words), (n_words,),
                                                           generator=g))
             for _ in range(args.batch_size)]
    return {"inputs": torch.randn(args.batch_size, frames, 80, generator=g),
            "supervisions": {"text": texts,
                             "num_frames": torch.full((args.batch_size,), frames)}}


def timed_step(params, st, batch) -> float:
    if st.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    params.batch_idx_train += 1
    if train_step(params, st, batch) is None:
        raise RuntimeError("non-finite loss in the benchmark")
    if st.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def memory_worker(args: argparse.Namespace) -> None:
    """In a fresh process: warm-up step + one step; prints the peak memory in MB."""
    torch.set_num_threads(args.threads)
    params, st = make_state(args.memory_worker, args, Path(args.work_dir) / "lang_bpe_500"
                            / "bpe.model")
    batch = make_batch(args)
    if st.device.type == "cuda":
        timed_step(params, st, batch)
        torch.cuda.reset_peak_memory_stats()
        timed_step(params, st, batch)
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        before = _status_mb("VmRSS")
        reset_peak_rss()
        timed_step(params, st, batch)  # first step: also allocates optimizer state
        timed_step(params, st, batch)
        peak = _status_mb("VmHWM") - before
    print(json.dumps({"peak_mb": peak}))


def measure_memory(args: argparse.Namespace, setup: str, work_dir: Path) -> float:
    cmd = [sys.executable, __file__, "--memory-worker", setup, "--work-dir", str(work_dir),
           "--batch-size", str(args.batch_size), "--duration", str(args.duration),
           "--threads", str(args.threads), "--device", args.device,
           "--use-fp16", str(args.use_fp16), "--use-bf16", str(args.use_bf16)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mb"]


def measure_time(args: argparse.Namespace, bpe: Path) -> dict[str, list[float]]:
    states = {s: make_state(s, args, bpe) for s in SETUPS}
    batch = make_batch(args)
    for params, st in states.values():
        timed_step(params, st, batch)  # warm-up
    times: dict[str, list[float]] = {s: [] for s in SETUPS}
    for _ in range(args.steps):
        for s, (params, st) in states.items():
            times[s].append(timed_step(params, st, batch))
    return times


def report(args: argparse.Namespace, times: dict[str, list[float]],
           memory: dict[str, float]) -> str:
    audio = args.batch_size * args.duration
    speed = {s: audio / statistics.median(times[s]) for s in SETUPS}
    rows = [f"| {s} | {statistics.median(times[s]):.2f} | {speed[s]:.1f} | {memory[s]:.0f} |"
            for s in SETUPS]
    dev = args.device + (" (fp16 AMP)" if args.use_fp16 else "") + \
        (" (bf16 AMP)" if args.use_bf16 else "")
    return "\n".join([
        f"Device {dev}; batch {args.batch_size} x {args.duration:g} s; median of "
        f"{args.steps} alternating steps; each step = forward, loss, backward, "
        "ScaledAdam + Eden.",
        "",
        "| set-up | s / step | audio s / s | peak memory (MB) |",
        "|---|---|---|---|",
        *rows,
        "",
        f"Adapter fine-tuning / full training: throughput "
        f"{speed['adapters'] / speed['full']:.2f}x (target >= 1.7x; the reference "
        f"reaches 1.74x on this kind of machine), peak memory "
        f"{memory['adapters'] / memory['full']:.2f}x.",
    ])


def main() -> None:
    args = get_args()
    if args.memory_worker:
        memory_worker(args)
        return
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bpe = make_bpe(work)
        memory = {s: measure_memory(args, s, work) for s in SETUPS}
        times = measure_time(args, bpe)
    body = report(args, times, memory)
    print(body)
    if args.write:
        name = "train" if args.device == "cpu" else f"train-{args.device}"
        cmd = "python bench/train.py" + "".join(f" {a}" for a in sys.argv[1:])
        write_section(name, f"Training throughput: full vs adapters ({args.device}, "
                      "bench/train.py)", cmd, body)


if __name__ == "__main__":
    main()
