"""Data preparation for ``egs/librispeech/ASR/prepare.sh``, on top of lhotse's recipes.

The stages of icefall's LibriSpeech recipe, plus the GigaSpeech subsets that the adapter
recipe fine-tunes and decodes on:

- download: :func:`download_librispeech_parts`, :func:`download_musan_corpus`,
  :func:`download_gigaspeech_corpus` use lhotse's downloaders for what is missing and never
  fail for what is already on disk (so an offline machine with the corpora works);
- manifests: :func:`prepare_librispeech_manifests`, :func:`prepare_musan_manifests`,
  :func:`prepare_gigaspeech_manifests` (lhotse's ``prepare_*``; GigaSpeech needs
  ``speechcolab`` for lhotse's reader, otherwise ``GigaSpeech.json`` is read here with the
  same subset selection and lhotse's own per-audio parser);
- fbank: :func:`compute_librispeech_fbank` (speed perturbation 0.9/1.1 of the training
  parts as icefall does), :func:`make_train_all_shuf`, :func:`compute_musan_fbank` (10 s
  windows longer than 5 s), :func:`compute_gigaspeech_fbank` (garbage segments dropped, text
  normalised, features of whole recordings then cuts trimmed to supervisions);
- BPE: :func:`prepare_bpe` writes ``transcript_words.txt`` from the LibriSpeech training
  supervisions, then ``bpe.model`` and ``tokens.txt``;
- validation: :func:`validate_manifest`.

Every manifest is written under its final name only when complete (lhotse's preparers write
into a temporary folder first), so an interrupted run resumes by skipping what exists.
Errors a user can fix raise :class:`PrepareError` (or ``FileNotFoundError``/``ValueError``)
with a one-line message; :func:`run_cli` turns them into one line on stderr and exit code 1.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import logging
import os
import random
import shutil
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from lhotse import (
    CutSet,
    RecordingSet,
    SupervisionSet,
    combine,
    fix_manifests,
    load_manifest,
    validate_recordings_and_supervisions,
)
from lhotse.cut import Cut
from lhotse.recipes.gigaspeech import download_gigaspeech, prepare_gigaspeech
from lhotse.recipes.gigaspeech import parse_utterance as parse_gigaspeech_audio
from lhotse.recipes.librispeech import LIBRISPEECH, download_librispeech, prepare_librispeech
from lhotse.recipes.musan import download_musan, prepare_musan
from lhotse.recipes.utils import manifests_exist

from icefall.data.fbank import NUM_MEL_BINS, compute_fbank, kaldifeat_available
from icefall.data.manifests import cuts_filename, feats_dirname, load_cuts, save_cuts
from icefall.data.text import is_gigaspeech_garbage, normalize_text
from icefall.data.tokenizer import train_bpe_model
from icefall.utils import atomic_write_bytes, atomic_write_text

LIBRISPEECH_PARTS: tuple[str, ...] = tuple(LIBRISPEECH)
LIBRISPEECH_TRAIN_PARTS = ("train-clean-100", "train-clean-360", "train-other-500")
GIGASPEECH_SUBSETS = ("S", "DEV", "TEST")
GIGASPEECH_ALL_SUBSETS = ("XL", "L", "M", "S", "XS", "DEV", "TEST")
MUSAN_PARTS = ("music", "speech", "noise")
SPEED_FACTORS = (0.9, 1.1)
TRAIN_ALL_SHUF = "train-all-shuf"
MUSAN_CUTS = "musan_cuts.jsonl.gz"
SUPERVISION_TOLERANCE = 2e-3  # seconds, as lhotse's validate_for_asr and icefall's check


class PrepareError(RuntimeError):
    """A preparation step cannot go on; the message is one line for the user."""


class ManifestValidationError(ValueError):
    """A cut manifest breaks an assumption of training; the message names file and cut."""


# ----------------------------------------------------------------------------- download


@contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """Applies a default socket timeout, so an unreachable host fails instead of hanging."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def _remove_if_empty(path: Path) -> None:
    """Removes the empty archive a failed download leaves (a partial one is kept: lhotse
    resumes it)."""
    if path.is_file() and path.stat().st_size == 0:
        path.unlink()


