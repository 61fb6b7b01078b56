#!/usr/bin/env python3
"""End-to-end decoding RTF with the default 65.5M model: encoder + search, batch 1 and 16.

Usage:
  python bench/decode.py --threads 2                     # this tree (~4 min)
  python bench/decode.py --threads 2 --baseline c8ce63b  # and a commit, side by side (~8 min)
  python bench/decode.py --num-utts 4 --duration 4 --repeats 2 --write 0   # quick look

Each row is what decode.py spends per batch: ``model.forward_encoder`` and then
``icefall.decode.search.decode_batch`` (greedy_search, or modified_beam_search with beam 4),
under ``torch.no_grad()``, over the same utterances processed one at a time (batch 1) and
as one batch. RTF = processing seconds / audio seconds. The weights are random; the
joiner's blank bias is set so that about one encoder frame in eight emits a token (~3
tokens a second, LibriSpeech's BPE-500 rate), since the search's cost depends on how many
tokens it emits.

``--baseline REV`` (repeatable, optionally followed by VAR=VALUE environment settings, e.g.
``--baseline "c8ce63b ICEFALL_ONEDNN_LINEAR=0"``) times the library of another commit (its
``icefall/`` from ``git archive``) with the same model, inputs and protocol. Every variant
runs in a worker process of its own; the variants take turns batch size by batch size, so
that the times a ratio compares lie seconds apart, and the order of the variants and of the
batch sizes changes from one repetition to the next. Ratios are medians over the
repetitions of per-repetition ratios.

Dimension legend: N = utterances, T = feature frames, F = feature dim (80).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("greedy_search", "modified_beam_search")
BEAM = 4


def get_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-utts", type=int, default=16, help="Utterances (= the large batch).")
    p.add_argument("--duration", type=float, default=10.0, help="Seconds per utterance.")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5, help="Timed repetitions (median).")
    p.add_argument("--baseline", action="append", default=[],
                   help="A commit to time side by side: 'REV [VAR=VALUE ...]'.")
    p.add_argument("--write", type=int, default=1, help="1: write docs/benchmarks.md.")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # a tree to serve
    return p.parse_args()


# ---------------------------------------------------------------------------
# Worker: one process per variant, imports icefall from its own tree
# ---------------------------------------------------------------------------


def calibrate_blank(model, x, x_lens, rate: float = 0.125) -> float:
    """Adds to the blank logit's bias until greedy search emits on ~``rate`` of frames
    (x: (N, T, F)); returns the amount added."""
    from icefall.decode.search import decode_batch

    with torch.no_grad():
        enc, lens = model.forward_encoder(x[:1], x_lens[:1])
        lo, hi = -20.0, 20.0
        for _ in range(14):
            mid = (lo + hi) / 2
            model.joiner.output_linear.bias[0] += mid
            hyp = decode_batch(model, enc, lens, "greedy_search")[0]
            model.joiner.output_linear.bias[0] -= mid
            lo, hi = (mid, hi) if len(hyp) / int(lens[0]) > rate else (lo, mid)
    return (lo + hi) / 2


def decode_timed(model, x, x_lens, batch_size: int) -> dict:
    """Encodes all utterances in batches of ``batch_size`` (x: (N, T, F)), then runs each
    search over the encoder outputs, as decode.py does batch by batch.

    Returns:
      {"wall": {part: seconds}, "cpu": {part: CPU seconds of this process},
      "hyps": {method: N token lists}}, the parts being "encoder" and each method.
    """
    from icefall.decode.search import decode_batch

    out: dict = {"wall": {}, "cpu": {}, "hyps": {}}
    with torch.no_grad():
        clocks, encoded = (time.perf_counter(), time.process_time()), []
        for i in range(0, x.shape[0], batch_size):
            encoded.append(model.forward_encoder(x[i:i + batch_size], x_lens[i:i + batch_size]))
        out["wall"]["encoder"], out["cpu"]["encoder"] = _since(clocks)
        for method in METHODS:
            clocks, hyps = (time.perf_counter(), time.process_time()), []
            for enc, lens in encoded:
                hyps += decode_batch(model, enc, lens, method, beam_size=BEAM)
            out["wall"][method], out["cpu"][method] = _since(clocks)
            out["hyps"][method] = hyps
    return out


def _since(clocks: tuple[float, float]) -> tuple[float, float]:
    """Wall and CPU seconds since ``clocks`` = (perf_counter(), process_time())."""
    return time.perf_counter() - clocks[0], time.process_time() - clocks[1]


def serve(tree: str) -> None:
    """Answers JSON requests on stdin, one a line, with one JSON line each on stdout: first
    the set-up (model, inputs, blank bias), then batch sizes to decode at."""
    sys.path.insert(0, tree)
    import icefall
    from icefall.zipformer import get_model

    setup = json.loads(sys.stdin.readline())
    torch.set_num_threads(setup["threads"])
    torch.manual_seed(0)
    model = get_model({"use_adapters": True, "adapter_dim": 16}).eval()
    frames = int(setup["duration"] * 100)
    x = torch.randn(setup["num_utts"], frames, 80)  # (N, T, F)
    x_lens = torch.full((setup["num_utts"],), frames)
    bias = setup["bias"]
    if bias is None:
        bias = calibrate_blank(model, x, x_lens)
    with torch.no_grad():
        model.joiner.output_linear.bias[0] += bias
        checksum = float(sum(p.double().sum() for p in model.parameters()))
    print(json.dumps({"bias": bias, "checksum": checksum, "library": icefall.__file__}),
          flush=True)
    for line in sys.stdin:
        print(json.dumps(decode_timed(model, x, x_lens, json.loads(line)["batch_size"])),
              flush=True)


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------


@dataclass
class Variant:
    """A library to time: a label, its tree, extra environment, and its worker."""

    label: str
    tree: Path
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    times: dict[int, dict[str, dict[str, list[float]]]] = field(default_factory=dict)
    hyps: dict[int, dict[str, list]] = field(default_factory=dict)

    def start(self, setup: dict) -> dict:
        """Starts the worker; returns its set-up reply (blank bias, weight checksum)."""
        env = {**os.environ, **self.env, "PYTHONPATH": str(self.tree)}
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", str(self.tree)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=env, text=True)
        reply = self._ask(setup)
        if not Path(reply["library"]).resolve().is_relative_to(self.tree.resolve()):
            raise RuntimeError(f"the worker for {self.label} imported {reply['library']}")
        return reply

    def _ask(self, msg: dict) -> dict:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the worker for {self.label} ended; see its stderr above")
        return json.loads(line)

    def run(self, batch_size: int, keep: bool = True) -> None:
        """One decoding pass at ``batch_size`` (timed inside the worker); ``keep`` records
        its times (``times[batch_size][clock][part]``, clock "wall" or "cpu") and
        hypotheses."""
        out = self._ask({"batch_size": batch_size})
        if keep:
            for clock in ("wall", "cpu"):
                parts = self.times.setdefault(batch_size, {}).setdefault(clock, {})
                for key, seconds in out[clock].items():
                    parts.setdefault(key, []).append(seconds)
            self.hyps[batch_size] = out["hyps"]

    def seconds(self, batch_size: int, part: str, clock: str = "wall") -> list[float]:
        """Seconds of ``part`` ("encoder", a method, or "METHOD+encoder": end to end) per
        repetition."""
        t = self.times[batch_size][clock]
        if part.endswith("+encoder"):
            return [a + b for a, b in zip(t["encoder"], t[part[:-len("+encoder")]])]
        return t[part]

    def cpu_seconds(self) -> float:
        """CPU seconds the worker has used so far (Linux; 0.0 elsewhere)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # u/s time

    def stop(self) -> None:
        """Ends the worker (at once if it is still decoding)."""
        if self.proc is not None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def this_tree() -> Variant:
    """This checkout, labelled by its commit (``+changes`` if icefall/ or bench/ differ)."""
    label = _git("rev-parse", "--short", "HEAD")
    if _git("status", "--porcelain", "--", "icefall", "bench"):
        label += "+changes"
    return Variant(label, ROOT, {})


