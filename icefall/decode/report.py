"""WER reports in icefall's formats, and parsers that read them back.

Files (as icefall's ``store_transcripts``, ``write_error_stats`` and the ``save_results`` of
its decode scripts write them; k2-fsa/icefall ``icefall/utils.py``):

- ``recogs-<set>-<tag>.txt``: per utterance ``<id>:\\tref=['A', 'B']`` and
  ``<id>:\\thyp=['A', 'C']`` (Python list syntax).
- ``errs-<set>-<tag>.txt``: ``%WER = 4.96``, an ``Errors: ...`` count line, then the sections
  PER-UTT DETAILS (successive errors joined: ``A (B C->D) E``), SUBSTITUTIONS, DELETIONS,
  INSERTIONS and PER-WORD STATS.
- ``wer-summary-<set>-<tag>.txt``: ``settings\\tWER`` then ``<key>\\t<wer>``, best first.

and the log lines ``[<set>-<key>] %WER 4.96% [2597 / 52343, 276 ins, 221 del, 2100 sub ]`` and
``For <set>, WER of different settings are:`` followed by ``<key>\\t<wer>`` lines, the first
ending in ``\\tbest for <set>``. Alignment and counts come from kaldialign. Every file is
written to a temporary file in its directory and renamed into place.

Dimension legend: U = utterances, W = words (of a reference or hypothesis).
"""

from __future__ import annotations

import ast
import io
import logging
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import kaldialign

from icefall.files import atomic_write_text

ERR = "*"  # kaldialign's gap symbol, also printed for a missing side of an error

# (utterance id, reference words, hypothesis words)
Result = tuple[str, Sequence[str], Sequence[str]]


@dataclass(frozen=True)
class WerStats:
    """Word error counts of a test set.

    Attributes:
      wer: 100 * errors / ref_words rounded to 2 decimals, as icefall reports it.
      errors, ref_words, ins, dels, subs: counts (None where a parsed line lacks them).
      corr: correct words (None where unknown).
    """

    wer: float
    errors: int | None = None
    ref_words: int | None = None
    ins: int | None = None
    dels: int | None = None
    subs: int | None = None
    corr: int | None = None


# ---------------------------------------------------------------------------
# Validation and counting
# ---------------------------------------------------------------------------


def _check_results(results: Sequence[Result]) -> None:
    """Raises ValueError unless ``results`` is a non-empty list of (id, words, words)."""
    if len(results) == 0:
        raise ValueError("no decoding results: the test set is empty")
    for item in results:
        if len(item) != 3:
            raise ValueError(f"each result must be (cut_id, ref_words, hyp_words), got {item!r}")
        cut_id, ref, hyp = item
        for name, words in (("ref", ref), ("hyp", hyp)):
            if isinstance(words, str) or not all(isinstance(w, str) for w in words):
                raise ValueError(f"{cut_id}: {name} must be a list of words (str), "
                                 f"got {words!r}")
    if sum(len(ref) for _, ref, _ in results) == 0:
        raise ValueError("the references have no words: WER is undefined")


def compute_wer(results: Sequence[Result]) -> WerStats:
    """WER of (id, ref_words, hyp_words) triples with ``kaldialign.edit_distance``.

    Raises:
      ValueError: on empty results, references without words, or non-list words.
    """
    _check_results(results)
    ins = dels = subs = 0
    for _, ref, hyp in results:
        d = kaldialign.edit_distance(list(ref), list(hyp))
        ins, dels, subs = ins + d["ins"], dels + d["del"], subs + d["sub"]
    ref_words = sum(len(ref) for _, ref, _ in results)
    errors = ins + dels + subs
    return WerStats(wer=round(100.0 * errors / ref_words, 2), errors=errors,
                    ref_words=ref_words, ins=ins, dels=dels, subs=subs,
                    corr=ref_words - subs - dels)


