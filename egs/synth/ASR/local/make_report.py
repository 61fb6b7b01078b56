#!/usr/bin/env python3
"""Collect the demo's WERs into a table, exp/report.md, exp/report.json and exp/wer.png.

Usage (from egs/synth/ASR, after run.sh's decoding stages):

    python local/make_report.py --exp-dir exp --vocab-dir data/manifests

Reads ``<exp-dir>/decode/<system>/wer-summary-<set>-*.txt`` and ``recogs-<set>-*.txt``
(written by the decode scripts), ``<exp-dir>/stage_seconds.tsv`` (written by run.sh), the
domains' vocabularies ``<vocab-dir>/synth_{a,b}_vocab.txt`` (written by prepare.sh) and the
training logs' "Number of model parameters" and "A total of N trainable parameters" lines;
checks the demo's targets. Besides the WER, every system decoded on B gets its error rate
on the B-only words (B's vocabulary less A's; misses plus false alarms per reference
occurrence), ``b_only_word_error`` in report.json. The extra systems of
``run.sh --extra-systems 1`` (LoRA, adapters in the decoder and joiner too, context
biasing) and of ``run.sh --streaming 1`` (a causal base with adapters, decoded chunk by
chunk) get rows and targets of their own when their results exist.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from icefall.cli import run_guarded
from icefall.cli.flags import ArgumentParser
from icefall.decode.run_summary import (
    plot_wer_bars,
    read_listed_word_error_rates,
    read_param_counts,
    read_stage_seconds,
    read_system_wers,
    read_word_list,
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
    # run.sh --extra-systems 1
    "lora/B": ("lora", "B"), "lora_off/A": ("lora_off", "A"),
    "adapter_dj/B": ("adapter_dj", "B"), "adapter_dj_off/A": ("adapter_dj_off", "A"),
    "adapter_beam/B": ("adapter_beam", "B"), "adapter_biased/B": ("adapter_biased", "B"),
    # run.sh --streaming 1
    "streaming/A": ("streaming", "A"), "streaming/B": ("streaming", "B"),
    "streaming_off/A": ("streaming_off", "A"), "streaming_off/B": ("streaming_off", "B"),
}
# the stages of run.sh --extra-systems 1 and --streaming 1 (not part of make demo's time)
EXTRA_STAGES = ("train_lora", "decode_lora", "decode_lora_off", "train_adapter_dj",
                "decode_adapter_dj", "decode_adapter_dj_off", "decode_biased",
                "train_causal_base", "train_causal_adapter", "decode_streaming",
                "decode_streaming_off")
# the systems with a training log of their own: report key -> exp-dir subfolder
TRAINED = {"adapter": "adapter", "lora": "lora", "adapter_dj": "adapter_dj",
           "streaming": "causal_adapter"}


def read_wers(exp_dir: Path) -> dict[str, float]:
    """WER (%) of every system whose wer-summary file exists."""
    return read_system_wers(exp_dir / "decode", SYSTEMS)


def b_only_words(vocab_dir: Path) -> set[str]:
    """The words of domain B's vocabulary that domain A's lacks."""
    return (read_word_list(vocab_dir / "synth_b_vocab.txt")
            - read_word_list(vocab_dir / "synth_a_vocab.txt"))


def read_b_only_errors(exp_dir: Path, words: set[str]) -> dict[str, float]:
    """Error rate (%) on ``words`` of every system decoded on B, keyed like the WERs."""
    on_b = {k: v for k, v in SYSTEMS.items() if v[1] == "B"}
    return read_listed_word_error_rates(exp_dir / "decode", on_b, words)


def _recovery(w: dict[str, float], key: str) -> float:
    """The share of full fine-tuning's WER gain on B that system ``key`` recovers."""
    gain = w["base/B"] - w["full_ft/B"]
    return (w["base/B"] - w[key]) / gain if gain > 0 else float("nan")