def baseline(spec: str, tmp: Path) -> Variant:
    """'REV [VAR=VALUE ...]' -> a variant running REV's icefall/ (from git archive)."""
    rev, *assignments = spec.split()
    if any("=" not in a for a in assignments):
        raise ValueError(f"--baseline takes 'REV [VAR=VALUE ...]', got '{spec}'")
    commit = _git("rev-parse", "--short", f"{rev}^{{commit}}")
    tree = Path(tempfile.mkdtemp(prefix=f"{commit}-", dir=tmp))
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "icefall"],
                             check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(tree, filter="data")
    env = dict(a.split("=", 1) for a in assignments)
    return Variant(" ".join([commit, *assignments]), tree, env)


def machine_busy_seconds() -> float | None:
    """CPU seconds all processes of the machine have used since boot (Linux), else None."""
    try:
        user, nice, system, _, _, irq, softirq, steal = map(
            int, Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9])
    except (OSError, ValueError):
        return None
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def measure(variants: list[Variant], sizes: tuple[int, ...], repeats: int) -> float | None:
    """Times every variant at every batch size ``repeats`` times, after one untimed pass.

    Batch size by batch size, the variants take turns; their order rotates from one
    repetition to the next, the order of the batch sizes every len(variants) repetitions.

    Returns:
      The share of the machine's CPUs that other processes used meanwhile (None where
      it cannot be read).
    """
    for v in variants:
        for bs in sizes:
            v.run(bs, keep=False)  # warm-up
    start, busy, ours = time.perf_counter(), machine_busy_seconds(), _cpu_seconds(variants)
    for turn in range(repeats):
        shift = turn % len(variants)
        order = variants[shift:] + variants[:shift]
        for bs in sizes[::-1] if turn // len(variants) % 2 else sizes:
            for v in order:
                v.run(bs)
        print(f"repetition {turn + 1}/{repeats} done after {time.perf_counter() - start:.0f} s",
              file=sys.stderr, flush=True)
    if busy is None:
        return None
    others = machine_busy_seconds() - busy - (_cpu_seconds(variants) - ours)
    return max(others, 0.0) / ((time.perf_counter() - start) * (os.cpu_count() or 1))


