#!/usr/bin/env python3
"""Collect a custom run's results into report.md, report.json and wer.png.

Usage (run.sh's last stage):

    python local/make_report.py --exp-dir exp

Reads the preparation summary (``<exp-dir>/data/prepare.json``: the sets' names, sizes, bad
rows, converted files, <unk> shares), the WER of every system decoded on the test set
(``<exp-dir>/decode/<system>/wer-summary-<test set>-*.txt``), the adapter training log's
parameter counts and ``<exp-dir>/stage_seconds.tsv``; labels everything with the names of
your sets. Fails (exit status 1) when there is no decoding result.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from icefall.cli import run_guarded
from icefall.cli.flags import ArgumentParser
from icefall.decode.run_summary import (
    markdown_table,
    plot_wer_bars,
    read_param_counts,
    read_stage_seconds,
    read_system_wers,
    require_results,
    write_report,
)

# report key -> (decode folder, label)
SYSTEMS = {
    "base": ("base", "base model"),
    "adapter": ("adapter", "adapters on"),
    "adapter_off": ("adapter_off", "adapters off"),
    "sherpa_onnx": ("sherpa_onnx", "adapters: sherpa-onnx fp32"),
    "sherpa_onnx_int8": ("sherpa_onnx_int8", "adapters: sherpa-onnx int8"),
}


def read_prepare(exp_dir: Path) -> dict[str, Any]:
    """The preparation summary (local/prepare_data.py).

    Raises:
      FileNotFoundError: naming the file when the prepare stage has not run.
    """
    path = exp_dir / "data" / "prepare.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the prepare stage of run.sh first")
    return json.loads(path.read_text())


def checks(w: dict[str, float]) -> list[tuple[str, bool, str]]:
    """(check, met, measured): adapters off is the base model; the export decodes as the
    PyTorch model with adapters on (sherpa-onnx computes its own features: small
    differences are possible)."""
    out = []
    if {"base", "adapter_off"} <= w.keys():
        out.append(("adapters off == base model", w["adapter_off"] == w["base"],
                    f"{w['adapter_off']:.2f}% vs {w['base']:.2f}%"))
    for key, tol in (("sherpa_onnx", 0.5), ("sherpa_onnx_int8", 2.0)):
        if {key, "adapter"} <= w.keys():
            out.append((f"{SYSTEMS[key][1]} within {tol:g} of adapters on",
                        abs(w[key] - w["adapter"]) <= tol,
                        f"{w[key]:.2f}% vs {w['adapter']:.2f}%"))
    return out


def data_table(sets: dict[str, Any]) -> list[str]:
    rows = []
    for part, s in sets.items():
        unk = s["unk"]
        rows.append([f"{part}: {s['name']}", s["source"] or "held out of the training data",
                     str(s["utterances"]), f"{s['seconds'] / 60:.1f}", str(s["bad_rows"]),
                     str(s["converted_files"]), f"{100 * unk['share']:.2f}%"])
    return markdown_table(["set", "from", "utterances", "minutes", "bad rows left out",
                           "files converted to 16 kHz mono", "<unk> tokens"], rows)


def main() -> None:
    p = ArgumentParser(description=__doc__.splitlines()[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp-dir", type=Path, default=Path("exp"))
    args = p.parse_args()
    prep = run_guarded(read_prepare, args.exp_dir)
    train, test = prep["sets"]["train"]["name"], prep["sets"]["test"]["name"]
    w = read_system_wers(args.exp_dir / "decode",
                         {k: (folder, test) for k, (folder, _) in SYSTEMS.items()})
    run_guarded(require_results, w, args.exp_dir / "decode")
    trainable, total = read_param_counts(args.exp_dir / "adapter" / "log" / "log-train")
    seconds = read_stage_seconds(args.exp_dir)
    found = checks(w)
    table = markdown_table(["system", f"WER (%) on {test}"],
                           [[label, f"{w[k]:.2f}"] for k, (_, label) in SYSTEMS.items()
                            if k in w])
    lines = [f"# Adapters trained on {train}, tested on {test}", "", *table, "",
             *data_table(prep["sets"]), "",
             f"Trainable parameters with adapters: {trainable} of {total}.", "",
             *markdown_table(["check", "measured", "met"],
                             [[c, m, "yes" if ok else "NO"] for c, ok, m in found]), "",
             "Seconds per stage: " + ", ".join(f"{k} {v}" for k, v in seconds.items())]
    report = {"train_set": train, "test_set": test, "wer": w, "data": prep["sets"],
              "trainable_params": trainable, "total_params": total, "seconds": seconds,
              "checks": [{"check": c, "met": ok, "measured": m} for c, ok, m in found]}
    write_report(args.exp_dir, lines, report)
    plot_wer_bars(args.exp_dir / "wer.png",
                  [(label.replace(": ", ":\n"), {test: w[k]}) for k, (_, label)
                   in SYSTEMS.items() if k in w], [test], f"Adapters trained on {train}")
    print("\n".join(table))
    print("\n".join(f"{'ok ' if ok else 'NO '} {c}: {m}" for c, ok, m in found))
    print(f"Report: {args.exp_dir / 'report.md'}, {args.exp_dir / 'report.json'}, "
          f"{args.exp_dir / 'wer.png'}")


if __name__ == "__main__":
    main()