def _has_trans_txt(part_dir: Path) -> bool:
    return part_dir.is_dir() and next(part_dir.rglob("*.trans.txt"), None) is not None


def librispeech_parts_present(corpus_dir: str | Path) -> list[str]:
    """The LibriSpeech parts under ``corpus_dir`` that hold ``*.trans.txt``, in lhotse's order."""
    corpus_dir = Path(corpus_dir)
    return [p for p in LIBRISPEECH_PARTS if _has_trans_txt(corpus_dir / p)]


def download_librispeech_parts(dl_dir: str | Path, parts: Sequence[str] = LIBRISPEECH_PARTS,
                               timeout: float = 30.0) -> list[str]:
    """Downloads the LibriSpeech ``parts`` missing from ``<dl_dir>/LibriSpeech``.

    A part already on disk is never downloaded again. A failed download (no network) is
    logged and the other parts go on.

    Returns:
      The parts present afterwards.
    Raises:
      PrepareError: when no part is present at all.
    """
    dl_dir = Path(dl_dir)
    corpus_dir = dl_dir / "LibriSpeech"
    present = set(librispeech_parts_present(corpus_dir))
    for part in (p for p in parts if p not in present):
        try:
            with _socket_timeout(timeout):
                download_librispeech(dl_dir, dataset_parts=[part])
        except Exception as e:  # network, HTTP or archive errors alike
            logging.warning(f"could not download LibriSpeech {part}: {type(e).__name__}: {e}")
            _remove_if_empty(dl_dir / f"{part}.tar.gz")
            continue
        if _has_trans_txt(corpus_dir / part):
            present.add(part)
    if not present:
        raise PrepareError(f"no LibriSpeech part found in {corpus_dir} and none could be "
                           "downloaded (pass --dl-dir DIR with DIR/LibriSpeech/<part>/)")
    found = [p for p in LIBRISPEECH_PARTS if p in present]
    logging.info(f"LibriSpeech parts in {corpus_dir}: {' '.join(found)}")
    return found


def download_musan_corpus(dl_dir: str | Path, timeout: float = 30.0) -> bool:
    """Downloads MUSAN into ``<dl_dir>/musan`` unless it is there; False when unavailable."""
    dl_dir = Path(dl_dir)
    if (dl_dir / "musan").is_dir():
        logging.info(f"MUSAN found in {dl_dir / 'musan'}")
        return True
    try:
        with _socket_timeout(timeout):
            download_musan(dl_dir)
    except Exception as e:  # network, HTTP or archive errors alike
        logging.warning(f"could not download MUSAN: {type(e).__name__}: {e}; "
                        "train without noise mixing (--enable-musan 0)")
        _remove_if_empty(dl_dir / "musan.tar.gz")
        return False
    return (dl_dir / "musan").is_dir()


def download_gigaspeech_corpus(dl_dir: str | Path, subsets: Sequence[str] = GIGASPEECH_SUBSETS,
                               timeout: float = 30.0) -> bool:
    """Downloads GigaSpeech ``subsets`` into ``<dl_dir>/GigaSpeech`` when a password is given.

    GigaSpeech needs credentials (``<dl_dir>/password``, as icefall's recipe) and the
    ``speechcolab`` package. Without ``GigaSpeech.json`` and without a password, nothing
    happens and False is returned.

    Raises:
      PrepareError: when the password file is empty or ``speechcolab`` is missing.
    """
    dl_dir = Path(dl_dir)
    corpus_dir = dl_dir / "GigaSpeech"
    if (corpus_dir / "GigaSpeech.json").is_file():
        logging.info(f"GigaSpeech found in {corpus_dir}")
        return True
    password_file = dl_dir / "password"
    if not password_file.is_file():
        logging.info(f"GigaSpeech not found in {corpus_dir} and no {password_file}: skipping "
                     "(apply for the credentials at SpeechColab and save them there)")
        return False
    password = password_file.read_text().strip()
    if not password:
        raise PrepareError(f"{password_file} is empty")
    try:
        with _socket_timeout(timeout):
            download_gigaspeech(password, corpus_dir, dataset_parts=list(subsets))
    except ImportError as e:
        raise PrepareError(f"downloading GigaSpeech needs 'pip install speechcolab' ({e})") from e
    except Exception as e:  # network, HTTP or decryption errors alike
        logging.warning(f"could not download GigaSpeech: {type(e).__name__}: {e}")
    return (corpus_dir / "GigaSpeech.json").is_file()