def _cpu_seconds(variants: list[Variant]) -> float:
    """CPU seconds used so far by this process and the workers."""
    mine = os.times()
    return mine.user + mine.system + sum(v.cpu_seconds() for v in variants)


def _ratio(num: list[float], den: list[float]) -> float:
    """Median over the repetitions of num[i] / den[i]."""
    return statistics.median(a / b for a, b in zip(num, den))


def table(variants: list[Variant], sizes: tuple[int, ...], audio: float) -> list[str]:
    """Markdown table: end-to-end RTF of every variant per search and batch size, the
    search's share, and this tree's time over each baseline's (wall, CPU, search alone)."""
    this, others = variants[0], variants[1:]
    head = (["search", "batch", f"RTF {this.label}", "search share"]
            + [f"RTF {b.label}" for b in others]
            + [f"{this.label} / {b.label}: end to end, wall (CPU) [search alone]"
               for b in others])
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in METHODS:
        for bs in sizes:
            e2e = f"{method}+encoder"
            share = _ratio(this.seconds(bs, method), this.seconds(bs, e2e))
            cells = [method, str(bs), f"{statistics.median(this.seconds(bs, e2e)) / audio:.5f}",
                     f"{100 * share:.1f}%"]
            cells += [f"{statistics.median(b.seconds(bs, e2e)) / audio:.5f}" for b in others]
            cells += [" ".join([
                f"{_ratio(this.seconds(bs, e2e), b.seconds(bs, e2e)):.3f}",
                f"({_ratio(this.seconds(bs, e2e, 'cpu'), b.seconds(bs, e2e, 'cpu')):.3f})",
                f"[{_ratio(this.seconds(bs, method), b.seconds(bs, method)):.2f}]"])
                for b in others]
            rows.append("| " + " | ".join(cells) + " |")
    return rows


