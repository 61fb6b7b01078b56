"""Preparing a user's own data for adapter fine-tuning, in one resumable step.

:func:`prepare_user_data` reads the training data (and the test data, or holds a seeded
share of the training data out), checks and normalises every row
(:mod:`icefall.data.user_check`), counts the ``<unk>`` tokens the base's BPE model makes of
the transcripts, converts audio at other sample rates or with several channels to 16 kHz
mono, and writes lhotse manifests:

    <out-dir>/manifests/<prefix>_recordings_<part>.jsonl.gz     (part: train, test)
    <out-dir>/manifests/<prefix>_supervisions_<part>.jsonl.gz
    <out-dir>/audio/<part>/<recording>.wav                      converted audio
    <out-dir>/tokens.txt                                        the BPE model's tokens
    <out-dir>/bad_rows.tsv                                      every row left out, and why
    <out-dir>/prepare.json                                      the summary (last written)

The manifests, ``tokens.txt``, ``bad_rows.tsv`` and ``prepare.json`` are published together
or not at all, so an interrupted or failed preparation leaves no half-written set.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from icefall.data.text import bpe_is_lower_case, normalizer_for_bpe
from icefall.data.tokenizer import check_unk_share, load_bpe_model, unk_stats, write_tokens
from icefall.data.user_check import (
    CheckedRows,
    check_rows,
    convert_audio,
    recording_key,
    split_held_out,
)
from icefall.data.user_data import BadRow, Row, input_kind, read_rows
from icefall.files import StagedFiles

PREFIX = "custom"
PARTS = ("train", "test")
SHOW_BAD_ROWS = 5  # bad rows named in the log and the error; bad_rows.tsv has them all


class BadRowsError(ValueError):
    """Bad rows were found and the user asked for them to be fatal."""


@dataclass
class PreparedSet:
    """One part after the checks."""

    name: str  # the user's name for it (report labels)
    source: str  # where it was read from ("" for a held-out share)
    rows: list[Row]
    bad: list[BadRow]
    converted: int = 0


def describe_bad_rows(name: str, bad: Sequence[BadRow], shown: int = SHOW_BAD_ROWS) -> str:
    """``train: 3 bad rows left out: a.wav (train.csv:4): audio not found; ...``."""
    first = "; ".join(f"{b.id} ({b.where}): {b.reason}" for b in bad[:shown])
    more = f"; and {len(bad) - shown} more" if len(bad) > shown else ""
    return f"{name}: {len(bad)} bad row{'s' if len(bad) != 1 else ''}: {first}{more}"


def _checked(path: str, normalize, min_seconds: float, max_seconds: float) -> CheckedRows:
    rows, bad = read_rows(path)
    checked = check_rows(rows, normalize, min_seconds, max_seconds)
    checked.bad = bad + checked.bad
    return checked


def check_sets(params: Mapping[str, Any], normalize) -> tuple[list[PreparedSet], dict]:
    """Reads and checks the train (and test) data; returns both parts and the audio files
    to convert. Without a test set, a seeded share of the training recordings is held
    out."""
    train = _checked(params["train"], normalize, params["min_seconds"], params["max_seconds"])
    convert = dict(train.convert)
    if params.get("test"):
        test = _checked(params["test"], normalize, 0.0, params["max_seconds"])
        convert.update(test.convert)
        train_rows, test_rows, test_bad = train.rows, test.rows, test.bad
        test_source = str(params["test"])
    else:
        train_rows, test_rows = split_held_out(train.rows, params["test_share"],
                                               params["seed"])
        test_bad, test_source = [], ""
    sets = [PreparedSet(params["train_name"], str(params["train"]), train_rows, train.bad),
            PreparedSet(params["test_name"], test_source, test_rows, test_bad)]
    for s in sets:
        s.converted = len({r.path for r in s.rows if r.path in convert})
    return sets, convert


def report_bad_rows(sets: Sequence[PreparedSet], fatal: bool) -> None:
    """Logs the bad rows of each part (first few and a count); raises BadRowsError when
    ``fatal`` and there are any."""
    found = [describe_bad_rows(s.name, s.bad) for s in sets if s.bad]
    if found and fatal:
        raise BadRowsError(" | ".join(found) + " (all of them in bad_rows.tsv with "
                           "--skip-bad-rows 1, which leaves them out)")
    for line in found:
        logging.warning(line + " -- left out")


def check_unk(sets: Sequence[PreparedSet], sp, max_share: float) -> dict[str, dict]:
    """Logs each part's ``<unk>`` share; raises ValueError when one is above
    ``max_share``."""
    out = {}
    for s in sets:
        stats = unk_stats(sp, ((r.id, r.text) for r in s.rows))
        logging.info(stats.describe(s.name))
        check_unk_share(stats, max_share, s.name)
        out[s.name] = {"tokens": stats.tokens, "unk": stats.unk, "share": stats.share,
                       "utterances_with_unk": stats.utterances_with_unk,
                       "first": [u for u, _ in stats.offenders]}
    return out


def convert_part(rows: Sequence[Row], convert: Mapping[Path, Any], audio_dir: Path) -> None:
    """Converts the audio of ``rows`` that needs it to 16 kHz mono files in ``audio_dir``
    (one per recording; files already converted by an interrupted run are kept) and points
    the rows at them."""
    done: dict[Path, Path] = {}
    for row in rows:
        if row.path not in convert:
            continue
        dst = audio_dir / f"{recording_key(row)}.wav"
        if dst not in done.values() and not dst.is_file():
            convert_audio(row.path, dst)
        done[row.path] = dst
        row.path = dst


def part_manifests(rows: Sequence[Row]):
    """(RecordingSet, SupervisionSet) of one part: one recording per file (or Kaldi
    recording), one supervision per row, channel 0."""
    from lhotse import Recording, RecordingSet, SupervisionSegment, SupervisionSet

    recs: dict[str, Recording] = {}
    sups = []
    for row in rows:
        key = recording_key(row)
        if key not in recs:
            recs[key] = Recording.from_file(str(row.path), recording_id=key)
        duration = min(row.duration, recs[key].duration - row.start)
        sups.append(SupervisionSegment(id=row.id, recording_id=key, start=row.start,
                                       duration=duration, channel=0, text=row.text,
                                       speaker=row.speaker))
    return RecordingSet.from_recordings(recs.values()), SupervisionSet.from_segments(sups)


def _summary(params: Mapping[str, Any], sets: Sequence[PreparedSet], unk: dict,
             lower: bool) -> dict[str, Any]:
    parts = {}
    for part, s in zip(PARTS, sets):
        parts[part] = {
            "name": s.name, "source": s.source,
            "kind": input_kind(s.source) if s.source else "held-out",
            "utterances": len(s.rows), "seconds": round(sum(r.duration for r in s.rows), 3),
            "bad_rows": len(s.bad),
            "first_bad_rows": [f"{b.id} ({b.where}): {b.reason}" for b in s.bad[:SHOW_BAD_ROWS]],
            "converted_files": s.converted, "unk": unk[s.name]}
    return {"prefix": PREFIX, "sets": parts, "bpe_model": str(params["bpe_model"]),
            "normalize_text": bool(params["normalize_text"]), "lower_case_bpe": lower,
            "test_share": None if params.get("test") else params["test_share"],
            "seed": params["seed"]}


def write_outputs(out_dir: Path, sets: Sequence[PreparedSet], sp,
                  summary: Mapping[str, Any]) -> None:
    """Manifests, tokens.txt, bad_rows.tsv and prepare.json, published together."""
    manifests = out_dir / "manifests"
    manifests.mkdir(parents=True, exist_ok=True)
    lines = ["part\tid\twhere\treason\n"] + [f"{part}\t{b.id}\t{b.where}\t{b.reason}\n"
                                          for part, s in zip(PARTS, sets) for b in s.bad]
    with StagedFiles() as staged:
        for part, s in zip(PARTS, sets):
            recs, sups = part_manifests(s.rows)
            recs.to_file(staged.stage(manifests / f"{PREFIX}_recordings_{part}.jsonl.gz"))
            sups.to_file(staged.stage(manifests / f"{PREFIX}_supervisions_{part}.jsonl.gz"))
        write_tokens(sp, staged.stage(out_dir / "tokens.txt"))
        staged.stage(out_dir / "bad_rows.tsv").write_text("".join(lines), encoding="utf-8")
        staged.stage(out_dir / "prepare.json").write_text(
            json.dumps(summary, indent=2) + "\n", encoding="utf-8")


def prepare_user_data(params: Mapping[str, Any]) -> dict[str, Any]:
    """Everything of the module docstring; returns the summary written to prepare.json.

    Args:
      params: ``train``, ``test`` (None: hold ``test_share`` out with ``seed``),
        ``train_name``, ``test_name``, ``bpe_model``, ``out_dir``, ``min_seconds``,
        ``max_seconds``, ``skip_bad_rows``, ``normalize_text``, ``max_unk_share``.
    Raises:
      UserDataError, BadRowsError, ValueError, OSError, ImportError: one line each.
    """
    out_dir = Path(params["out_dir"])
    sp = load_bpe_model(params["bpe_model"])
    lower = bpe_is_lower_case(sp)
    if params["normalize_text"]:
        normalize = normalizer_for_bpe(sp)
    else:
        def normalize(text: str) -> str:
            return " ".join(text.split())
    sets, convert = check_sets(params, normalize)
    report_bad_rows(sets, fatal=not params["skip_bad_rows"])
    for s in sets:
        if not s.rows:
            raise ValueError(f"{s.name}: no usable utterance"
                             + (f" ({describe_bad_rows(s.name, s.bad)})" if s.bad else ""))
    unk = check_unk(sets, sp, params["max_unk_share"])
    for part, s in zip(PARTS, sets):
        convert_part(s.rows, convert, out_dir / "audio" / part)
    summary = _summary(params, sets, unk, lower)
    write_outputs(out_dir, sets, sp, summary)
    for part, s in zip(PARTS, sets):
        logging.info(f"{part} ({s.name}): {len(s.rows)} utterances, "
                     f"{sum(r.duration for r in s.rows) / 60:.1f} min, {len(s.bad)} left out, "
                     f"{s.converted} files converted to 16 kHz mono")
    return summary