# ---------------------------------------------------------------------------- manifests


def _prepare_atomically(output_dir: Path, name: str, prepare: Callable[[Path], object]) -> None:
    """Runs ``prepare(tmp_dir)`` and moves every file it wrote into ``output_dir``.

    lhotse's preparers write their manifests in place; going through a temporary folder
    means a manifest appears under its final name only once its preparer has finished.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp_dir = output_dir / f".{name}.tmp"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir()
    try:
        prepare(tmp_dir)
        for f in sorted(tmp_dir.iterdir()):
            os.replace(f, output_dir / f.name)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise PrepareError(f"{what} not found: {path}")
    return path.resolve()


def prepare_librispeech_manifests(corpus_dir: str | Path, output_dir: str | Path,
                                  num_jobs: int = 1) -> list[str]:
    """``librispeech_{recordings,supervisions}_<part>.jsonl.gz`` for every part on disk.

    Parts whose manifests exist are skipped. Audio paths are stored absolute.

    Returns:
      The parts found in ``corpus_dir``.
    Raises:
      PrepareError: when ``corpus_dir`` is missing or holds no LibriSpeech part.
    """
    corpus_dir = _require_dir(Path(corpus_dir), "LibriSpeech corpus directory")
    output_dir = Path(output_dir)
    parts = librispeech_parts_present(corpus_dir)
    if not parts:
        raise PrepareError(f"no LibriSpeech part ({', '.join(LIBRISPEECH_PARTS)}) with "
                           f"*.trans.txt files in {corpus_dir}")
    todo = [p for p in parts if not manifests_exist(p, output_dir, prefix="librispeech")]
    if todo:
        _prepare_atomically(output_dir, "librispeech", lambda tmp: prepare_librispeech(
            corpus_dir, dataset_parts=todo, output_dir=tmp, num_jobs=num_jobs))
    logging.info(f"LibriSpeech manifests in {output_dir}: {' '.join(parts)}")
    return parts


def prepare_musan_manifests(corpus_dir: str | Path, output_dir: str | Path) -> list[str]:
    """``musan_recordings_<part>.jsonl.gz`` (and music supervisions) for music/speech/noise.

    Raises:
      PrepareError: when ``corpus_dir`` is missing or has none of the three folders.
    """
    corpus_dir = _require_dir(Path(corpus_dir), "MUSAN corpus directory")
    parts = [p for p in MUSAN_PARTS if (corpus_dir / p).is_dir()]
    if not parts:
        raise PrepareError(f"none of {', '.join(MUSAN_PARTS)} found in {corpus_dir}")
    _prepare_atomically(Path(output_dir), "musan",
                        lambda tmp: prepare_musan(corpus_dir, output_dir=tmp, parts=parts))
    return parts


def speechcolab_available() -> bool:
    """True when ``speechcolab`` (lhotse's GigaSpeech reader) can be imported."""
    return importlib.util.find_spec("speechcolab") is not None


def gigaspeech_audios(json_path: str | Path, subset: str) -> Iterator[dict]:
    """The audio entries of ``GigaSpeech.json`` in ``subset``, each keeping only the
    segments of that subset: what speechcolab's ``GigaSpeech.audios("{S}")`` yields."""
    tag = "{" + subset + "}"
    with open(json_path, encoding="utf-8") as f:
        metadata = json.load(f)
    for audio in metadata.get("audios", []):
        if tag in audio.get("subsets", []):
            segments = [s for s in audio.get("segments", []) if tag in s.get("subsets", [])]
            yield {**audio, "segments": segments}


def write_gigaspeech_subset(corpus_dir: Path, output_dir: Path, subset: str) -> int:
    """Writes ``gigaspeech_{recordings,supervisions,cuts}_<subset>.jsonl.gz`` as lhotse's
    ``prepare_gigaspeech`` does (same per-audio parser, fixing and validation), reading
    ``GigaSpeech.json`` with the standard library instead of speechcolab.

    Returns:
      The number of recordings written.
    """
    paths = {k: output_dir / f"gigaspeech_{k}_{subset}.jsonl.gz"
             for k in ("recordings", "supervisions", "cuts")}
    n = 0
    with RecordingSet.open_writer(paths["recordings"]) as rec_writer, \
            SupervisionSet.open_writer(paths["supervisions"]) as sup_writer, \
            CutSet.open_writer(paths["cuts"]) as cut_writer:
        for audio in gigaspeech_audios(corpus_dir / "GigaSpeech.json", subset):
            recording, segments = parse_gigaspeech_audio(audio, corpus_dir)
            recordings, supervisions = fix_manifests(
                RecordingSet.from_recordings([recording]),
                SupervisionSet.from_segments(segments))
            validate_recordings_and_supervisions(recordings, supervisions)
            rec_writer.write(recordings[0])
            for s in supervisions:
                sup_writer.write(s)
            cut_writer.write(CutSet.from_manifests(recordings, supervisions)[0])
            n += 1
    return n


def prepare_gigaspeech_manifests(corpus_dir: str | Path, output_dir: str | Path,
                                 subsets: Sequence[str] = GIGASPEECH_SUBSETS,
                                 num_jobs: int = 1) -> list[str]:
    """``gigaspeech_{recordings,supervisions,cuts}_<subset>.jsonl.gz`` from ``GigaSpeech.json``.

    lhotse's ``prepare_gigaspeech`` is used when ``speechcolab`` imports, otherwise
    :func:`write_gigaspeech_subset` (same output). Subsets already prepared are skipped.

    Raises:
      PrepareError: when ``corpus_dir/GigaSpeech.json`` is missing or a subset is unknown.
    """
    corpus_dir = _require_dir(Path(corpus_dir), "GigaSpeech corpus directory")
    if not (corpus_dir / "GigaSpeech.json").is_file():
        raise PrepareError(f"GigaSpeech metadata not found: {corpus_dir / 'GigaSpeech.json'}")
    bad = [s for s in subsets if s not in GIGASPEECH_ALL_SUBSETS]
    if bad:
        raise PrepareError(f"unknown GigaSpeech subset(s): {' '.join(bad)}")
    output_dir = Path(output_dir)
    todo = [s for s in subsets if not manifests_exist(s, output_dir, prefix="gigaspeech")]
    if not todo:
        return list(subsets)
    if speechcolab_available():
        _prepare_atomically(output_dir, "gigaspeech", lambda tmp: prepare_gigaspeech(
            corpus_dir, tmp, dataset_parts=todo, num_jobs=num_jobs))
    else:
        logging.warning("speechcolab is not installed: reading GigaSpeech.json without it "
                        "(whole file in memory; 'pip install speechcolab' streams it)")
        _prepare_atomically(output_dir, "gigaspeech", lambda tmp: [
            write_gigaspeech_subset(corpus_dir, tmp, s) for s in todo])
    return list(subsets)


# -------------------------------------------------------------------------------- fbank


def fbank_device() -> str:
    """``cuda`` when kaldifeat imports and a GPU is visible (icefall's choice), else ``cpu``."""
    return "cuda" if kaldifeat_available() and torch.cuda.is_available() else "cpu"


def librispeech_manifest_parts(manifest_dir: str | Path) -> list[str]:
    """The LibriSpeech parts whose recordings and supervisions manifests exist."""
    return [p for p in LIBRISPEECH_PARTS
            if manifests_exist(p, Path(manifest_dir), prefix="librispeech")]


def librispeech_cuts(manifest_dir: str | Path, part: str, perturb_speed: bool) -> CutSet:
    """The cuts of one LibriSpeech part; training parts get speed-perturbed copies
    (factors 0.9 and 1.1, ids ending ``_sp0.9``/``_sp1.1``) when ``perturb_speed``."""
    manifest_dir = Path(manifest_dir)
    recordings = load_manifest(manifest_dir / f"librispeech_recordings_{part}.jsonl.gz")
    supervisions = load_manifest(manifest_dir / f"librispeech_supervisions_{part}.jsonl.gz")
    cuts = CutSet.from_manifests(recordings=recordings, supervisions=supervisions)
    if perturb_speed and part.startswith("train"):
        logging.info(f"Speed perturbation of {part} with factors {SPEED_FACTORS}")
        cuts = combine(cuts, *(cuts.perturb_speed(f) for f in SPEED_FACTORS))
    return cuts.to_eager()


def compute_librispeech_fbank(manifest_dir: str | Path, output_dir: str | Path,
                              parts: Sequence[str] | None = None, num_jobs: int = 1,
                              perturb_speed: bool = True, progress_bar: bool = True) -> list[Path]:
    """``librispeech_cuts_<part>.jsonl.gz`` with 80-bin fbank features, per part.

    Parts whose cut manifest exists are skipped without reading anything.

    Returns:
      The cut manifests.
    Raises:
      PrepareError: when there is no LibriSpeech manifest (or a requested part's is missing).
    """
    manifest_dir, output_dir = Path(manifest_dir), Path(output_dir)
    available = librispeech_manifest_parts(manifest_dir)
    parts = list(parts) if parts else available
    missing = [p for p in parts if p not in available]
    if not parts or missing:
        raise PrepareError(f"no LibriSpeech manifests for {' '.join(missing) or 'any part'} "
                           f"in {manifest_dir} (run stage 1)")
    return _fbank_parts(output_dir, "librispeech", parts,
                        lambda part: librispeech_cuts(manifest_dir, part, perturb_speed),
                        num_jobs, progress_bar)


def _fbank_parts(output_dir: Path, prefix: str, parts: Sequence[str],
                 make_cuts: Callable[[str], CutSet], num_jobs: int, progress_bar: bool,
                 trim: bool = False) -> list[Path]:
    """``<prefix>_cuts_<part>.jsonl.gz`` of each part: kept when it exists (its cuts are
    then not even made), otherwise features of ``make_cuts(part)`` (see _store_fbank)."""
    outputs = []
    for part in parts:
        out = output_dir / cuts_filename(prefix, part)
        if out.is_file():
            logging.info(f"{out} exists: skipping")
        else:
            logging.info(f"Computing fbank for {prefix} {part}")
            out = _store_fbank(make_cuts(part), output_dir, prefix, part, num_jobs,
                               progress_bar, trim)
        outputs.append(out)
    return outputs


def _store_fbank(cuts: CutSet, output_dir: Path, prefix: str, part: str, num_jobs: int,
                 progress_bar: bool, trim: bool = False) -> Path:
    """Computes features into ``<prefix>_feats_<part>`` and saves ``<prefix>_cuts_<part>``."""
    if len(cuts) == 0:
        raise PrepareError(f"{prefix} {part}: no cut to compute features for")
    output_dir.mkdir(parents=True, exist_ok=True)
    with_feats = compute_fbank(cuts, output_dir / feats_dirname(prefix, part),
                               num_jobs=num_jobs, progress_bar=progress_bar,
                               device=fbank_device())
    if trim:
        with_feats = with_feats.trim_to_supervisions(keep_overlapping=False).to_eager()
    if len(with_feats) == 0:
        raise PrepareError(f"no cut of {prefix} {part} has features (unreadable audio?)")
    return save_cuts(with_feats, output_dir / cuts_filename(prefix, part))


def combine_shuffled(inputs: Sequence[str | Path], output: str | Path, seed: int = 42) -> Path:
    """Concatenates JSON-lines manifests and shuffles their lines with ``seed``.

    What icefall's ``cat ... | shuf | gzip`` does for ``train-all-shuf``, reproducibly;
    the output is written through a temporary file and a rename.
    """
    lines: list[bytes] = []
    for path in inputs:
        with gzip.open(path, "rb") as f:
            lines.extend(line if line.endswith(b"\n") else line + b"\n"
                         for line in f if line.strip())
    random.Random(seed).shuffle(lines)
    output = Path(output)
    atomic_write_bytes(output, gzip.compress(b"".join(lines)))
    logging.info(f"Saved {output} ({len(lines)} cuts)")
    return output


def make_train_all_shuf(fbank_dir: str | Path, seed: int = 42) -> Path | None:
    """``librispeech_cuts_train-all-shuf.jsonl.gz``: the training parts present, shuffled.

    Kept when it exists; None (logged) when no training part has been featurised.
    """
    fbank_dir = Path(fbank_dir)
    output = fbank_dir / cuts_filename("librispeech", TRAIN_ALL_SHUF)
    if output.is_file():
        logging.info(f"{output} exists: skipping")
        return output
    inputs = [fbank_dir / cuts_filename("librispeech", p) for p in LIBRISPEECH_TRAIN_PARTS]
    inputs = [p for p in inputs if p.is_file()]
    if not inputs:
        logging.warning(f"no LibriSpeech training part in {fbank_dir}: no {output.name}")
        return None
    logging.info(f"{output.name} from {', '.join(p.name for p in inputs)}")
    return combine_shuffled(inputs, output, seed)


def _longer_than_5s(cut: Cut) -> bool:
    return cut.duration > 5.0


def compute_musan_fbank(manifest_dir: str | Path, output_dir: str | Path, num_jobs: int = 1,
                        progress_bar: bool = True) -> Path:
    """``musan_cuts.jsonl.gz``: MUSAN music, speech and noise cut into 10 s windows, the
    windows longer than 5 s kept, with fbank features (in ``musan_feats``), as icefall.

    Raises:
      PrepareError: when there is no MUSAN manifest or no window longer than 5 s.
    """
    manifest_dir, output_dir = Path(manifest_dir), Path(output_dir)
    output = output_dir / MUSAN_CUTS
    if output.is_file():
        logging.info(f"{output} exists: skipping")
        return output
    paths = [manifest_dir / f"musan_recordings_{p}.jsonl.gz" for p in MUSAN_PARTS]
    recordings = [load_manifest(p) for p in paths if p.is_file()]
    if not recordings:
        raise PrepareError(f"no MUSAN manifest (musan_recordings_*.jsonl.gz) in {manifest_dir}")
    cuts = (CutSet.from_manifests(recordings=combine(recordings))
            .cut_into_windows(10.0).filter(_longer_than_5s).to_eager())
    if len(cuts) == 0:
        raise PrepareError(f"no MUSAN recording in {manifest_dir} is longer than 5 s")
    output_dir.mkdir(parents=True, exist_ok=True)
    with_feats = compute_fbank(cuts, output_dir / "musan_feats", num_jobs=num_jobs,
                               progress_bar=progress_bar, device=fbank_device())
    return save_cuts(with_feats, output)


def gigaspeech_cuts(manifest_dir: str | Path, subset: str) -> CutSet:
    """Long-recording cuts of a GigaSpeech subset, ready for fbank.

    As icefall's GigaSpeech preprocessing: segments with non-speech tags (``<SIL>``,
    ``<MUSIC>``, ``<NOISE>``, ``<OTHER>``) are dropped; the rest get LibriSpeech-form text
    (punctuation tags removed, see :func:`icefall.data.text.normalize_text`); recordings
    left without a segment are dropped.

    Raises:
      PrepareError: when the subset's manifests are missing.
    """
    manifest_dir = Path(manifest_dir)
    if not manifests_exist(subset, manifest_dir, prefix="gigaspeech"):
        raise PrepareError(f"no GigaSpeech {subset} manifests in {manifest_dir} (run stage 6)")
    recordings = load_manifest(manifest_dir / f"gigaspeech_recordings_{subset}.jsonl.gz")
    supervisions = load_manifest(manifest_dir / f"gigaspeech_supervisions_{subset}.jsonl.gz")
    kept = [s.transform_text(normalize_text) for s in supervisions
            if not is_gigaspeech_garbage(s.text or "")]
    kept = [s for s in kept if s.text]
    logging.info(f"GigaSpeech {subset}: {len(kept)} of {len(supervisions)} segments kept")
    cuts = CutSet.from_manifests(recordings=recordings,
                                 supervisions=SupervisionSet.from_segments(kept))
    cuts = cuts.filter(lambda c: len(c.supervisions) > 0).to_eager()
    if len(cuts) == 0:
        raise PrepareError(f"GigaSpeech {subset}: no speech segment in {manifest_dir} "
                           f"(does GigaSpeech.json list audio in {{{subset}}}?)")
    return cuts


def compute_gigaspeech_fbank(manifest_dir: str | Path, output_dir: str | Path,
                             subsets: Sequence[str] = GIGASPEECH_SUBSETS, num_jobs: int = 1,
                             progress_bar: bool = True) -> list[Path]:
    """``gigaspeech_cuts_<subset>.jsonl.gz``: one cut per kept segment, with fbank features.

    Features are computed once per recording, then the cuts are trimmed to their
    supervisions (icefall's ``compute_fbank_gigaspeech*.py``). Existing outputs are kept.
    """
    manifest_dir, output_dir = Path(manifest_dir), Path(output_dir)
    return _fbank_parts(output_dir, "gigaspeech", subsets,
                        lambda subset: gigaspeech_cuts(manifest_dir, subset), num_jobs,
                        progress_bar, trim=True)


# ---------------------------------------------------------------------------------- BPE


def write_librispeech_transcripts(manifest_dir: str | Path, output: str | Path) -> int:
    """Writes the training transcripts (train-* supervisions, sorted by id), one a line.

    Returns:
      The number of transcripts.
    Raises:
      PrepareError: when no LibriSpeech training part has manifests.
    """
    manifest_dir = Path(manifest_dir)
    parts = [p for p in librispeech_manifest_parts(manifest_dir) if p.startswith("train")]
    if not parts:
        raise PrepareError(f"no LibriSpeech training supervisions in {manifest_dir} "
                           "(run stage 1 with a train-* part)")
    texts = []
    for part in parts:
        sups = load_manifest(manifest_dir / f"librispeech_supervisions_{part}.jsonl.gz")
        texts.extend((s.id, s.text.strip()) for s in sups if s.text and s.text.strip())
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output, "".join(f"{t}\n" for _, t in sorted(texts)))
    logging.info(f"Wrote {len(texts)} transcripts of {' '.join(parts)} to {output}")
    return len(texts)


