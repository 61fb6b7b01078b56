#!/usr/bin/env python3
"""The demo's figures over several runs (seeds): each WER as its median and range, and
each target with the number of runs that met it and what each run measured.

Usage (from egs/synth/ASR, after runs into several exp dirs and their reports):

    ./run.sh --exp-dir exp_s42 --seed 42
    ./run.sh --exp-dir exp_s43 --seed 43
    ./run.sh --exp-dir exp_s44 --seed 44
    python local/seed_spread.py --exp-dirs exp_s42,exp_s43,exp_s44 --out exp_spread.md

Reads ``<exp-dir>/report.json`` (local/make_report.py) of each run; writes the markdown
to --out (and prints it). A target is met with margin when every run that checks it
meets it (a run without a system does not check its targets).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from icefall.cli import run_guarded
from icefall.cli.flags import ArgumentParser
from icefall.decode.run_summary import spread_over_runs, targets_over_runs
from icefall.files import atomic_write_text


def _cell(spread: dict[str, tuple[float, float, float]], key: str) -> str:
    if key not in spread:
        return "-"
    median, low, high = spread[key]
    return f"{median:.2f} ({low:.2f}-{high:.2f})"


def spread_markdown(reports: list[dict], names: list[str]) -> list[str]:
    """The spread table (WER and B-only word errors) and the targets table."""
    wer, b_only = spread_over_runs(reports), spread_over_runs(reports, "b_only_word_error")
    keys = sorted({k.split("/")[0] for k in wer})
    lines = [f"Median (range) over {len(reports)} runs: {', '.join(names)}.", "",
             "| system | A (audiobooks) | B (podcasts) | B-only words on B |",
             "|---|---|---|---|"]
    for system in keys:
        lines.append(f"| {system} | {_cell(wer, system + '/A')} | "
                     f"{_cell(wer, system + '/B')} | {_cell(b_only, system + '/B')} |")
    lines += ["", f"| target | met by | measured ({', '.join(names)}) |", "|---|---|---|"]
    for target, met, checked, measured in targets_over_runs(reports):
        lines.append(f"| {target} | {met} of {checked} runs | {'; '.join(measured)} |")
    return lines


def spread(exp_dirs: list[Path], out: Path | None) -> None:
    reports = []
    for d in exp_dirs:
        path = d / "report.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no report (run.sh's report stage writes it)")
        reports.append(json.loads(path.read_text()))
    lines = spread_markdown(reports, [d.name for d in exp_dirs])
    if out is not None:
        atomic_write_text(out, "\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    p = ArgumentParser(description=__doc__.splitlines()[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp-dirs", type=str, required=True,
                   help="Comma-separated exp dirs, each with a report.json.")
    p.add_argument("--out", type=Path, default=None, help="Markdown file to write.")
    args = p.parse_args()
    run_guarded(spread, [Path(d) for d in args.exp_dirs.split(",") if d], args.out)


if __name__ == "__main__":
    main()
