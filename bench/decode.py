#!/usr/bin/env python3
"""Real-time factor of decoding with the default 65.5M model: batch 1 vs batch 16.

Usage:
  python bench/decode.py                 # 16 utterances of 10 s, 2 threads (~4 min)
  python bench/decode.py --num-utts 4 --duration 4 --write 0     # quick look

The same utterances are processed one at a time and as one padded batch. The encoder
and each search (greedy_search, modified_beam_search with beam 4) are timed apart: the
target concerns the search, which batching serves without a Python loop over
utterances; the encoder's share is reported next to it, and the end-to-end RTF is their
sum. Each search runs twice: as decoding runs (linear layers of MIN_ROWS rows or more
on oneDNN, see icefall/zipformer/cpu_linear.py) and with F.linear (MKL) throughout. RTF = processing
seconds / audio seconds. The weights are
random; the joiner's blank bias is set so that about one frame in eight emits a token
(~3 tokens a second, LibriSpeech's BPE-500 rate), since the search's cost depends on
how many tokens it emits.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import write_section  # noqa: E402
from icefall.decode.search import decode_batch  # noqa: E402
from icefall.decode.step import TransducerStep  # noqa: E402
from icefall.zipformer import get_model  # noqa: E402
from icefall.zipformer.cpu_linear import MIN_ROWS, use_onednn  # noqa: E402

METHODS = ("greedy_search", "modified_beam_search")
ROUTES = ("onednn", "torch")  # icefall.zipformer.cpu_linear on, and F.linear throughout
LABELS = {"onednn": "oneDNN route", "torch": "F.linear (MKL)"}


def get_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-utts", type=int, default=16, help="Utterances (= batch size).")
    p.add_argument("--duration", type=float, default=10.0, help="Seconds per utterance.")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5, help="Timed repetitions (median).")
    p.add_argument("--passes", type=int, default=3,
                   help="Search passes per repetition (their mean is one measurement).")
    p.add_argument("--write", type=int, default=1, help="1: write docs/benchmarks.md.")
    return p.parse_args()


def calibrate_blank(model, x: torch.Tensor, x_lens: torch.Tensor, rate: float = 0.125) -> float:
    """Adds to the blank logit's bias until greedy search emits on ~``rate`` of frames."""
    with torch.no_grad():
        enc, lens = model.forward_encoder(x[:1], x_lens[:1])
        lo, hi = -20.0, 20.0
        for _ in range(14):
            mid = (lo + hi) / 2
            model.joiner.output_linear.bias[0] += mid
            hyp = decode_batch(model, enc, lens, "greedy_search")[0]
            model.joiner.output_linear.bias[0] -= mid
            lo, hi = (mid, hi) if len(hyp) / int(lens[0]) > rate else (lo, mid)
        model.joiner.output_linear.bias[0] += (lo + hi) / 2
        return len(decode_batch(model, enc, lens, "greedy_search")[0]) / int(lens[0])