@dataclass(frozen=True)
class ListedWordErrors:
    """Errors on a list of words (e.g. a context-biasing list): reference occurrences of a
    listed word not recognised (substituted or deleted), hypothesis occurrences of a
    listed word that the reference does not have there (substitutions and insertions),
    and the reference occurrences. ``rate`` is 100 * (misses + false_alarms) / ref_words,
    the biased-word error rate of contextual-biasing papers."""

    misses: int
    false_alarms: int
    ref_words: int

    @property
    def rate(self) -> float:
        return round(100.0 * (self.misses + self.false_alarms) / max(self.ref_words, 1), 2)


def listed_word_errors(results: Sequence[Result], words: Iterable[str]) -> ListedWordErrors:
    """:class:`ListedWordErrors` of ``results`` on ``words`` (kaldialign's alignment)."""
    _check_results(results)
    listed = set(words)
    misses = false_alarms = ref_words = 0
    for _, ref, hyp in results:
        for r, h in kaldialign.align(list(ref), list(hyp), ERR):
            if r in listed:
                ref_words += 1
                misses += r != h
            if h in listed and h != r:
                false_alarms += 1
    return ListedWordErrors(misses, false_alarms, ref_words)


def _count_errors(results: Sequence[Result]) -> tuple[dict[tuple[str, str], int], dict[str, int],
                                                      dict[str, int], dict[str, list[int]], int]:
    """Counts errors over the kaldialign alignments, per kind and per word.

    Returns:
      (subs, ins, dels, words, num_corr): subs[(ref, hyp)], ins[hyp], dels[ref] counts;
      words[w] = [corr, ref_sub, hyp_sub, ins, del] counts of word w.
    """
    subs: dict[tuple[str, str], int] = defaultdict(int)
    ins: dict[str, int] = defaultdict(int)
    dels: dict[str, int] = defaultdict(int)
    words: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    num_corr = 0
    for _, ref, hyp in results:
        for r, h in kaldialign.align(list(ref), list(hyp), ERR):
            if r == ERR:
                ins[h] += 1
                words[h][3] += 1
            elif h == ERR:
                dels[r] += 1
                words[r][4] += 1
            elif r != h:
                subs[(r, h)] += 1
                words[r][1] += 1
                words[h][2] += 1
            else:
                words[r][0] += 1
                num_corr += 1
    return subs, ins, dels, words, num_corr


def _utterance_details(ref: Sequence[str], hyp: Sequence[str]) -> str:
    """One PER-UTT DETAILS line body: correct words plain, each run of successive errors
    as ``(ref words->hyp words)`` with ``*`` for an empty side."""
    parts: list[str] = []
    run_ref: list[str] = []
    run_hyp: list[str] = []

    def flush() -> None:
        if run_ref or run_hyp:
            parts.append(f"({' '.join(run_ref) or ERR}->{' '.join(run_hyp) or ERR})")
            run_ref.clear()
            run_hyp.clear()

    for r, h in kaldialign.align(list(ref), list(hyp), ERR):
        if r == h:
            flush()
            parts.append(r)
            continue
        if r != ERR:
            run_ref.append(r)
        if h != ERR:
            run_hyp.append(h)
    flush()
    return " ".join(parts)


# ---------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------


