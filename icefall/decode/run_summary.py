"""The report at the end of a recipe run: WERs of several systems, gathered from their
decoding folders, as ``report.md``, ``report.json`` and a bar chart.

A run script (``egs/*/ASR/run.sh``) decodes each system into ``<exp-dir>/decode/<system>/``
(``wer-summary-<set>-*.txt`` and ``recogs-<set>-*.txt``, written by the decode scripts; the
error rate on a list of words, such as a domain's own vocabulary, is counted from the
latter) and records the seconds of each
stage in ``<exp-dir>/stage_seconds.tsv``; its ``local/make_report.py`` says which systems and
sets to show and how to label them, and calls these functions. Files are written atomically.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from icefall.decode.report import listed_word_errors, read_transcripts, read_wer_summary
from icefall.files import atomic_write, atomic_write_text

COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red")


class NoResultsError(ValueError):
    """No decoding result was found: the report would be empty."""


def read_system_wers(decode_dir: Path, systems: Mapping[str, tuple[str, str]]
                     ) -> dict[str, float]:
    """WER (%) of every system whose ``wer-summary`` file exists.

    Args:
      decode_dir: ``<exp-dir>/decode``.
      systems: report key -> (decode folder, test set name).
    Returns:
      report key -> WER, for the systems found.
    """
    wers = {}
    for key, (folder, test_set) in systems.items():
        summary = _wer_summary_file(decode_dir / folder, test_set)
        if summary is not None:
            wers[key] = read_wer_summary(summary)[0][1]
    return wers


def _wer_summary_file(folder: Path, test_set: str) -> Path | None:
    """The (first, by name) ``wer-summary-<test_set>-*.txt`` in ``folder``, or None."""
    files = sorted(folder.glob(f"wer-summary-{test_set}-*.txt"))
    return files[0] if files else None


def _recogs_file(summary: Path, test_set: str) -> Path:
    """The ``recogs`` file of the best setting of a ``wer-summary`` file (its tag is the
    summary's, or ``<key>-<suffix>`` when one run decoded several settings).

    Raises:
      ValueError: when no such file is beside the summary.
    """
    key = read_wer_summary(summary)[0][0]
    tag = summary.stem.removeprefix(f"wer-summary-{test_set}").removeprefix("-")
    names = [f"recogs-{test_set}-{t}.txt" for t in (tag, f"{key}-{tag}", key) if t]
    for name in names:
        if (summary.parent / name).exists():
            return summary.parent / name
    raise ValueError(f"no {' or '.join(names)} beside {summary}")


def read_word_list(path: Path) -> set[str]:
    """The words of a text file of words (whitespace-separated, e.g. one a line).

    Raises:
      ValueError: when the file cannot be read or holds no words.
    """
    try:
        words = set(path.read_text(encoding="utf-8").split())
    except OSError as e:
        raise ValueError(f"cannot read the word list {path}: {e}") from None
    if not words:
        raise ValueError(f"the word list {path} holds no words")
    return words


def read_listed_word_error_rates(decode_dir: Path, systems: Mapping[str, tuple[str, str]],
                                 words: Iterable[str]) -> dict[str, float]:
    """Error rate (%) on ``words`` of every system whose results exist: misses plus false
    alarms per reference occurrence of a listed word
    (:func:`icefall.decode.report.listed_word_errors`), counted over the ``recogs`` file of
    the decoding run whose WER :func:`read_system_wers` reports.

    Args:
      decode_dir: ``<exp-dir>/decode``.
      systems: report key -> (decode folder, test set name).
      words: the listed words.
    Returns:
      report key -> rate, for the systems found whose references hold a listed word.
    """
    listed = set(words)
    rates = {}
    for key, (folder, test_set) in systems.items():
        summary = _wer_summary_file(decode_dir / folder, test_set)
        if summary is None:
            continue
        errors = listed_word_errors(read_transcripts(_recogs_file(summary, test_set)), listed)
        if errors.ref_words > 0:
            rates[key] = errors.rate
    return rates


def require_results(wers: Mapping[str, float], decode_dir: Path) -> None:
    """Raises NoResultsError when ``wers`` is empty."""
    if not wers:
        raise NoResultsError(f"no wer-summary-*.txt under {decode_dir}: run the decoding "
                             "stages of run.sh first")


def read_stage_seconds(exp_dir: Path) -> dict[str, int]:
    """Stage name -> seconds, from ``<exp-dir>/stage_seconds.tsv`` (empty when absent)."""
    path = exp_dir / "stage_seconds.tsv"
    if not path.exists():
        return {}
    rows = [line.split("\t") for line in path.read_text().splitlines() if line.strip()]
    return {name: int(s) for name, s in rows}


def read_param_counts(log: Path) -> tuple[int | None, int | None]:
    """(trainable, total) parameters from a training log (icefall's two count lines)."""
    if not log.exists():
        return None, None
    text = log.read_text()
    trainable = re.search(r"A total of (\d+) trainable parameters", text)
    total = re.search(r"Number of model parameters: (\d+)", text)
    return (int(trainable.group(1)) if trainable else None,
            int(total.group(1)) if total else None)


def plot_wer_bars(path: Path, groups: Sequence[tuple[str, Mapping[str, float]]],
                  series: Sequence[str], title: str) -> None:
    """Grouped bar chart of WERs, written atomically as a PNG.

    Args:
      groups: (label under the group, {series name: WER}) per group, left to right; a
        series missing from a group leaves a gap.
      series: the series names, in legend order (at most four).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.5 * len(groups)), 4))
    for i, (name, color) in enumerate(zip(series, COLORS)):
        offset = (i - (len(series) - 1) / 2) * width
        xs = [g + offset for g, (_, w) in enumerate(groups) if name in w]
        bars = ax.bar(xs, [w[name] for _, w in groups if name in w], width=width * 0.95,
                      color=color, label=name)
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_xticks(range(len(groups)), [label for label, _ in groups], fontsize=8)
    ax.set_ylabel("WER (%)")
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120))  # the name keeps .png
    plt.close(fig)


def write_report(exp_dir: Path, markdown: Sequence[str], data: Mapping[str, Any]) -> None:
    """``report.md`` (the lines given) and ``report.json`` (``data``) in ``exp_dir``."""
    atomic_write_text(exp_dir / "report.md", "\n".join(markdown) + "\n")
    atomic_write_text(exp_dir / "report.json", json.dumps(data, indent=2) + "\n")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A markdown table's lines."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def spread_over_runs(reports: Sequence[Mapping[str, Any]], field: str = "wer"
                     ) -> dict[str, tuple[float, float, float]]:
    """Median, minimum and maximum of each value of ``report[field]`` over several runs of
    the same recipe (seeds, machines): the keys found in every run.

    Args:
      reports: the runs' ``report.json`` contents.
      field: "wer", "b_only_word_error", ...
    Returns:
      key -> (median, min, max).
    """
    if not reports:
        raise ValueError("no reports to summarise")
    keys = set.intersection(*(set(r.get(field, {})) for r in reports))
    out = {}
    for key in sorted(keys):
        values = sorted(float(r[field][key]) for r in reports)
        n = len(values)
        median = (values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2)
        out[key] = (median, values[0], values[-1])
    return out


def targets_over_runs(reports: Sequence[Mapping[str, Any]]
                      ) -> list[tuple[str, int, int, list[str]]]:
    """Each target of the runs' reports: (target, runs that met it, runs that checked it,
    measured per run, "-" for a run whose report lacks it), in the first report's order."""
    names: list[str] = []
    for r in reports:
        names += [t["target"] for t in r.get("targets", []) if t["target"] not in names]
    out = []
    for name in names:
        per_run = [next((t for t in r.get("targets", []) if t["target"] == name), None)
                   for r in reports]
        out.append((name, sum(bool(t and t["met"]) for t in per_run),
                    sum(t is not None for t in per_run),
                    [t["measured"] if t else "-" for t in per_run]))
    return out
