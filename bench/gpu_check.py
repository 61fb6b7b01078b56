#!/usr/bin/env python3
"""The CUDA check: the recipes end to end on a GPU, then the GPU figures.

Usage:
  make gpu-check                                   # on any CUDA machine (about 5 minutes)
  python bench/gpu_check.py --out DIR              # the same, results in DIR
  python bench/gpu_check.py --device cpu --quick   # the whole script on a CPU (tests use it)
  python bench/gpu_check.py --merge DIR/gpu-section.md   # figures into docs/benchmarks.md

Checks, each reported pass/fail (exit status 1 if any fails), on the generated corpus of
the tests (test/corpus.py) and its small model:

- train_fp16: zipformer/train.py --use-fp16 1 --average-period 2 --save-every-n 4, two
  epochs: grad scale logged, checkpoints finite and CPU-only, model_avg written.
- train_bf16: the same with --use-bf16 1 (one epoch).
- resume: from the fp16 run's checkpoint-4.pt with --start-batch 4: the same final
  parameters as the uninterrupted run (both with --deterministic 1).
- ddp: --world-size 2 over NCCL, identical ranks (with two GPUs or more).
- decode: decode.py --use-averaged-model 1 on the GPU and on the CPU from the same
  checkpoint; every differing utterance is listed.
- export: export-onnx.py from the GPU-trained checkpoint, decoded with onnx_decode.py
  and compared with PyTorch's words.
- figures (the default 65.5M model, random weights): train.py's own step
  (icefall.trainer.train_step) at 16 x 10 s, full vs adapters-only; the pruned RNN-T loss
  (simple + pruned, forward and backward) alone at the same shapes and its share of the
  full step; peak GPU memory; device synchronisations per step; batched greedy decoding
  RTF (encoder + search) at batch 1 and 64.

Writes DIR/gpu-check.json (every figure and check) and DIR/gpu-section.md (the section of
docs/benchmarks.md, merged with --merge).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "test"))

from corpus import make_corpus  # noqa: E402
from runs import RECIPES, decode_args, model_flags, train_args  # noqa: E402

from bench.report import write_section  # noqa: E402
from icefall.checkpoint import load_checkpoint_file  # noqa: E402
from icefall.decode.report import read_transcripts  # noqa: E402

SECTION = "gpu-check"


def get_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "gpu-check-out")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--quick", action="store_true",
                   help="Small figures (batch 2 x 2 s, 2 steps): to try the script on a CPU.")
    p.add_argument("--steps", type=int, default=10, help="Timed training steps per set-up.")
    p.add_argument("--merge", type=Path, help="Write this gpu-section.md into "
                   "docs/benchmarks.md and exit.")
    return p.parse_args()


class Report:
    """Checks (name -> {"ok": bool, ...}) and figures, written as JSON and markdown."""

    def __init__(self) -> None:
        self.checks: dict[str, dict[str, Any]] = {}
        self.figures: dict[str, Any] = {}

    @contextlib.contextmanager
    def check(self, name: str) -> Iterator[dict[str, Any]]:
        entry: dict[str, Any] = {"ok": True}
        start = time.time()
        try:
            yield entry
        except Exception as e:  # noqa: BLE001 - a failed check is recorded, the rest go on
            entry.update(ok=False, error=f"{type(e).__name__}: {e}",
                         trace=traceback.format_exc()[-3000:])
        entry["seconds"] = round(time.time() - start, 1)
        self.checks[name] = entry
        print(f"[gpu-check] {name}: {'ok' if entry['ok'] else 'FAILED'} "
              f"({entry['seconds']} s) {entry.get('error', '')}", flush=True)

    @property
    def ok(self) -> bool:
        return all(c["ok"] for c in self.checks.values())


def run_script(recipe: str, script: str, args: list[str], cpu_only: bool = False
               ) -> subprocess.CompletedProcess:
    """A recipe script in a subprocess; raises with the end of its stderr on failure."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    if cpu_only:
        env["CUDA_VISIBLE_DEVICES"] = ""
    proc = subprocess.run([sys.executable, str(RECIPES / recipe / script), *args],
                          capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"{recipe}/{script} exited {proc.returncode}: "
                           f"{proc.stderr[-2500:]}")
    return proc


