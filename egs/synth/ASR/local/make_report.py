#!/usr/bin/env python3
"""Collect the demo's WERs into a table, exp/report.md, exp/report.json and exp/wer.png.

Usage (from egs/synth/ASR, after run.sh's decoding stages):

    python local/make_report.py --exp-dir exp

Reads ``<exp-dir>/decode/<system>/wer-summary-<set>-*.txt`` (written by the decode
scripts), ``<exp-dir>/stage_seconds.tsv`` (written by run.sh) and the adapter training
log's "Number of model parameters" and "A total of N trainable parameters" lines;
checks the demo's targets.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from icefall.cli import run_guarded
from icefall.cli.flags import ArgumentParser
from icefall.decode.run_summary import (
    plot_wer_bars,
    read_param_counts,
    read_stage_seconds,
    read_system_wers,
    require_results,
    write_report,
)

# report key -> (decode folder, test set)
SYSTEMS = {
    "base/A": ("base", "A"), "base/B": ("base", "B"),
    "adapter/B": ("adapter", "B"), "adapter_off/A": ("adapter_off", "A"),
    "adapter_off/B": ("adapter_off", "B"),
    "full_ft/A": ("full_ft", "A"), "full_ft/B": ("full_ft", "B"),
    "onnx/B": ("onnx", "B"), "onnx_int8/B": ("onnx_int8", "B"),
    "sherpa_onnx/B": ("sherpa_onnx", "B"),
}


def read_wers(exp_dir: Path) -> dict[str, float]:
    """WER (%) of every system whose wer-summary file exists."""
    return read_system_wers(exp_dir / "decode", SYSTEMS)


def check_targets(w: dict[str, float], seconds: dict[str, int]) -> list[tuple[str, bool, str]]:
    """(target, met, measured) for each of the demo's targets that can be evaluated."""
    checks = []
    total = sum(seconds.values())
    checks.append(("whole run <= 15 min", total <= 900, f"{total / 60:.1f} min"))
    if "base/A" in w:
        checks.append(("base/A <= 10% WER", w["base/A"] <= 10.0, f"{w['base/A']:.2f}%"))
    if {"base/A", "base/B"} <= w.keys():
        checks.append(("base/B >= 2x base/A", w["base/B"] >= 2 * w["base/A"],
                       f"{w['base/B'] / max(w['base/A'], 1e-9):.1f}x"))
    if {"base/B", "adapter/B", "full_ft/B"} <= w.keys():
        gain = w["base/B"] - w["full_ft/B"]
        rec = (w["base/B"] - w["adapter/B"]) / gain if gain > 0 else float("nan")
        checks.append(("adapters recover >= 60% of full fine-tuning's gain on B", rec >= 0.6,
                       f"{100 * rec:.0f}%"))
    if {"base/A", "adapter_off/A"} <= w.keys():
        checks.append(("adapters off on A == base/A", w["adapter_off/A"] == w["base/A"],
                       f"{w['adapter_off/A']:.2f}% vs {w['base/A']:.2f}%"))
    for key, tol in (("onnx/B", 0.0), ("sherpa_onnx/B", 0.0), ("onnx_int8/B", 1.0)):
        if {key, "adapter/B"} <= w.keys():
            diff = abs(w[key] - w["adapter/B"])
            checks.append((f"{key} within {tol:g} of adapter/B", diff <= tol,
                           f"{w[key]:.2f}% vs {w['adapter/B']:.2f}%"))
    return checks


def _cell(w: dict[str, float], key: str) -> str:
    return f"{w[key]:.2f}" if key in w else "-"


def wer_table(w: dict[str, float]) -> str:
    """The seed's table in miniature (WER %, test sets of domains A and B)."""
    rows = [("base model (trained on A)", "base/A", "base/B"),
            ("adapters, trained on B", "adapter_off/A", "adapter/B"),
            ("full fine-tuning on B", "full_ft/A", "full_ft/B"),
            ("adapters: ONNX Runtime fp32", None, "onnx/B"),
            ("adapters: ONNX Runtime int8", None, "onnx_int8/B"),
            ("adapters: sherpa-onnx", None, "sherpa_onnx/B")]
    lines = ["| system | A (audiobooks) | B (podcasts) |", "|---|---|---|"]
    for name, a, b in rows:
        a_cell = ("-" if a is None else _cell(w, a) + (" (adapters off)" if a == "adapter_off/A"
                                                       and a in w else ""))
        lines.append(f"| {name} | {a_cell} | {_cell(w, b)} |")
    return "\n".join(lines)


# chart groups: (label, system on A, system on B); A is where forgetting shows, B recovery
GROUPS = [("base model\n(trained on A)", "base/A", "base/B"),
          ("adapters\n(off on A)", "adapter_off/A", "adapter/B"),
          ("full\nfine-tuning", "full_ft/A", "full_ft/B"),
          ("adapters:\nONNX fp32", None, "onnx/B"), ("adapters:\nONNX int8", None, "onnx_int8/B"),
          ("adapters:\nsherpa-onnx", None, "sherpa_onnx/B")]
SERIES = ("A (audiobooks)", "B (podcasts)")


def plot(w: dict[str, float], path: Path) -> None:
    """Grouped bar chart: each system with its WER on A and on B side by side."""
    groups = [(label, {name: w[key] for name, key in zip(SERIES, (a, b)) if key in w})
              for label, a, b in GROUPS]
    plot_wer_bars(path, [g for g in groups if g[1]], SERIES,
                  "zipformer-adapter demo: forgetting on A, recovery on B")


def main() -> None:
    p = ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp-dir", type=Path, default=Path("exp"))
    args = p.parse_args()
    w, seconds = read_wers(args.exp_dir), read_stage_seconds(args.exp_dir)
    run_guarded(require_results, w, args.exp_dir / "decode")
    trainable, total = read_param_counts(args.exp_dir / "adapter" / "log" / "log-train")
    checks = check_targets(w, seconds)
    report = {"wer": w, "trainable_params": trainable, "total_params": total,
              "seconds": seconds,
              "targets": [{"target": t, "met": ok, "measured": m} for t, ok, m in checks]}
    table = wer_table(w)
    lines = ["# zipformer-adapter demo report", "", table, "",
             f"Trainable parameters with adapters: {trainable} of {total}.", "",
             "| target | measured | met |", "|---|---|---|",
             *(f"| {t} | {m} | {'yes' if ok else 'NO'} |" for t, ok, m in checks), "",
             "Seconds per stage: " + ", ".join(f"{k} {v}" for k, v in seconds.items())]
    write_report(args.exp_dir, lines, report)
    plot(w, args.exp_dir / "wer.png")
    print(table)
    print("\n".join(f"{'ok ' if ok else 'NO '} {t}: {m}" for t, ok, m in checks))
    print(f"Report: {args.exp_dir / 'report.md'}, {args.exp_dir / 'report.json'}, "
          f"{args.exp_dir / 'wer.png'}")


if __name__ == "__main__":
    main()