def check_targets(w: dict[str, float], seconds: dict[str, int],
                  b_only: dict[str, float] | None = None,
                  params: dict[str, tuple[int | None, int | None]] | None = None
                  ) -> list[tuple[str, bool, str]]:
    """(target, met, measured) for each of the demo's targets that can be evaluated.

    Args:
      w: report key -> WER (%).
      seconds: stage name -> seconds.
      b_only: report key -> error rate (%) on the B-only words.
      params: trained system -> (trainable, total) parameters.
    """
    checks = []
    total = sum(s for name, s in seconds.items() if name not in EXTRA_STAGES)
    checks.append(("stages <= 12 min", total <= 720, f"{total / 60:.1f} min"))
    if "base/A" in w:
        checks.append(("base/A <= 10% WER", w["base/A"] <= 10.0, f"{w['base/A']:.2f}%"))
    if {"base/A", "base/B"} <= w.keys():
        checks.append(("base/B >= 2x base/A", w["base/B"] >= 2 * w["base/A"],
                       f"{w['base/B'] / max(w['base/A'], 1e-9):.1f}x"))
    if {"base/B", "adapter/B", "full_ft/B"} <= w.keys():
        rec = _recovery(w, "adapter/B")
        checks.append(("adapters recover >= 60% of full fine-tuning's gain on B", rec >= 0.6,
                       f"{100 * rec:.0f}%"))
    checks += _off_checks(w, (("adapters", "adapter_off/A"), ("LoRA", "lora_off/A"),
                              ("decoder+joiner adapters", "adapter_dj_off/A")))
    for key, tol in (("onnx/B", 0.0), ("sherpa_onnx/B", 0.0), ("onnx_int8/B", 1.0)):
        if {key, "adapter/B"} <= w.keys():
            diff = abs(w[key] - w["adapter/B"])
            checks.append((f"{key} within {tol:g} of adapter/B", diff <= tol,
                           f"{w[key]:.2f}% vs {w['adapter/B']:.2f}%"))
    return checks + _extra_checks(w, b_only or {}, params or {})


def _off_checks(w: dict[str, float], systems: tuple[tuple[str, str], ...]
                ) -> list[tuple[str, bool, str]]:
    """Each system switched off on A decodes exactly as the base model."""
    return [(f"{name} off on A == base/A", w[key] == w["base/A"],
             f"{w[key]:.2f}% vs {w['base/A']:.2f}%")
            for name, key in systems if {"base/A", key} <= w.keys()]


def _extra_checks(w: dict[str, float], b_only: dict[str, float],
                  params: dict[str, tuple[int | None, int | None]]
                  ) -> list[tuple[str, bool, str]]:
    """The targets of the extra systems (issue 15), where their results exist."""
    checks = []
    trainable, total = params.get("lora", (None, None))
    if trainable is not None and total:
        share = 100 * trainable / total
        checks.append(("LoRA trains <= 2% of the parameters", share <= 2.0,
                       f"{trainable} of {total} ({share:.2f}%)"))
    if {"base/B", "adapter/B", "full_ft/B", "lora/B"} <= w.keys():
        lora, adapter = _recovery(w, "lora/B"), _recovery(w, "adapter/B")
        checks.append(("LoRA recovers >= the adapters' share of full fine-tuning's gain on B",
                       lora >= adapter, f"{100 * lora:.0f}% vs {100 * adapter:.0f}%"))
    if {"adapter_dj/B", "full_ft/B"} <= b_only.keys():
        dj, ft = b_only["adapter_dj/B"], b_only["full_ft/B"]
        checks.append(("decoder+joiner adapters: B-only word errors <= 1.5x full "
                       "fine-tuning's", dj <= 1.5 * ft, f"{dj:.2f}% vs {ft:.2f}%"))
    if {"streaming/B", "streaming_off/B"} <= w.keys():
        on, off = w["streaming/B"], w["streaming_off/B"]
        checks.append(("streaming: adapters lower B's WER by >= 25% of the causal base's",
                       on <= 0.75 * off, f"{on:.2f}% vs {off:.2f}% (adapters off)"))
    return checks


def _cell(w: dict[str, float], key: str | None) -> str:
    return f"{w[key]:.2f}" if key is not None and key in w else "-"


# table rows: (system, key on A, key on B); an extra system's row shows when it has results
ROWS = [("base model (trained on A)", "base/A", "base/B"),
        ("adapters, trained on B", "adapter_off/A", "adapter/B"),
        ("full fine-tuning on B", "full_ft/A", "full_ft/B"),
        ("adapters: ONNX Runtime fp32", None, "onnx/B"),
        ("adapters: ONNX Runtime int8", None, "onnx_int8/B"),
        ("adapters: sherpa-onnx", None, "sherpa_onnx/B")]