def format_error_stats(test_set_name: str, results: Sequence[Result],
                       enable_log: bool = True) -> tuple[str, float]:
    """The text of an ``errs-*.txt`` file and the WER (icefall's ``write_error_stats``).

    Args:
      test_set_name: name used in the log line, e.g. ``test-other-greedy_search``.
      results: (cut_id, ref_words, hyp_words) per utterance.
      enable_log: also log ``[name] %WER 4.96% [2597 / 52343, 276 ins, 221 del, 2100 sub ]``.
    Returns:
      (file text, WER in percent rounded to 2 decimals).
    """
    _check_results(results)
    subs, ins, dels, words, num_corr = _count_errors(results)
    ref_len = sum(len(ref) for _, ref, _ in results)
    n_sub, n_ins, n_del = sum(subs.values()), sum(ins.values()), sum(dels.values())
    tot = n_sub + n_ins + n_del
    wer_str = "%.2f" % (100.0 * tot / ref_len)
    if enable_log:
        logging.info(f"[{test_set_name}] %WER {tot / ref_len:.2%} "
                     f"[{tot} / {ref_len}, {n_ins} ins, {n_del} del, {n_sub} sub ]")
    out = io.StringIO()
    w = out.write
    w(f"%WER = {wer_str}\n")
    w(f"Errors: {n_ins} insertions, {n_del} deletions, {n_sub} substitutions, "
      f"over {ref_len} reference words ({num_corr} correct)\n")
    w("Search below for sections starting with PER-UTT DETAILS:, SUBSTITUTIONS:, "
      "DELETIONS:, INSERTIONS:, PER-WORD STATS:\n\n")
    w("PER-UTT DETAILS: corr or (ref->hyp)  \n")
    for cut_id, ref, hyp in results:
        w(f"{cut_id}:\t{_utterance_details(ref, hyp)}\n")
    w("\nSUBSTITUTIONS: count ref -> hyp\n")
    for count, (r, h) in sorted(((v, k) for k, v in subs.items()), reverse=True):
        w(f"{count}   {r} -> {h}\n")
    w("\nDELETIONS: count ref\n")
    for count, r in sorted(((v, k) for k, v in dels.items()), reverse=True):
        w(f"{count}   {r}\n")
    w("\nINSERTIONS: count hyp\n")
    for count, h in sorted(((v, k) for k, v in ins.items()), reverse=True):
        w(f"{count}   {h}\n")
    w("\nPER-WORD STATS: word  corr tot_errs count_in_ref count_in_hyp\n")
    for _, word, (corr, ref_sub, hyp_sub, n_i, n_d) in sorted(
            ((sum(v[1:]), k, v) for k, v in words.items()), reverse=True):
        w(f"{word}   {corr} {ref_sub + hyp_sub + n_i + n_d} "
          f"{corr + ref_sub + n_d} {corr + hyp_sub + n_i}\n")
    return out.getvalue(), float(wer_str)


def write_error_stats(f: TextIO | str | Path, test_set_name: str, results: Sequence[Result],
                      enable_log: bool = True) -> float:
    """Writes icefall's detailed error statistics; returns the WER (percent, 2 decimals).

    Args:
      f: an open text file (as icefall passes), or a path written atomically.
      test_set_name, results, enable_log: see :func:`format_error_stats`.
    """
    text, wer = format_error_stats(test_set_name, results, enable_log=enable_log)
    if isinstance(f, (str, Path)):
        atomic_write_text(f, text)
    else:
        f.write(text)
    return wer


def store_transcripts(filename: str | Path, texts: Iterable[Result]) -> None:
    """Writes ``<id>:\\tref=[...]`` / ``<id>:\\thyp=[...]`` lines atomically."""
    lines = []
    for cut_id, ref, hyp in texts:
        lines.append(f"{cut_id}:\tref={list(ref)}\n{cut_id}:\thyp={list(hyp)}\n")
    atomic_write_text(filename, "".join(lines))


def sort_wers(wers: Mapping[str, float] | Iterable[tuple[str, float]]) -> list[tuple[str, float]]:
    """(key, WER) pairs sorted by WER, best first (ties keep their order)."""
    items = list(wers.items()) if isinstance(wers, Mapping) else list(wers)
    if not items:
        raise ValueError("no WERs to summarise")
    return sorted(items, key=lambda kv: kv[1])


def write_wer_summary(filename: str | Path,
                      wers: Mapping[str, float] | Iterable[tuple[str, float]]
                      ) -> list[tuple[str, float]]:
    """Writes ``settings\\tWER`` and one ``<key>\\t<wer>`` line per setting, best first."""
    items = sort_wers(wers)
    atomic_write_text(filename, "settings\tWER\n" + "".join(f"{k}\t{v}\n" for k, v in items))
    return items


