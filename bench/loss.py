"""Pruned vs full RNN-T loss on CPU: forward+backward time and peak memory, side by side.

Usage: python bench/loss.py                 # measure, print, update docs/benchmarks.md
       python bench/loss.py --no-write      # measure and print only
       python bench/loss.py --repeats 7 --rounds 3

Shapes: B=8, T=250, S=60, C=500, prune range 5, 2 threads (``torch.set_num_threads(2)``).
Both sides start from the same ``am`` (B, T, C) and ``lm`` (B, S+1, C) leaves, and the
joiner is plain addition on both sides (no projection, no tanh), so the comparison isolates
the loss:

- full:   ``logits = am[:, :, None] + lm[:, None]`` (B, T, S+1, C), then ``rnnt_loss``.
- pruned: ``rnnt_loss_smoothed(return_grad=True)`` + ``get_rnnt_prune_ranges`` +
  ``do_rnnt_pruning`` + ``logits = am_pruned + lm_pruned`` (B, T, 5, C) +
  ``rnnt_loss_pruned``; the objective is ``0.5 * simple + pruned`` as in icefall.

Each variant runs in a fresh subprocess (``--worker NAME``). Peak memory is the high-water
resident set size during the first full-size forward+backward minus the resident size just
before it (after imports, a warm-up step at a tiny size, and input creation); the high-water
mark is reset through ``/proc/self/clear_refs`` where Linux allows it, otherwise
``resource.getrusage`` is used.
Times are the median of ``--repeats`` further iterations; the subprocesses alternate over
``--rounds`` and the best median per variant is kept, since the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from icefall.rnnt_loss import (  # noqa: E402
    do_rnnt_pruning,
    get_rnnt_prune_ranges,
    rnnt_loss,
    rnnt_loss_pruned,
    rnnt_loss_smoothed,
)

B, T, S, C, PRUNE_RANGE, THREADS = 8, 250, 60, 500, 5, 2
LM_SCALE, AM_SCALE, BLANK = 0.25, 0.0, 0


# ----------------------------------------------------------------------------- memory probes


def _status_kib(field: str) -> int | None:
    """A ``/proc/self/status`` field in KiB (VmRSS, VmHWM), or None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Resets the kernel's peak-RSS mark for this process; False where not permitted."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


def _peak_kib(reset_ok: bool) -> int:
    if reset_ok:
        return _status_kib("VmHWM") or 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


# ----------------------------------------------------------------------------- the two sides


def make_inputs(b: int = B, t: int = T, s: int = S) -> dict[str, torch.Tensor]:
    """Seeded am (b, t, C), lm (b, s+1, C) leaves, symbols (b, s), boundary (b, 4)."""
    g = torch.Generator().manual_seed(0)
    return {
        "am": torch.randn(b, t, C, generator=g).requires_grad_(),
        "lm": torch.randn(b, s + 1, C, generator=g).requires_grad_(),
        "symbols": torch.randint(1, C, (b, s), generator=g),
        "boundary": torch.tensor([[0, 0, s, t]] * b, dtype=torch.int64),
    }


def full_step(x: dict[str, torch.Tensor]) -> float:
    """Full loss on (B, T, S+1, C) logits; forward + backward."""
    logits = x["am"][:, :, None, :] + x["lm"][:, None, :, :]  # (B, T, S+1, C)
    loss = rnnt_loss(logits, x["symbols"], BLANK, x["boundary"], reduction="sum")
    loss.backward()
    return loss.item()