def prepare_bpe(lang_dir: str | Path, vocab_size: int, manifest_dir: str | Path,
                transcript: str | Path | None = None) -> Path:
    """``<lang_dir>/bpe.model`` and ``tokens.txt`` from the LibriSpeech training text.

    ``transcript`` defaults to ``<lang_dir>/transcript_words.txt``, written from the
    manifests when missing. Existing ``bpe.model`` + ``tokens.txt`` are kept.
    """
    lang_dir = Path(lang_dir)
    bpe_model = lang_dir / "bpe.model"
    if bpe_model.is_file() and (lang_dir / "tokens.txt").is_file():
        logging.info(f"{bpe_model} exists: skipping")
        return bpe_model
    transcript = Path(transcript) if transcript else lang_dir / "transcript_words.txt"
    if not transcript.is_file():
        write_librispeech_transcripts(manifest_dir, transcript)
    return train_bpe_model(transcript, lang_dir, vocab_size)


# --------------------------------------------------------------------------- validation


def _feature_problem(cut: Cut, num_mel_bins: int, read_features: bool) -> str | None:
    """What is wrong with the features of ``cut`` (None when nothing)."""
    if not cut.has_features:
        return "has no features"
    feats = cut.features
    if feats.num_features != num_mel_bins:
        return f"has {feats.num_features}-dim features, expected {num_mel_bins}"
    shift = feats.frame_shift
    if abs(feats.num_frames - feats.duration / shift) > 1.0:
        return (f"features have {feats.num_frames} frames for {feats.duration:.3f} s "
                f"(frame shift {shift} s)")
    start = cut.start if hasattr(cut, "start") else 0.0
    if start < feats.start - shift or start + cut.duration > feats.end + shift:
        return (f"spans {start:.3f}-{start + cut.duration:.3f} s but its features "
                f"{feats.start:.3f}-{feats.end:.3f} s")
    if abs(cut.num_frames - cut.duration / shift) > 1.0:
        return f"has {cut.num_frames} frames for {cut.duration:.3f} s"
    if read_features:
        arr = cut.load_features()
        if arr.shape != (cut.num_frames, num_mel_bins):
            return f"features have shape {arr.shape}, expected ({cut.num_frames}, {num_mel_bins})"
        if not np.isfinite(arr).all():
            return "features contain NaN or infinity"
    return None