def format_wer_settings(test_set_name: str,
                        wers: Mapping[str, float] | Iterable[tuple[str, float]]) -> str:
    """The log block ``For <set>, WER of different settings are:`` with the best marked."""
    s = f"\nFor {test_set_name}, WER of different settings are:\n"
    note = f"\tbest for {test_set_name}"
    for key, val in sort_wers(wers):
        s += f"{key}\t{val}{note}\n"
        note = ""
    return s


def save_results(res_dir: str | Path, test_set_name: str,
                 results_dict: Mapping[str, Sequence[Result]], suffix: str | None = None,
                 enable_log: bool = True) -> list[tuple[str, float]]:
    """Writes recogs, errs and wer-summary files for each setting and logs the WER block.

    File tags: with one setting, ``suffix`` (icefall's ``params.suffix``) or else the key;
    with several, ``<key>-<suffix>`` or ``<key>`` so no setting overwrites another. The
    summary is ``wer-summary-<set>-<suffix or the single key>.txt``, or
    ``wer-summary-<set>.txt`` for several keys without a suffix.

    Args:
      res_dir: output directory (created if missing).
      test_set_name: e.g. ``test-clean``.
      results_dict: setting key (e.g. ``greedy_search``) -> (cut_id, ref_words, hyp_words).
      suffix: optional tag such as ``epoch-30-avg-9-context-2-max-sym-per-frame-1``.
    Returns:
      (key, WER) pairs, best first.
    """
    if not results_dict:
        raise ValueError(f"no decoding results for {test_set_name}")
    for results in results_dict.values():
        _check_results(results)  # everything is validated before anything is written
    res_dir = Path(res_dir)
    res_dir.mkdir(parents=True, exist_ok=True)
    single = len(results_dict) == 1
    wers: dict[str, float] = {}
    for key, results in results_dict.items():
        tag = (suffix or key) if single else (f"{key}-{suffix}" if suffix else key)
        results = sorted(results, key=lambda r: (r[0], list(r[1]), list(r[2])))
        recog_path = res_dir / f"recogs-{test_set_name}-{tag}.txt"
        store_transcripts(recog_path, results)
        errs_path = res_dir / f"errs-{test_set_name}-{tag}.txt"
        wers[key] = write_error_stats(errs_path, f"{test_set_name}-{key}", results,
                                      enable_log=enable_log)
        if enable_log:
            logging.info(f"The transcripts are stored in {recog_path}")
            logging.info(f"Wrote detailed error stats to {errs_path}")
    summary_tag = suffix or (next(iter(results_dict)) if single else None)
    name = f"wer-summary-{test_set_name}" + (f"-{summary_tag}" if summary_tag else "")
    items = write_wer_summary(res_dir / f"{name}.txt", wers)
    if enable_log:
        logging.info(format_wer_settings(test_set_name, items))
    return items


# ---------------------------------------------------------------------------
# Parsers
# ---------------------------------------------------------------------------

_NUM = r"(\d+(?:\.\d+)?)"
_WER_EQ = re.compile(r"%WER\s*=\s*" + _NUM)
_WER_COUNTS = re.compile(r"%WER\s+" + _NUM + r"\s*%?\s*\[\s*(\d+)\s*/\s*(\d+)\s*,\s*(\d+)\s+ins"
                         r"\s*,\s*(\d+)\s+del\s*,\s*(\d+)\s+sub\s*\]")
_ERRORS = re.compile(r"Errors:\s*(\d+) insertions, (\d+) deletions, (\d+) substitutions, "
                     r"over (\d+) reference words \((\d+) correct\)")