EXTRA_ROWS = [("LoRA, trained on B", "lora_off/A", "lora/B"),
              ("adapters in encoder, decoder and joiner, trained on B", "adapter_dj_off/A",
               "adapter_dj/B"),
              ("adapters: modified beam search", None, "adapter_beam/B"),
              ("adapters: modified beam search, biased to the B-only words", None,
               "adapter_biased/B"),
              ("causal base, streaming (chunk by chunk)", "streaming_off/A",
               "streaming_off/B"),
              ("causal base with adapters trained on B, streaming", None, "streaming/B")]


def wer_table(w: dict[str, float], b_only: dict[str, float] | None = None) -> str:
    """The seed's table in miniature (WER %, test sets of domains A and B), with the error
    rate (%) on B's own words on B."""
    b_only = b_only or {}
    rows = ROWS + [r for r in EXTRA_ROWS if r[1] in w or r[2] in w]
    lines = ["| system | A (audiobooks) | B (podcasts) | B-only words on B |",
             "|---|---|---|---|"]
    for name, a, b in rows:
        a_cell = _cell(w, a) + (" (off)" if a is not None and a.endswith("_off/A")
                                and a in w else "")
        lines.append(f"| {name} | {a_cell} | {_cell(w, b)} | {_cell(b_only, b)} |")
    return "\n".join(lines)


# chart groups: (label, system on A, system on B); A is where forgetting shows, B recovery
GROUPS = [("base model\n(trained on A)", "base/A", "base/B"),
          ("adapters\n(off on A)", "adapter_off/A", "adapter/B"),
          ("full\nfine-tuning", "full_ft/A", "full_ft/B"),
          ("adapters:\nONNX fp32", None, "onnx/B"), ("adapters:\nONNX int8", None, "onnx_int8/B"),
          ("adapters:\nsherpa-onnx", None, "sherpa_onnx/B"),
          ("LoRA\n(off on A)", "lora_off/A", "lora/B"),
          ("adapters, enc.+\ndec.+joiner", "adapter_dj_off/A", "adapter_dj/B"),
          ("adapters:\nbiased", None, "adapter_biased/B"),
          ("streaming:\ncausal base", "streaming_off/A", "streaming_off/B"),
          ("streaming:\nadapters (off on A)", "streaming_off/A", "streaming/B")]
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
    p.add_argument("--vocab-dir", type=Path, default=Path("data/manifests"),
                   help="Where prepare.sh wrote synth_a_vocab.txt and synth_b_vocab.txt.")
    args = p.parse_args()
    run_guarded(report, args.exp_dir, args.vocab_dir)


def report(exp_dir: Path, vocab_dir: Path) -> None:
    """Writes report.md, report.json and wer.png into ``exp_dir`` and prints the table."""
    w, seconds = read_wers(exp_dir), read_stage_seconds(exp_dir)
    require_results(w, exp_dir / "decode")
    b_only = read_b_only_errors(exp_dir, b_only_words(vocab_dir))
    params = {name: read_param_counts(exp_dir / sub / "log" / "log-train")
              for name, sub in TRAINED.items()}
    trainable, total = params["adapter"]
    checks = check_targets(w, seconds, b_only, params)
    data = {"wer": w, "b_only_word_error": b_only, "trainable_params": trainable,
            "total_params": total,
            "params": {k: {"trainable": t, "total": n} for k, (t, n) in params.items()
                       if t is not None},
            "seconds": seconds,
            "targets": [{"target": t, "met": ok, "measured": m} for t, ok, m in checks]}
    table = wer_table(w, b_only)
    extra = sum(s for name, s in seconds.items() if name in EXTRA_STAGES)
    lines = ["# zipformer-adapter demo report", "", table, "",
             f"Trainable parameters with adapters: {trainable} of {total}.",
             *(f"Trainable parameters of {k}: {t} of {n}." for k, (t, n) in params.items()
               if k != "adapter" and t is not None), "",
             "| target | measured | met |", "|---|---|---|",
             *(f"| {t} | {m} | {'yes' if ok else 'NO'} |" for t, ok, m in checks), "",
             "Seconds per stage: " + ", ".join(f"{k} {v}" for k, v in seconds.items())
             + (f" (extra systems: {extra / 60:.1f} min)" if extra else "")]
    write_report(exp_dir, lines, data)
    plot(w, exp_dir / "wer.png")
    print(table)
    print("\n".join(f"{'ok ' if ok else 'NO '} {t}: {m}" for t, ok, m in checks))
    print(f"Report: {exp_dir / 'report.md'}, {exp_dir / 'report.json'}, "
          f"{exp_dir / 'wer.png'}")


if __name__ == "__main__":
    main()