def _supervision_problem(cut: Cut, require_supervision: bool) -> str | None:
    """What is wrong with the supervisions of ``cut`` for ASR training (None when nothing)."""
    sups = cut.supervisions
    if require_supervision and len(sups) != 1:
        return f"has {len(sups)} supervisions, expected 1"
    tol = SUPERVISION_TOLERANCE
    for s in sups:
        if s.start < -tol:
            return f"supervision {s.id} starts at {s.start:.3f} s, before the cut"
        if s.end > cut.duration + tol:
            return (f"supervision {s.id} ends at {s.end:.3f} s, after the cut "
                    f"({cut.duration:.3f} s)")
        if require_supervision and not (s.text or "").strip():
            return f"supervision {s.id} has no text"
    return None


def validate_cut(cut: Cut, num_mel_bins: int = NUM_MEL_BINS, require_supervision: bool = True,
                 read_features: bool = False) -> str | None:
    """Checks one cut; returns what is wrong with it, or None.

    Checks: positive duration; features present, ``num_mel_bins`` wide, with as many frames
    as their duration at 100 per second, covering the cut; (with ``require_supervision``)
    exactly one supervision with text; supervisions within the cut (2 ms tolerance);
    (with ``read_features``) the stored matrix has the cut's (frames, bins) shape and is
    finite.
    """
    if not cut.duration > 0:
        return f"has duration {cut.duration}"
    return (_feature_problem(cut, num_mel_bins, read_features)
            or _supervision_problem(cut, require_supervision))