def parse_wer_line(line: str) -> WerStats:
    """Parses a WER line back into numbers.

    Accepts icefall's errs-file line ``%WER = 4.96``, its log line
    ``[set-key] %WER 4.96% [2597 / 52343, 276 ins, 221 del, 2100 sub ]`` (any prefix) and
    Kaldi's ``%WER 4.96 [ 2597 / 52343, 276 ins, 221 del, 2100 sub ]``.

    Raises:
      ValueError: when the line holds no %WER figure.
    """
    m = _WER_COUNTS.search(line)
    if m:
        wer, errors, ref_words, ins, dels, subs = m.groups()
        return WerStats(wer=float(wer), errors=int(errors), ref_words=int(ref_words),
                        ins=int(ins), dels=int(dels), subs=int(subs),
                        corr=int(ref_words) - int(subs) - int(dels))
    m = _WER_EQ.search(line)
    if m:
        return WerStats(wer=float(m.group(1)))
    raise ValueError(f"not a %WER line: {line.strip()!r}")


def parse_errs_file(filename: str | Path) -> WerStats:
    """Reads the WER and counts from the head of an ``errs-*.txt`` file."""
    text = Path(filename).read_text(encoding="utf-8")
    head = text.split("\n", 2)
    stats = parse_wer_line(head[0])
    m = _ERRORS.search(head[1]) if len(head) > 1 else None
    if m is None:
        raise ValueError(f"{filename}: second line is not an 'Errors: ...' line")
    ins, dels, subs, ref_words, corr = (int(x) for x in m.groups())
    return WerStats(wer=stats.wer, errors=ins + dels + subs, ref_words=ref_words, ins=ins,
                    dels=dels, subs=subs, corr=corr)


def read_wer_summary(filename: str | Path) -> list[tuple[str, float]]:
    """Reads a ``wer-summary-*.txt`` file into (key, WER) pairs in file order."""
    lines = Path(filename).read_text(encoding="utf-8").splitlines()
    if not lines or lines[0].split("\t") != ["settings", "WER"]:
        raise ValueError(f"{filename}: expected a 'settings\\tWER' header")
    items = []
    for n, line in enumerate(lines[1:], start=2):
        parts = line.split("\t")
        if len(parts) != 2:
            raise ValueError(f"{filename}:{n}: expected '<key>\\t<wer>', got {line!r}")
        items.append((parts[0], float(parts[1])))
    return items


def read_transcripts(filename: str | Path) -> list[tuple[str, list[str], list[str]]]:
    """Reads a ``recogs-*.txt`` file back into (cut_id, ref_words, hyp_words) triples."""
    lines = Path(filename).read_text(encoding="utf-8").splitlines()
    if len(lines) % 2:
        raise ValueError(f"{filename}: expected ref/hyp line pairs, got {len(lines)} lines")
    out = []
    for ref_line, hyp_line in zip(lines[0::2], lines[1::2]):
        cut_id, _, ref = ref_line.partition(":\tref=")
        hyp_id, _, hyp = hyp_line.partition(":\thyp=")
        if cut_id != hyp_id or not ref or not hyp:
            raise ValueError(f"{filename}: malformed pair {ref_line!r} / {hyp_line!r}")
        out.append((cut_id, ast.literal_eval(ref), ast.literal_eval(hyp)))
    return out


_SETTINGS_HEAD = re.compile(r"For (\S+), WER of different settings are:")


def parse_wer_settings(text: str) -> dict[str, list[tuple[str, float]]]:
    """Parses every ``For <set>, WER of different settings are:`` block of a decode log.

    Returns:
      test set -> (key, WER) pairs in the logged order (best first). A later block for the
      same set replaces an earlier one.
    """
    out: dict[str, list[tuple[str, float]]] = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = _SETTINGS_HEAD.search(line)
        if not m:
            continue
        items = []
        for row in lines[i + 1:]:
            parts = row.strip().split("\t")
            if len(parts) < 2:
                break
            try:
                items.append((parts[0], float(parts[1])))
            except ValueError:
                break
        out[m.group(1)] = items
    return out