def pruned_step(x: dict[str, torch.Tensor]) -> float:
    """Simple loss + pruning + pruned loss on (B, T, R, C) logits; forward + backward."""
    am, lm, symbols, boundary = x["am"], x["lm"], x["symbols"], x["boundary"]
    simple, (px_grad, py_grad) = rnnt_loss_smoothed(
        lm=lm, am=am, symbols=symbols, termination_symbol=BLANK, lm_only_scale=LM_SCALE,
        am_only_scale=AM_SCALE, boundary=boundary, reduction="sum", return_grad=True)
    ranges = get_rnnt_prune_ranges(px_grad=px_grad, py_grad=py_grad, boundary=boundary,
                                   s_range=PRUNE_RANGE)
    am_pruned, lm_pruned = do_rnnt_pruning(am=am, lm=lm, ranges=ranges)
    logits = am_pruned + lm_pruned  # (B, T, R, C)
    pruned = rnnt_loss_pruned(logits=logits, symbols=symbols, ranges=ranges,
                              termination_symbol=BLANK, boundary=boundary, reduction="sum")
    loss = 0.5 * simple + pruned
    loss.backward()
    return loss.item()


STEPS: dict[str, Callable[[dict[str, torch.Tensor]], float]] = {
    "full": full_step, "pruned": pruned_step}


