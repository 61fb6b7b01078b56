#!/usr/bin/env python3
"""Adapter files, adapter-only checkpoints and merged-LoRA export on the default model.

Usage:
  python bench/adapters.py                 # default 65.5M model, 2 threads; writes docs
  python bench/adapters.py --write 0       # print only

Figures (icefall's default Zipformer, random weights, vocab 500):

- ``adapter-<name>.pt`` sizes (residual adapters at --adapter-dim 16 and 8, LoRA rank 8),
  as ``export-adapter.py`` writes them (target: under 5 MB at --adapter-dim 16);
- an epoch checkpoint of an adapter run, adapter-only (the default) and whole
  (``--save-full-checkpoints 1``), after one optimizer step (target: under 3%);
- the base-weight fingerprint's time;
- LoRA (rank 8, every ``lora_B`` random) merged into a model without it and exported as
  ``export-onnx.py`` does, against the base model's export: file sizes, whether the graphs
  are the same, and ONNX Runtime's encoder time (minimum of alternating passes), plus the
  largest difference between LoRA merged and unmerged in PyTorch.

Writes the "adapters" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.export import distinct_weights  # noqa: E402
from bench.report import write_section  # noqa: E402
from icefall.adapter_files import base_fingerprint, save_adapter_file  # noqa: E402
from icefall.export.onnx import encoder_metadata, export_transducer  # noqa: E402
from icefall.trainer import get_params, make_optimizer, save_training_checkpoint  # noqa: E402
from icefall.utils import AttributeDict  # noqa: E402
from icefall.zipformer import (  # noqa: E402
    adapter_parameters,
    freeze_all_but_adapters,
    get_model,
    installed_adapter_config,
    lora_modules,
    lora_unmerged,
    merged_state_dict,
    model_config,
    set_adapter_training,
)


def get_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--threads", type=int, default=2, help="Threads of torch and ONNX Runtime.")
    p.add_argument("--repeats", type=int, default=5, help="Timed ONNX Runtime passes.")
    p.add_argument("--write", type=int, default=1, help="1: write docs/benchmarks.md.")
    return p.parse_args()


def mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def adapter_file_sizes(tmp: Path) -> list[str]:
    rows = ["| adapter | parameters | adapter-<name>.pt |", "|---|---|---|"]
    for label, flags in (("residual, --adapter-dim 16", {"use_adapters": True,
                                                         "adapter_dim": 16}),
                         ("residual, --adapter-dim 8", {"use_adapters": True,
                                                        "adapter_dim": 8}),
                         ("lora, --lora-r 8", {"use_lora": True, "lora_r": 8})):
        model = get_model(flags)
        config = installed_adapter_config(model)
        path = save_adapter_file(tmp / f"adapter-{config.kind}.pt", model, config,
                                 base_fingerprint(model), "pretrained.pt", model_config({}))
        count = sum(p.numel() for p in adapter_parameters(model))
        rows.append(f"| {label} | {count:,} | {mb(path.stat().st_size)} |")
    return rows


def checkpoint_sizes(tmp: Path) -> tuple[str, float]:
    """Adapter-only and whole epoch checkpoints of a --adapter-dim 16 run."""
    model = get_model({"use_adapters": True, "adapter_dim": 16})
    start = time.perf_counter()
    fingerprint = base_fingerprint(model)
    fingerprint_s = time.perf_counter() - start
    freeze_all_but_adapters(model)
    model_avg = get_model({"use_adapters": True, "adapter_dim": 16}).to(torch.float64)
    params = AttributeDict(get_params(), **model_config({"use_adapters": True}),
                           base_lr=0.045, lr_batches=7500, lr_epochs=3.5,
                           lr_warmup_batches=500, adapter_min_rms=0.01,
                           base_fingerprint=fingerprint, base_checkpoint="pretrained.pt")
    optimizer, scheduler = make_optimizer(model, params)
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.randn_like(p) * 1e-3
    optimizer.step()
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    sizes = {}
    for only in (True, False):
        params.adapter_only_checkpoints = only
        path = tmp / f"epoch-{int(only)}.pt"
        save_training_checkpoint(path, params, model, model_avg, optimizer, scheduler, scaler,
                                 None)
        sizes[only] = path.stat().st_size
        path.unlink()
    line = (f"Epoch checkpoint of an adapter run (--adapter-dim 16, after one step): "
            f"adapter-only {mb(sizes[True])}, whole {mb(sizes[False])}: "
            f"{100 * sizes[True] / sizes[False]:.2f}% (target < 3%).")
    return line, fingerprint_s


def lora_model() -> torch.nn.Module:
    model = get_model({"use_lora": True, "lora_r": 8})
    g = torch.Generator().manual_seed(0)
    with torch.no_grad(), lora_unmerged(model):
        # every weight distinct, as in a trained model: the exporter stores equal
        # initializers (a fresh stack's copied layers) once, which would favour neither side
        # fairly
        distinct_weights(model)
        for m in lora_modules(model):
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.01)
    return model


def merged_vs_unmerged(model: torch.nn.Module) -> float:
    g = torch.Generator().manual_seed(1)
    x, x_lens = torch.randn(2, 400, 80, generator=g), torch.tensor([400, 310])
    with torch.no_grad():
        merged = model.eval().forward_encoder(x, x_lens)[0]
        unmerged = set_adapter_training(model).forward_encoder(x, x_lens)[0]
    return float((merged - unmerged).abs().max())


def export(model: torch.nn.Module, out: Path) -> Path:
    with torch.no_grad():
        files = export_transducer(model.eval(), out, "bench", encoder_metadata({}, model),
                                  int8=False)
    return files.encoder


def encoder_times(paths: dict[str, Path], threads: int, repeats: int) -> dict[str, float]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    sessions = {k: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
                for k, p in paths.items()}
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((1, 1000, 80)).astype(np.float32),  # 10 s
             "x_lens": np.array([1000], dtype=np.int64)}
    best = dict.fromkeys(sessions, float("inf"))
    for s in sessions.values():
        s.run(None, feeds)  # warm-up
    for _ in range(repeats):
        for k, s in sessions.items():
            start = time.perf_counter()
            s.run(None, feeds)
            best[k] = min(best[k], time.perf_counter() - start)
    return best


def lora_export(tmp: Path, threads: int, repeats: int) -> list[str]:
    torch.manual_seed(0)
    lora = lora_model()
    base = get_model({})
    base.load_state_dict({k: v for k, v in lora.state_dict().items() if k in base.state_dict()})
    merged = get_model({})
    merged.load_state_dict(merged_state_dict(lora))
    diff = merged_vs_unmerged(lora)
    paths = {"base": export(base, tmp / "base"), "lora merged": export(merged, tmp / "lora")}
    graphs = [onnx.load(str(p), load_external_data=False) for p in paths.values()]
    same = ([n.op_type for n in graphs[0].graph.node] == [n.op_type for n in graphs[1].graph.node]
            and [(t.name, tuple(t.dims)) for t in graphs[0].graph.initializer] ==
            [(t.name, tuple(t.dims)) for t in graphs[1].graph.initializer])
    times = encoder_times(paths, threads, repeats)
    rows = ["| encoder export | file | ONNX Runtime, 10 s of features |", "|---|---|---|"]
    for k, p in paths.items():
        rows.append(f"| {k} | {mb(p.stat().st_size)} | {times[k]:.3f} s |")
    return [f"LoRA rank 8 (icefall's layers, random lora_B) merged and unmerged in PyTorch "
            f"differ by at most {diff:.2e} (encoder output). Its export (merged into a model "
            f"without LoRA) has {'the same' if same else 'another'} graph and weight "
            f"shapes as the base model's; speed ratio "
            f"{times['lora merged'] / times['base']:.2f}x.", "", *rows]


def main() -> None:
    args = get_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = adapter_file_sizes(tmp)
        ckpt, fingerprint_s = checkpoint_sizes(tmp)
        export_lines = lora_export(tmp, args.threads, args.repeats)
    body = "\n".join([*files, "", ckpt, f"Fingerprinting the base weights took "
                      f"{fingerprint_s:.2f} s.", "", *export_lines])
    print(body)
    if args.write:
        write_section("adapters", "Adapter files, adapter-only checkpoints, merged LoRA "
                      "(bench/adapters.py)", "python bench/adapters.py", body)


if __name__ == "__main__":
    main()