def encode(model, x: torch.Tensor, x_lens: torch.Tensor, batch_size: int
           ) -> tuple[float, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Seconds to encode all utterances in batches of ``batch_size``, and the outputs."""
    start, outs = time.perf_counter(), []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            outs.append(model.forward_encoder(x[i: i + batch_size], x_lens[i: i + batch_size]))
    return time.perf_counter() - start, outs


def search(model, encoded: list[tuple[torch.Tensor, torch.Tensor]], method: str,
           passes: int = 1) -> float:
    """Seconds to run ``method`` over the encoder outputs, batch by batch (the mean of
    ``passes`` passes: a batch-16 greedy pass alone lasts only ~40 ms)."""
    start = time.perf_counter()
    with torch.no_grad():
        for _ in range(passes):
            for enc, lens in encoded:
                decode_batch(model, enc, lens, method, beam_size=4)
    return (time.perf_counter() - start) / passes


def joiner_floor(model, encoded: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Seconds of the work no exact frame-synchronous greedy search can skip: the encoder
    projection of every frame and, frame by frame, the joiner and the argmax for every
    utterance in the batch (decoder updates and bookkeeping left out)."""
    start = time.perf_counter()
    with torch.inference_mode():
        for enc, _ in encoded:
            step = TransducerStep(model)  # the joiner as the searches run it
            frames = step.project_encoder(enc.transpose(0, 1))  # (T, N, J)
            dec = torch.zeros_like(frames[0])  # (N, J)
            for frame in frames.unbind(0):
                step.logits(frame, dec).argmax(dim=-1)
    return time.perf_counter() - start


def measure_once(model, x, x_lens, sizes: tuple[int, ...], turn: int, passes: int
                 ) -> dict[int, dict[str, float]]:
    """Seconds of each part per batch size in one repetition: the encoder, each search
    with each linear-layer route (icefall.zipformer.cpu_linear), and the joiner floor.

    After both encoders, the batch sizes take turns search by search, so that the two
    times a ratio compares lie within a second of each other. The routes swap order from
    one repetition to the next, the batch sizes every second repetition, after an untimed
    search pass.
    """
    out: dict[int, dict[str, float]] = {bs: {} for bs in sizes}
    encoded = {}
    for bs in sizes:
        out[bs]["encoder"], encoded[bs] = encode(model, x, x_lens, bs)
    for bs in sizes:
        search(model, encoded[bs], METHODS[0])  # warm-up after the encoder's large tensors
    for route in ROUTES[::-1] if turn % 2 else ROUTES:
        previous = use_onednn(route == "onednn")
        try:
            for m in METHODS:
                for bs in sizes[::-1] if turn // 2 % 2 else sizes:
                    out[bs][f"{m}/{route}"] = search(model, encoded[bs], m, passes)
        finally:
            use_onednn(previous)
    for bs in sizes:
        out[bs]["floor"] = joiner_floor(model, encoded[bs])
    return out


def measure(model, x, x_lens, sizes: tuple[int, ...], repeats: int, passes: int
            ) -> dict[int, dict[str, list[float]]]:
    """Seconds of each part per batch size and repetition (:func:`measure_once`)."""
    for bs in sizes:
        encode(model, x[:bs], x_lens[:bs], bs)  # warm-up
    runs: dict[int, dict[str, list[float]]] = {bs: {} for bs in sizes}
    for turn in range(repeats):
        for bs, parts in measure_once(model, x, x_lens, sizes, turn, passes).items():
            for part, seconds in parts.items():
                runs[bs].setdefault(part, []).append(seconds)
    return runs


def target_line(runs: dict[int, dict[str, list[float]]], n: int) -> str:
    """The greedy-search target, from ratios of times taken side by side.

    Headline: both batch sizes as decoding runs them (the oneDNN route, timed one after
    the other), the median over the repetitions of their ratio. Also given: the ratio
    against the faster of the two batch-1 routes of the repetition (both run the same
    one-row products in the search, so that either is a fair batch-1 figure and the
    faster one the stricter), and the ratio with F.linear (MKL) throughout.
    """
    one, many = runs[1], runs[n]
    g = "greedy_search"
    own = {r: [a / b for a, b in zip(one[f"{g}/{r}"], many[f"{g}/{r}"])] for r in ROUTES}
    strict = [min(a, b) / c for a, b, c in
              zip(one[f"{g}/onednn"], one[f"{g}/torch"], many[f"{g}/onednn"])]
    mid = {k: statistics.median(v) for k, v in (*own.items(), ("strict", strict))}
    return (f"Target: batched greedy search >= 4x faster per utterance than batch 1: "
            f"{mid['onednn']:.2f}x, the median over the repetitions of batch 1's time / "
            f"batch {n}'s, timed one after the other as decoding runs (oneDNN for linear "
            f"layers of >= {MIN_ROWS} rows); range {min(own['onednn']):.2f}-"
            f"{max(own['onednn']):.2f}x. Against the faster of the repetition's two batch-1 "
            f"routes: {mid['strict']:.2f}x (range {min(strict):.2f}-{max(strict):.2f}x). "
            f"With F.linear (MKL) throughout: {mid['torch']:.2f}x.")


def table(t: dict[int, dict[str, float]], n: int, audio: float) -> list[str]:
    """Markdown rows: RTF at batch 1 and n, and the speed-up per utterance."""
    def row(name: str, one: float, many: float) -> str:
        return f"| {name} | {one / audio:.5f} | {many / audio:.5f} | {one / many:.2f}x |"

    parts = [("encoder", "encoder")]
    parts += [(f"{m}/{r}", f"{m}, {LABELS[r]}") for m in METHODS for r in ROUTES]
    parts += [("floor", "joiner floor (see below)")]
    rows = [row(name, t[1][key], t[n][key]) for key, name in parts]
    rows += [row(f"encoder + {m} (end to end)", t[1]["encoder"] + t[1][f"{m}/onednn"],
                 t[n]["encoder"] + t[n][f"{m}/onednn"]) for m in METHODS]
    return rows


def main() -> None:
    args = get_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = get_model({"use_adapters": True, "adapter_dim": 16}).eval()
    frames = int(args.duration * 100)
    x = torch.randn(args.num_utts, frames, 80)
    x_lens = torch.full((args.num_utts,), frames)
    rate = calibrate_blank(model, x, x_lens)
    audio, n = args.num_utts * args.duration, args.num_utts
    runs = measure(model, x, x_lens, (1, n), args.repeats, args.passes)
    t = {bs: {k: statistics.median(v) for k, v in r.items()} for bs, r in runs.items()}
    gain = {m: t[n][f"{m}/torch"] / t[n][f"{m}/onednn"] for m in METHODS}
    body = "\n".join([
        f"{n} utterances x {args.duration:g} s, {args.threads} threads, median of "
        f"{args.repeats} (batch sizes taking turns; each search timed over {args.passes} "
        f"passes); tokens emitted on {100 * rate:.1f}% "
        "of encoder frames.",
        "",
        f"| part | RTF, batch 1 | RTF, batch {n} | batch {n} speed-up per utterance |",
        "|---|---|---|---|",
        *table(t, n, audio),
        "",
        target_line(runs, n) + f" oneDNN makes batch-{n} greedy search "
        f"{gain['greedy_search']:.2f}x and modified beam search "
        f"{gain['modified_beam_search']:.2f}x faster (medians).",
        "",
        f"Joiner floor: the encoder projection of every frame plus, frame by frame, the "
        "joiner (sum, activation, 512x500 output layer) and the argmax for every utterance, "
        "as the searches run them (icefall/decode/step.py), i.e. the work no exact "
        "frame-synchronous greedy search can skip (decoder updates and bookkeeping left "
        f"out). Even if everything else in a batch-{n} step were free, greedy search could "
        f"be at most {t[1]['greedy_search/onednn'] / t[n]['floor']:.2f}x faster per "
        f"utterance than at batch 1 here. The encoder is "
        f"{t[n]['encoder'] / t[1]['encoder']:.2f}x slower per utterance at batch {n} on "
        f"this 2-core machine (its element-wise activations over batch-{n} tensors no "
        "longer fit the cache) and dominates the end-to-end time.",
    ])
    print(body)
    if args.write:
        cmd = "python bench/decode.py" + "".join(f" {a}" for a in sys.argv[1:])
        write_section("decode", "Decoding RTF: batch 1 vs batch 16 (bench/decode.py)", cmd,
                      body)


if __name__ == "__main__":
    main()
