"""A user's own recordings and transcripts, read from the forms people keep them in.

:func:`read_rows` takes any of:

* a CSV or TSV file whose header names ``path`` and ``text`` (optional ``speaker`` and
  ``id``); paths are absolute or relative to the file's folder;
* a Kaldi data directory: ``wav.scp`` and ``text``, optional ``segments`` and ``utt2spk``;
* a folder of audio files, each with a same-named ``.txt`` transcript beside it;
* lhotse manifests: a cut manifest, or a recording manifest whose supervision manifest lies
  beside it (``*recordings*`` -> ``*supervisions*``).

Each utterance becomes a :class:`Row`; a row that cannot be used as it stands (a malformed
line, a ``wav.scp`` command, audio without a transcript) becomes a :class:`BadRow` naming
where it came from and why. What the audio holds is checked later
(:mod:`icefall.data.user_check`).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

# Audio formats libsndfile reads, as a folder's files are recognised.
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".sph", ".aiff", ".aif")
# Accepted header names of a CSV/TSV table, by field.
COLUMN_NAMES = {
    "path": ("path", "audio", "audio_path", "audio_filepath", "file", "filename", "wav"),
    "text": ("text", "transcript", "transcription", "sentence"),
    "speaker": ("speaker", "speaker_id", "spk"),
    "id": ("id", "utt_id", "utterance_id", "uttid"),
}
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class UserDataError(ValueError):
    """The input as a whole cannot be read (not a single row of it); one line."""


@dataclass
class Row:
    """One utterance: the audio (a whole file, or ``duration`` seconds from ``start``)
    and its raw transcript. ``where`` says where it was read (``train.csv:12``)."""

    id: str
    path: Path
    text: str
    where: str
    speaker: str | None = None
    start: float = 0.0
    duration: float | None = None  # None: to the end of the file
    recording_id: str | None = None  # several rows of one file (Kaldi segments)


@dataclass
class BadRow:
    """An utterance left out, with the reason."""

    id: str
    where: str
    reason: str


def safe_id(text: str) -> str:
    """``text`` with every run of characters other than letters, digits, ``_.-`` as ``_``."""
    return _ID_UNSAFE.sub("_", text).strip("_") or "utt"


def _column(header: list[str], field: str) -> int | None:
    names = [h.strip().lower() for h in header]
    for alias in COLUMN_NAMES[field]:
        if alias in names:
            return names.index(alias)
    return None


def _delimiter(path: Path, header_line: str) -> str:
    if path.suffix.lower() == ".tsv" or "\t" in header_line:
        return "\t"
    return ","


def read_table(path: Path) -> tuple[list[Row], list[BadRow]]:
    """Rows of a CSV or TSV file with a header (see the module docstring).

    Raises:
      UserDataError: the file is unreadable, empty, or its header lacks ``path``/``text``.
    """
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserDataError(f"cannot read {path}: {e}") from e
    if not lines or not lines[0].strip():
        raise UserDataError(f"{path} is empty: expected a header naming 'path' and 'text'")
    records = list(csv.reader(lines, delimiter=_delimiter(path, lines[0])))
    header = records[0]
    cols = {f: _column(header, f) for f in COLUMN_NAMES}
    if cols["path"] is None or cols["text"] is None:
        raise UserDataError(f"{path}: the header must name a 'path' and a 'text' column "
                            f"(found: {', '.join(h.strip() for h in header)})")
    rows, bad = [], []
    for number, record in enumerate(records[1:], start=2):
        where = f"{path.name}:{number}"
        if not any(field.strip() for field in record):
            continue
        if len(record) != len(header):
            bad.append(BadRow(f"line-{number}", where, f"has {len(record)} fields, the header "
                                                       f"{len(header)}"))
            continue
        audio = Path(record[cols["path"]].strip())
        audio = audio if audio.is_absolute() else path.parent / audio
        utt = record[cols["id"]].strip() if cols["id"] is not None else ""
        speaker = record[cols["speaker"]].strip() if cols["speaker"] is not None else ""
        rows.append(Row(safe_id(utt or audio.stem), audio, record[cols["text"]], where,
                        speaker=speaker or None))
    return rows, bad


def _kaldi_table(path: Path, min_fields: int) -> list[tuple[int, list[str]]]:
    """(line number, fields) of a Kaldi table: key, then the rest of the line split once."""
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        key, _, rest = line.strip().partition(" ")
        fields = [key] + (rest.strip().split() if min_fields > 2 else [rest.strip()])
        out.append((number, fields))
    return out


def read_kaldi_dir(folder: Path) -> tuple[list[Row], list[BadRow]]:
    """Rows of a Kaldi data directory (``wav.scp``, ``text``, optional ``segments`` and
    ``utt2spk``). A ``wav.scp`` entry that is a command (ends with ``|``) is a bad row."""
    wavs, bad = {}, []
    for number, (rec, rest) in _kaldi_table(folder / "wav.scp", 2):
        wavs[rec] = (number, rest)
    texts = {f[0]: (n, f[1]) for n, f in _kaldi_table(folder / "text", 2)}
    speakers = {}
    if (folder / "utt2spk").is_file():
        speakers = {f[0]: f[1] for _, f in _kaldi_table(folder / "utt2spk", 2)}
    if (folder / "segments").is_file():
        segments = {f[0]: f[1:] for _, f in _kaldi_table(folder / "segments", 4)}
    else:
        segments = {utt: [utt] for utt in texts}
    rows = []
    for utt, (number, text) in texts.items():
        where = f"{folder.name}/text:{number}"
        seg = segments.get(utt)
        if seg is None or seg[0] not in wavs:
            bad.append(BadRow(utt, where, "no audio in wav.scp" + ("/segments" if seg is None
                                                                   else "")))
            continue
        wav = wavs[seg[0]][1]
        if wav.endswith("|"):
            bad.append(BadRow(utt, where, "its wav.scp entry is a command; convert the "
                                          "audio to files first"))
            continue
        audio = Path(wav)
        audio = audio if audio.is_absolute() else folder / audio
        row = Row(safe_id(utt), audio, text, where, speaker=speakers.get(utt),
                  recording_id=safe_id(seg[0]))
        if len(seg) >= 3:
            try:
                row.start, end = float(seg[1]), float(seg[2])
            except ValueError:
                bad.append(BadRow(utt, where, f"bad segment times '{' '.join(seg[1:3])}'"))
                continue
            row.duration = end - row.start
        rows.append(row)
    return rows, bad


def read_audio_folder(folder: Path) -> tuple[list[Row], list[BadRow]]:
    """Rows of a folder (searched recursively) of audio files with same-named ``.txt``
    transcripts; an audio file without one is a bad row."""
    rows, bad = [], []
    for audio in sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES):
        rel = audio.relative_to(folder)
        utt = safe_id(str(rel.with_suffix("")).replace("/", "_"))
        txt = audio.with_suffix(".txt")
        if not txt.is_file():
            bad.append(BadRow(utt, str(rel), f"no transcript {txt.name} beside it"))
            continue
        try:
            text = txt.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            bad.append(BadRow(utt, str(rel), f"unreadable transcript: {e}"))
            continue
        rows.append(Row(utt, audio, " ".join(text.split()), str(rel)))
    if not rows and not bad:
        raise UserDataError(f"{folder}: no audio files ({', '.join(AUDIO_SUFFIXES)}) found")
    return rows, bad


def _cuts_of(path: Path):
    """A CutSet from a cut manifest, or from a recording manifest and its supervisions."""
    from lhotse import CutSet, RecordingSet, load_manifest

    try:
        manifest = load_manifest(path)
        if isinstance(manifest, RecordingSet):
            sups = path.with_name(path.name.replace("recordings", "supervisions"))
            if sups == path or not sups.is_file():
                raise UserDataError(f"{path} is a recording manifest: expected its "
                                    f"supervisions beside it as {sups.name}")
            return CutSet.from_manifests(recordings=manifest,
                                         supervisions=load_manifest(sups))
    except (OSError, ValueError, KeyError, TypeError, EOFError) as e:
        if isinstance(e, UserDataError):
            raise
        raise UserDataError(f"cannot read lhotse manifest {path}: {e}") from e
    if not isinstance(manifest, CutSet):
        raise UserDataError(f"{path} holds {type(manifest).__name__}: expected cuts, or "
                            "recordings with supervisions beside them")
    return manifest


def read_lhotse(path: Path) -> tuple[list[Row], list[BadRow]]:
    """Rows of lhotse manifests: one per supervision with a file audio source."""
    rows, bad = [], []
    for cut in _cuts_of(path):
        rec = getattr(cut, "recording", None)
        for sup in cut.supervisions:
            where = f"{path.name}:{cut.id}"
            if rec is None or len(rec.sources) != 1 or rec.sources[0].type != "file":
                bad.append(BadRow(sup.id, where, "its audio is not one file (only file "
                                                 "sources are read)"))
                continue
            rows.append(Row(safe_id(sup.id), Path(rec.sources[0].source), sup.text or "",
                            where, speaker=sup.speaker, start=cut.start + sup.start,
                            duration=sup.duration, recording_id=safe_id(rec.id)))
    return rows, bad


def input_kind(path: str | Path) -> str:
    """``table``, ``kaldi``, ``folder`` or ``lhotse``: how :func:`read_rows` reads ``path``.

    Raises:
      UserDataError: ``path`` does not exist.
    """
    path = Path(path)
    if path.is_dir():
        return "kaldi" if (path / "wav.scp").is_file() and (path / "text").is_file() \
            else "folder"
    if not path.is_file():
        raise UserDataError(f"not found: {path}")
    if path.name.endswith((".jsonl.gz", ".jsonl", ".json")):
        return "lhotse"
    return "table"


def read_rows(path: str | Path) -> tuple[list[Row], list[BadRow]]:
    """The utterances of ``path`` (any form of the module docstring) and the bad rows.

    Raises:
      UserDataError: the input cannot be read at all.
    """
    path = Path(path)
    reader = {"table": read_table, "kaldi": read_kaldi_dir, "folder": read_audio_folder,
              "lhotse": read_lhotse}[input_kind(path)]
    return reader(path)