def agreement(variants: list[Variant], sizes: tuple[int, ...]) -> list[str]:
    """One line per baseline: utterances whose tokens equal this tree's."""
    this, lines = variants[0], []
    for b in variants[1:]:
        parts = []
        for method in METHODS:
            for bs in sizes:
                mine, theirs = this.hyps[bs][method], b.hyps[bs][method]
                same = sum(x == y for x, y in zip(mine, theirs))
                parts.append(f"{method} at batch {bs}: {same}/{len(mine)}")
        lines.append(f"Same tokens as {this.label}, {b.label}: " + ", ".join(parts) + ".")
    return lines


def report(args: argparse.Namespace, variants: list[Variant], sizes: tuple[int, ...],
           checks: list[dict], others: float | None) -> str:
    """The section's text."""
    audio = args.num_utts * args.duration
    this = variants[0]
    tokens = sum(map(len, this.hyps[1]["greedy_search"]))
    rate = tokens / (args.num_utts * args.duration * 25)  # encoder frames at 25 Hz
    lines = [
        f"{args.num_utts} utterances x {args.duration:g} s, {args.threads} threads, median "
        f"of {args.repeats} repetitions; one row = `model.forward_encoder` then `decode_batch` "
        f"(modified_beam_search with beam {BEAM}) over all utterances, as decode.py runs "
        f"them; RTF = seconds / audio seconds. Greedy search emits tokens on "
        f"{100 * rate:.1f}% of encoder frames (random weights, blank bias calibrated)."
        + ("" if others is None else f" Other processes used {100 * others:.0f}% of the "
           f"machine's {os.cpu_count()} CPUs during the timed passes."),
        "",
        *table(variants, sizes, audio),
    ]
    if len(variants) > 1:
        lines += [
            "",
            f"Ratios: the median over the repetitions of {this.label}'s time / the "
            "baseline's, each pair timed seconds apart: wall-clock time, the workers' CPU "
            "time (less disturbed by other processes) and, in square brackets, the "
            "search's wall-clock time alone. Above 1, the baseline is faster.",
            *agreement(variants, sizes),
        ]
        if len({round(c["checksum"], 3) for c in checks}) > 1:
            lines.append("The variants' weights differ (their initialisations differ).")
    return "\n".join(lines)


def main() -> None:
    args = get_args()
    if args.worker is not None:
        serve(args.worker)
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # workers and files cleaned up
    sizes = (1, args.num_utts)
    setup = {"threads": args.threads, "duration": args.duration, "num_utts": args.num_utts,
             "bias": None}
    with tempfile.TemporaryDirectory(prefix="bench-decode-") as tmp:
        variants = [this_tree(), *(baseline(s, Path(tmp)) for s in args.baseline)]
        try:
            checks = [variants[0].start(setup)]
            setup["bias"] = checks[0]["bias"]  # the same model for every variant
            checks += [v.start(setup) for v in variants[1:]]
            others = measure(variants, sizes, args.repeats)
        finally:
            for v in variants:
                v.stop()
    body = report(args, variants, sizes, checks, others)
    print(body)
    if args.write:
        sys.path.insert(0, str(ROOT))
        from bench.report import write_section

        cmd = "python bench/decode.py" + "".join(f" {a}" for a in sys.argv[1:])
        write_section("decode", "Decoding RTF end to end: encoder + search (bench/decode.py)",
                      cmd, body)


if __name__ == "__main__":
    main()