def _all_finite(state: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


def load_with_locations(path: Path) -> tuple[dict[str, Any], set[str]]:
    """A checkpoint read weights-only onto the CPU, and the devices its tensors were saved
    from ("cpu", "cuda:0", ...), as torch.load reports them to map_location (a key named
    "cuda", the CUDA RNG state's, is no GPU tensor)."""
    seen: set[str] = set()

    def record(storage: Any, location: str) -> Any:
        seen.add(location)
        return storage  # deserialised on the CPU

    return torch.load(path, map_location=record, weights_only=True), seen


def check_checkpoint(path: Path) -> dict[str, Any]:
    """Loads weights-only, checks finiteness and that no tensor was saved on a GPU."""
    ckpt, locations = load_with_locations(path)
    if any(loc.startswith("cuda") for loc in locations):
        raise AssertionError(f"{path} holds tensors saved on a GPU ({sorted(locations)})")
    if not _all_finite(ckpt["model"]) or not _all_finite(ckpt["model_avg"] or {}):
        raise AssertionError(f"{path} holds non-finite parameters")
    if ckpt["model_avg"] is None:
        raise AssertionError(f"{path} has no model_avg")
    return ckpt


def train_run(corpus, exp: Path, epochs: int, *flags: str) -> str:
    """zipformer/train.py on domain A; returns its log."""
    run_script("zipformer", "train.py", train_args(
        corpus, exp, "a", epochs, "--average-period", "2", "--save-every-n", "4",
        "--keep-last-k", "100", "--deterministic", "1", *flags))
    return (exp / "log" / "log-train").read_text()


def check_training(rep: Report, corpus, work: Path, device: str) -> None:
    cuda = device == "cuda"
    with rep.check("train_fp16") as e:
        log = train_run(corpus, work / "fp16", 2, "--use-fp16", "1")
        want = "Training in autocast torch.float16 on cuda" if cuda else "Training in float32"
        assert want in log, want
        assert not cuda or "grad_scale:" in log, "no grad_scale in the progress lines"
        assert (work / "fp16" / "checkpoint-4.pt").exists()
        ckpt = check_checkpoint(work / "fp16" / "epoch-2.pt")
        e.update(batches=ckpt["params"]["batch_idx_train"],
                 skipped=ckpt["params"]["num_bad_batches"],
                 fp16_overflows=ckpt["params"].get("num_overflow_batches"))
    with rep.check("train_bf16") as e:
        small = ("--train-cuts", "doma_cuts_valid.jsonl.gz", "--drop-last", "0")
        log = train_run(corpus, work / "bf16", 1, "--use-bf16", "1",
                        *(small if not cuda else ()))  # bfloat16 is slow on CPUs
        assert f"Training in autocast torch.bfloat16 on {device}" in log
        e["batches"] = check_checkpoint(work / "bf16" / "epoch-1.pt")["params"]["batch_idx_train"]
    with rep.check("resume") as e:
        resumed = work / "resumed"
        resumed.mkdir()
        shutil.copy(work / "fp16" / "checkpoint-4.pt", resumed / "checkpoint-4.pt")
        train_run(corpus, resumed, 2, "--use-fp16", "1", "--start-batch", "4")
        a = load_checkpoint_file(work / "fp16" / "epoch-2.pt")
        b = load_checkpoint_file(resumed / "epoch-2.pt")
        diff = {k: max(float((a[k][n] - b[k][n]).abs().max()) for n in a[k])
                for k in ("model", "model_avg")}
        # model_avg is saved in float32 (as icefall saves it): resuming from a saved
        # average rounds it once, so it may differ by float32 rounding.
        e.update(model_max_abs_difference=diff["model"],
                 model_avg_max_abs_difference=diff["model_avg"])
        assert diff["model"] <= 1e-6, f"resumed model differs by {diff['model']:.3g}"
        assert diff["model_avg"] <= 1e-5, f"resumed average differs by {diff['model_avg']:.3g}"


def check_ddp(rep: Report, corpus, work: Path, device: str) -> None:
    if device != "cuda" or torch.cuda.device_count() < 2:
        rep.figures["ddp"] = "skipped: fewer than two GPUs"
        return
    with rep.check("ddp") as e:
        log = train_run(corpus, work / "ddp", 1, "--use-fp16", "1", "--world-size", "2",
                        "--master-port", "29611")
        assert "(nccl)" in log
        line = next(ln for ln in log.splitlines() if "checksum difference" in ln)
        e["line"] = line.split("] ", 1)[-1]
        assert line.rstrip().endswith(": 0"), line


def check_decoding(rep: Report, corpus, work: Path, device: str) -> None:
    exp = work / "fp16"
    sets = "A=doma_cuts_valid.jsonl.gz,B=domb_cuts_valid.jsonl.gz"
    recogs: dict[str, dict[str, list]] = {}
    with rep.check("decode") as e:
        for where in (device, "cpu"):
            res = work / f"decode-{where}"
            run_script("zipformer", "decode.py", decode_args(
                corpus, exp, 2, "--res-dir", str(res), averaged=1, sets=sets),
                cpu_only=where == "cpu")
            recogs[where] = {f"{f.name}:{cid}": hyp for f in sorted(res.glob("recogs-*.txt"))
                             for cid, _, hyp in read_transcripts(f)}
        a, b = recogs[device], recogs["cpu"]
        differ = sorted(k for k in a if a[k] != b.get(k))
        e.update(utterances=len(a), differing=len(differ),
                 differences=[{"utt": k, device: a[k], "cpu": b.get(k)} for k in differ])
        assert len(a) == len(b) > 0 and len(differ) <= max(1, len(a) // 50), differ
    with rep.check("export") as e:
        tokens = Path(corpus["bpe_model"]).parent / "tokens.txt"
        run_script("zipformer", "export-onnx.py", [
            "--epoch", "2", "--avg", "1", "--use-averaged-model", "1", "--exp-dir", str(exp),
            "--tokens", str(tokens), *model_flags()])
        tag = "epoch-2-avg-1"
        res = work / "onnx"
        run_script("zipformer", "onnx_decode.py", [
            "--encoder-model-filename", str(exp / f"encoder-{tag}.onnx"),
            "--decoder-model-filename", str(exp / f"decoder-{tag}.onnx"),
            "--joiner-model-filename", str(exp / f"joiner-{tag}.onnx"),
            "--tokens", str(tokens), "--manifest-dir", str(corpus["manifest_dir"]),
            "--test-sets", sets, "--num-workers", "0", "--max-duration", "30",
            "--res-dir", str(res)])
        onnx = {f"{f.name}:{cid}": hyp for f in sorted(res.glob("recogs-*.txt"))
                for cid, _, hyp in read_transcripts(f)}
        cpu = {k.split(":", 1)[1]: v for k, v in recogs.get("cpu", {}).items()}
        differ = [k for k in onnx if onnx[k] != cpu.get(k.split(":", 1)[1])]
        e.update(utterances=len(onnx), differing_from_pytorch_cpu=len(differ))
        assert len(onnx) > 0 and len(differ) <= max(1, len(onnx) // 50), differ


# ---------------------------------------------------------------------------- the figures


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _train_args_ns(args: argparse.Namespace) -> argparse.Namespace:
    """bench/train.py's options for the figures."""
    quick = args.quick
    return argparse.Namespace(batch_size=2 if quick else 16, duration=2.0 if quick else 10.0,
                              steps=2 if quick else args.steps, threads=2, device=args.device,
                              use_fp16=1, use_bf16=0)


def _syncs_in_one_step(params, st, batch) -> int | None:
    """Device synchronisations CUDA reports during one train_step (None on a CPU)."""
    from icefall.trainer import train_step

    if st.device.type != "cuda":
        return None
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            params.batch_idx_train += 1
            train_step(params, st, batch)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def training_figures(rep: Report, args: argparse.Namespace, work: Path) -> None:
    from bench import train as bench_train

    opts = _train_args_ns(args)
    bpe = bench_train.make_bpe(work)
    device = torch.device(args.device)
    batch = bench_train.make_batch(opts)
    times, peaks, syncs = {}, {}, {}
    for setup in ("full", "adapters"):
        params, st = bench_train.make_state(setup, opts, bpe)
        for _ in range(2):  # warm-up: optimizer state, allocator, kernels
            bench_train.timed_step(params, st, batch)
        syncs[setup] = _syncs_in_one_step(params, st, batch)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times[setup] = [bench_train.timed_step(params, st, batch) for _ in range(opts.steps)]
        if device.type == "cuda":
            peaks[setup] = torch.cuda.max_memory_allocated(device) / 2**30
        del params, st
        if device.type == "cuda":
            torch.cuda.empty_cache()
    step = {s: statistics.median(t) for s, t in times.items()}
    audio = opts.batch_size * opts.duration
    rep.figures["training"] = {
        "batch": f"{opts.batch_size} x {opts.duration:g} s", "precision": "fp16 AMP",
        "seconds_per_step": step, "audio_seconds_per_second": {
            s: audio / v for s, v in step.items()},
        "adapters_throughput_ratio": step["full"] / step["adapters"],
        "peak_memory_gib": peaks or None, "device_syncs_per_step": syncs}
    rep.figures["loss"] = loss_figures(opts, device, step["full"])


def loss_figures(opts: argparse.Namespace, device: torch.device, full_step: float
                 ) -> dict[str, Any]:
    """Simple + pruned loss, forward and backward, at the model's shapes: T'' from the
    frontend and encoder, ~2.5 BPE tokens a word at 3 words a second."""
    from bench.loss import make_inputs, pruned_step
    from icefall.rnnt_loss import trusted_inputs

    frames = int(opts.duration * 100)
    t = (((frames - 7) // 2) + 1) // 2
    s = max(2, int(opts.duration * 3 * 2.5))
    times = []
    for i in range(opts.steps + 2):
        x = {k: v.to(device) if k != "boundary" else v for k, v in
             make_inputs(opts.batch_size, t, s).items()}
        x["am"] = x["am"].detach().requires_grad_()
        x["lm"] = x["lm"].detach().requires_grad_()
        _sync(device)
        start = time.perf_counter()
        with trusted_inputs():  # as the model calls it: no value checks read the device
            pruned_step(x)
        _sync(device)
        if i >= 2:
            times.append(time.perf_counter() - start)
    loss = statistics.median(times)
    return {"shapes": f"B={opts.batch_size} T={t} S={s} C=500 prune_range=5",
            "seconds": loss, "share_of_full_step": loss / full_step}


def decoding_figures(rep: Report, args: argparse.Namespace) -> None:
    """Greedy search RTF (encoder + search) at batch 1 and a large batch."""
    from bench.decode import calibrate_blank
    from icefall.decode.search import decode_batch
    from icefall.zipformer import get_model

    device = torch.device(args.device)
    duration = 2.0 if args.quick else 10.0
    sizes = (1, 4) if args.quick else (1, 64)
    n = sizes[1]
    torch.manual_seed(0)
    model = get_model({"vocab_size": 500, "blank_id": 0}).to(device).eval()
    frames = int(duration * 100)
    x = torch.randn(n, frames, 80, device=device)
    x_lens = torch.full((n,), frames, dtype=torch.int64)
    calibrate_blank(model, x, x_lens)
    rtf = {}
    for size in sizes:
        count = min(n, 16) if size == 1 else n  # batch 1: 16 utterances are enough
        for rep_i in range(2):  # the first pass warms up
            _sync(device)
            start = time.perf_counter()
            with torch.no_grad():
                for i in range(0, count, size):
                    enc, lens = model.forward_encoder(x[i:i + size], x_lens[i:i + size])
                    decode_batch(model, enc, lens, "greedy_search")
            _sync(device)
            if rep_i:
                rtf[size] = (time.perf_counter() - start) / (count * duration)
    rep.figures["decoding"] = {"duration": duration, "rtf_greedy": rtf,
                               "speedup": rtf[sizes[0]] / rtf[sizes[1]]}


# ---------------------------------------------------------------------------- the report


def device_line(device: str) -> str:
    name = (torch.cuda.get_device_name(0) if device == "cuda" else
            f"CPU ({platform.processor() or platform.machine()})")
    count = torch.cuda.device_count() if device == "cuda" else 0
    return (f"{name}{f' x {count}' if count > 1 else ''}, torch {torch.__version__}"
            f"{', CUDA ' + torch.version.cuda if device == 'cuda' else ''}, "
            f"Python {platform.python_version()}")


def section(rep: Report, device: str) -> str:
    lines = [f"Device: {device_line(device)}.", "", "| check | result |", "|---|---|"]
    for name, c in rep.checks.items():
        detail = {k: v for k, v in c.items() if k not in ("ok", "trace", "differences")}
        lines.append(f"| {name} | {'pass' if c['ok'] else 'FAIL'} {json.dumps(detail)} |")
    t, loss, d = (rep.figures.get(k) for k in ("training", "loss", "decoding"))
    if t:
        lines += ["", f"Default 65.5M model, {t['batch']}, {t['precision']}, train.py's step:",
                  "", "| set-up | s / step | audio s / s | peak GiB | syncs / step |",
                  "|---|---|---|---|---|"]
        for s in ("full", "adapters"):
            peak = (t["peak_memory_gib"] or {}).get(s)
            lines.append(f"| {s} | {t['seconds_per_step'][s]:.3f} | "
                         f"{t['audio_seconds_per_second'][s]:.0f} | "
                         f"{'n/a' if peak is None else f'{peak:.1f}'} | "
                         f"{t['device_syncs_per_step'][s]} |")
        lines += ["", f"Adapters-only throughput: {t['adapters_throughput_ratio']:.2f}x full "
                  "training (target >= 1.7x)."]
    if loss:
        lines += [f"Pruned RNN-T loss (simple + pruned, forward + backward, {loss['shapes']}): "
                  f"{loss['seconds'] * 1000:.1f} ms, {100 * loss['share_of_full_step']:.1f}% "
                  "of the full step (target <= 15%)."]
    if d:
        rtf = d["rtf_greedy"]
        lines += ["", f"Greedy search RTF (encoder + search, {d['duration']:g} s utterances): "
                  + ", ".join(f"batch {k}: {v:.5f}" for k, v in rtf.items())
                  + f" ({d['speedup']:.1f}x)."]
    return "\n".join(lines)


def main() -> None:
    args = get_args()
    if args.merge:
        text = args.merge.read_text()
        command, _, body = text.partition("\n")
        write_section(SECTION, "GPU check (make gpu-check)", command, body)
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check.py: error: no CUDA device (torch.cuda.is_available() is False); "
                 "--device cpu --quick runs the script on a CPU")
    out = args.out.resolve()
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    rep = Report()
    corpus = make_corpus(work / "corpus", num_train=80 if args.quick else 200, num_valid=16)
    check_training(rep, corpus, work, args.device)
    check_ddp(rep, corpus, work, args.device)
    check_decoding(rep, corpus, work, args.device)
    with rep.check("figures"):
        training_figures(rep, args, work)
        decoding_figures(rep, args)
    (out / "gpu-check.json").write_text(json.dumps(
        {"device": device_line(args.device), "checks": rep.checks, "figures": rep.figures},
        indent=1, default=str))
    command = "make gpu-check" if not args.quick else "python bench/gpu_check.py " + \
        " ".join(sys.argv[1:])
    (out / "gpu-section.md").write_text(command + "\n" + section(rep, args.device) + "\n")
    print(section(rep, args.device))
    shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if rep.ok else 1)


if __name__ == "__main__":
    main()