def worker(name: str, repeats: int) -> dict:
    """Runs one variant in this (fresh) process and returns its figures."""
    torch.set_num_threads(THREADS)
    step = STEPS[name]
    step(make_inputs(2, 20, 6))  # warm-up at a tiny size: thread pools and lazy library state
    x = make_inputs()
    reset_ok = _reset_peak()
    before = _status_kib("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    loss = step(x)
    first_s = time.perf_counter() - t0
    peak_mib = (_peak_kib(reset_ok) - before) / 1024
    times = []
    for _ in range(repeats):
        x["am"].grad = x["lm"].grad = None
        t0 = time.perf_counter()
        step(x)
        times.append(time.perf_counter() - t0)
    return {"variant": name, "loss": loss, "peak_mib": peak_mib, "first_s": first_s,
            "median_s": statistics.median(times), "min_s": min(times),
            "hwm_reset": reset_ok}


# ----------------------------------------------------------------------------- driver


class OtherLoad:
    """Share of all CPUs used by other processes between ``start()`` and ``share()``.

    System-wide busy time (``/proc/stat``) minus the CPU time of this process and its
    finished children; None where ``/proc/stat`` is unavailable.
    """

    def __init__(self) -> None:
        self.start_state = self._state()

    @staticmethod
    def _state() -> tuple[float, float, float] | None:
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split()[1:9]]
        except (OSError, ValueError):
            return None
        busy = (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # not idle/iowait
        own = sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
                  for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
        return busy, own, time.monotonic()

    def share(self) -> float | None:
        end = self._state()
        if end is None or self.start_state is None:
            return None
        busy, own, wall = (e - s for e, s in zip(end, self.start_state))
        return max(busy - own, 0.0) / (wall * (os.cpu_count() or 1))


def run_variant(name: str, repeats: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", name, "--repeats", str(repeats)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarise(results: dict[str, list[dict]]) -> tuple[str, dict[str, float]]:
    """Markdown table plus the time and memory ratios (full / pruned)."""
    median = {k: min(r["median_s"] for r in v) for k, v in results.items()}
    fastest = {k: min(r["min_s"] for r in v) for k, v in results.items()}
    mem = {k: statistics.median(r["peak_mib"] for r in v) for k, v in results.items()}
    ratios = {"time": median["full"] / median["pruned"],
              "time_min": fastest["full"] / fastest["pruned"],
              "memory": mem["full"] / mem["pruned"]}
    what = {"full": f"am+lm -> ({B}, {T}, {S + 1}, {C}) logits, rnnt_loss",
            "pruned": f"rnnt_loss_smoothed, get_rnnt_prune_ranges, do_rnnt_pruning -> "
                      f"({B}, {T}, {PRUNE_RANGE}, {C}) logits, rnnt_loss_pruned"}
    rows = ["| variant | what runs (forward + backward) | time, median | time, min | "
            "peak memory |", "|---|---|---|---|---|"]
    for k in ("full", "pruned"):
        rows.append(f"| {k} | {what[k]} | {median[k] * 1e3:.0f} ms | {fastest[k] * 1e3:.0f} ms "
                    f"| {mem[k]:.0f} MiB |")
    rows.append(f"| **full / pruned** | | **{ratios['time']:.1f}x** | "
                f"**{ratios['time_min']:.1f}x** | **{ratios['memory']:.1f}x** |")
    return "\n".join(rows), ratios


def write_up(results: dict[str, list[dict]], repeats: int, rounds: int,
             other_share: float | None) -> tuple[str, str]:
    """The markdown section body and the bare table."""
    table, ratios = summarise(results)
    load = ("other processes' CPU use unknown" if other_share is None else
            f"other processes used {100 * other_share:.0f}% of the {os.cpu_count()} CPUs "
            "meanwhile")
    probe = ("kernel high-water mark reset via /proc/self/clear_refs"
             if results["full"][0]["hwm_reset"] else "resource.getrusage ru_maxrss")
    paragraphs = [
        f"B={B}, T={T}, S={S}, C={C}, prune range {PRUNE_RANGE}, {THREADS} threads, float32. "
        "Both sides start from the same `am` (B, T, C) and `lm` (B, S+1, C) leaves; the "
        "joiner is plain addition on both sides (a real joiner's projection would add the "
        "same per-cell cost to each side, on 12x more cells for the full loss). The pruned "
        "side includes the smoothed simple loss (lm_scale 0.25) with its occupation grads, "
        "the prune ranges and the pruning gathers; its objective is `0.5 * simple + pruned`.",
        "Peak memory: resident-set high-water mark during the first full-size forward+backward "
        "minus the resident size just before it (after imports, a tiny warm-up step and input "
        f"creation), each variant in a fresh subprocess ({probe}). "
        f"Time: median (and minimum) of {repeats} further iterations, best of "
        f"{rounds} alternating subprocesses per variant; the machine is shared, so the "
        f"minimum is the least disturbed figure ({load}).",
        f"Targets (pruned uses >= 5x less memory and is >= 3x faster): memory "
        f"{ratios['memory']:.1f}x {'met' if ratios['memory'] >= 5 else 'NOT met'}, time "
        f"{ratios['time']:.1f}x (median) / {ratios['time_min']:.1f}x (min) "
        f"{_verdict(ratios['time'], ratios['time_min'])}.",
    ]
    if other_share is None or other_share > 0.2:
        paragraphs.append(
            "Warning: the machine was busy (or its load unknown) during this run, which "
            "distorts the 2-thread times (mostly against the pruned side: each of its many "
            "medium-size operations waits for the second OpenMP thread to be scheduled). "
            "Re-run on an idle machine.")
    prose = [textwrap.fill(p, width=100) for p in paragraphs]
    body = "\n\n".join([prose[0], table, *prose[1:]])
    return body, table


def _verdict(median_ratio: float, min_ratio: float, target: float = 3.0) -> str:
    if median_ratio >= target:
        return "met"
    return "met on the minimum only" if min_ratio >= target else "NOT met"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", choices=sorted(STEPS), help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=5, help="timed iterations per process")
    parser.add_argument("--rounds", type=int, default=2, help="subprocesses per variant")
    parser.add_argument("--no-write", action="store_true", help="do not update the docs")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.repeats)))
        return
    torch.set_num_threads(THREADS)  # as the workers; report.py records the thread count
    results: dict[str, list[dict]] = {"full": [], "pruned": []}
    other_load = OtherLoad()
    for _ in range(args.rounds):
        for name in ("full", "pruned"):
            results[name].append(run_variant(name, args.repeats))
            print(json.dumps(results[name][-1]))
    body, table = write_up(results, args.repeats, args.rounds, other_load.share())
    print(table)
    if "Warning:" in body:
        print("warning: the machine was busy; the time ratio is not reliable", file=sys.stderr)
    if not args.no_write:
        from report import write_section  # bench/ is on sys.path when run as a script

        write_section("loss", "Pruned vs full RNN-T loss (CPU)", "python bench/loss.py", body)
        print("updated docs/benchmarks.md")


if __name__ == "__main__":
    main()