def _storage_missing(cut: Cut, checked: dict[str, bool]) -> str | None:
    """The feature storage file of ``cut`` when it does not exist (memoised per path)."""
    feats = cut.features
    path = Path(feats.storage_path)
    if feats.storage_type in ("numpy_files", "lilcom_files"):
        path = path / feats.storage_key
    key = str(path)
    if key not in checked:
        checked[key] = path.exists()
    return None if checked[key] else key


def validate_manifest(path: str | Path, require_supervisions: bool | None = None,
                      num_mel_bins: int = NUM_MEL_BINS, read_features: bool = False) -> int:
    """Validates every cut of a manifest (see :func:`validate_cut`) and unique cut ids.

    Args:
      path: a ``*_cuts_*.jsonl.gz`` manifest.
      require_supervisions: None means True except for ``musan_cuts*`` (noise has none).
      num_mel_bins: expected feature dimension.
      read_features: also load each feature matrix (slow on a full corpus).
    Returns:
      The number of cuts.
    Raises:
      FileNotFoundError, ManifestError: for a missing, unreadable or empty manifest.
      ManifestValidationError: naming the manifest, the first bad cut and what is wrong.
    """
    path = Path(path)
    if require_supervisions is None:
        require_supervisions = not path.name.startswith("musan_cuts")
    seen: set[str] = set()
    storage: dict[str, bool] = {}
    for cut in load_cuts(path, lazy=True):
        problem = validate_cut(cut, num_mel_bins, require_supervisions, read_features)
        if problem is None and cut.id in seen:
            problem = "appears twice"
        if problem is None and (missing := _storage_missing(cut, storage)):
            problem = f"features not found: {missing}"
        if problem is not None:
            raise ManifestValidationError(f"{path}: cut {cut.id} {problem}")
        seen.add(cut.id)
    logging.info(f"{path}: {len(seen)} cuts OK")
    return len(seen)


# ---------------------------------------------------------------------------------- CLI


def split_names(text: str, allowed: Sequence[str], what: str) -> list[str]:
    """Splits a space- or comma-separated list of names; ``all`` means every allowed name.

    Raises:
      PrepareError: naming the unknown entries and the allowed ones.
    """
    names = [n for n in text.replace(",", " ").split() if n]
    if names == ["all"]:
        return list(allowed)
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise PrepareError(f"unknown {what}: '{' '.join(unknown) or text}' "
                           f"(choose from: {' '.join(allowed)})")
    return names


def run_cli(main: Callable[[], object]) -> None:
    """Runs a ``local/*.py`` main: a user-fixable error becomes one line on stderr, exit 1."""
    try:
        main()
    except (PrepareError, ValueError, FileNotFoundError, NotADirectoryError) as e:
        print(f"{Path(sys.argv[0]).name}: error: {e}", file=sys.stderr)
        sys.exit(1)
