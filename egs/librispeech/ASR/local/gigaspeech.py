"""GigaSpeech, the adapter recipe's new domain: subsets, download, manifests and fbank, on
top of lhotse's ``download_gigaspeech`` and ``prepare_gigaspeech``.

- :func:`download_corpus` needs the credentials in ``<dl_dir>/password`` (as icefall's
  recipe) and ``speechcolab``; without ``GigaSpeech.json`` and without a password nothing
  happens;
- :func:`prepare_manifests` writes ``gigaspeech_{recordings,supervisions,cuts}_<subset>``
  with lhotse's ``prepare_gigaspeech`` when ``speechcolab`` imports, otherwise reads
  ``GigaSpeech.json`` here with the same subset selection and lhotse's own per-audio
  parser (:func:`write_subset`);
- :func:`compute_features`: garbage segments dropped, text brought to LibriSpeech form,
  features of whole recordings, then cuts trimmed to their supervisions (icefall's
  ``compute_fbank_gigaspeech*.py``).

Imported by the ``local/*.py`` scripts beside it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

from lhotse import (
    CutSet,
    RecordingSet,
    SupervisionSet,
    fix_manifests,
    load_manifest,
    validate_recordings_and_supervisions,
)
from lhotse.recipes.gigaspeech import download_gigaspeech, prepare_gigaspeech
from lhotse.recipes.gigaspeech import parse_utterance as parse_gigaspeech_audio
from lhotse.recipes.utils import manifests_exist

from icefall.data.fbank import NUM_MEL_BINS, compute_fbank_for_parts
from icefall.data.preparation import PrepareError, prepare_atomically, require_dir, try_download
from icefall.data.text import is_gigaspeech_garbage, normalize_text

PREFIX = "gigaspeech"
SUBSETS = ("S", "DEV", "TEST")  # what the adapter recipe fine-tunes and decodes on
ALL_SUBSETS = ("XL", "L", "M", "S", "XS", "DEV", "TEST")
METADATA = "GigaSpeech.json"


def speechcolab_available() -> bool:
    """True when ``speechcolab`` (lhotse's GigaSpeech reader) can be imported."""
    return importlib.util.find_spec("speechcolab") is not None


def download_corpus(dl_dir: str | Path, subsets: Sequence[str] = SUBSETS,
                    timeout: float = 30.0) -> bool:
    """Downloads ``subsets`` into ``<dl_dir>/GigaSpeech`` when a password is given.

    Returns:
      True when ``GigaSpeech.json`` is there afterwards; False (logged) without it and
      without ``<dl_dir>/password``, or when the download failed.
    Raises:
      PrepareError: when the password file is empty or ``speechcolab`` is missing.
    """
    dl_dir = Path(dl_dir)
    corpus_dir = dl_dir / "GigaSpeech"
    if (corpus_dir / METADATA).is_file():
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
        try_download(lambda: download_gigaspeech(password, corpus_dir,
                                                 dataset_parts=list(subsets)),
                     "GigaSpeech", timeout=timeout)
    except ImportError as e:
        raise PrepareError(f"downloading GigaSpeech needs 'pip install speechcolab' ({e})") from e
    return (corpus_dir / METADATA).is_file()


def subset_audios(json_path: str | Path, subset: str) -> Iterator[dict]:
    """The audio entries of ``GigaSpeech.json`` in ``subset``, each keeping only the
    segments of that subset: what speechcolab's ``GigaSpeech.audios("{S}")`` yields."""
    tag = "{" + subset + "}"
    with open(json_path, encoding="utf-8") as f:
        metadata = json.load(f)
    for audio in metadata.get("audios", []):
        if tag in audio.get("subsets", []):
            segments = [s for s in audio.get("segments", []) if tag in s.get("subsets", [])]
            yield {**audio, "segments": segments}


def write_subset(corpus_dir: Path, output_dir: Path, subset: str) -> int:
    """Writes ``gigaspeech_{recordings,supervisions,cuts}_<subset>.jsonl.gz`` as lhotse's
    ``prepare_gigaspeech`` does (same per-audio parser, fixing and validation), reading
    ``GigaSpeech.json`` with the standard library instead of speechcolab.

    Returns:
      The number of recordings written.
    """
    paths = {k: output_dir / f"{PREFIX}_{k}_{subset}.jsonl.gz"
             for k in ("recordings", "supervisions", "cuts")}
    n = 0
    with RecordingSet.open_writer(paths["recordings"]) as rec_writer, \
            SupervisionSet.open_writer(paths["supervisions"]) as sup_writer, \
            CutSet.open_writer(paths["cuts"]) as cut_writer:
        for audio in subset_audios(corpus_dir / METADATA, subset):
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


def prepare_manifests(corpus_dir: str | Path, output_dir: str | Path,
                      subsets: Sequence[str] = SUBSETS, num_jobs: int = 1) -> list[str]:
    """``gigaspeech_{recordings,supervisions,cuts}_<subset>.jsonl.gz`` from ``GigaSpeech.json``.

    lhotse's ``prepare_gigaspeech`` is used when ``speechcolab`` imports, otherwise
    :func:`write_subset` (same output). Subsets already prepared are skipped.

    Returns:
      ``subsets``.
    Raises:
      PrepareError: when ``corpus_dir/GigaSpeech.json`` is missing or a subset is unknown.
    """
    corpus_dir = require_dir(corpus_dir, "GigaSpeech corpus directory")
    if not (corpus_dir / METADATA).is_file():
        raise PrepareError(f"GigaSpeech metadata not found: {corpus_dir / METADATA}")
    bad = [s for s in subsets if s not in ALL_SUBSETS]
    if bad:
        raise PrepareError(f"unknown GigaSpeech subset(s): {' '.join(bad)}")
    output_dir = Path(output_dir)
    todo = [s for s in subsets if not manifests_exist(s, output_dir, prefix=PREFIX)]
    if not todo:
        return list(subsets)
    if speechcolab_available():
        prepare_atomically(output_dir, PREFIX, lambda tmp: prepare_gigaspeech(
            corpus_dir, tmp, dataset_parts=todo, num_jobs=num_jobs))
    else:
        logging.warning("speechcolab is not installed: reading GigaSpeech.json without it "
                        "(whole file in memory; 'pip install speechcolab' streams it)")
        prepare_atomically(output_dir, PREFIX, lambda tmp: [
            write_subset(corpus_dir, tmp, s) for s in todo])
    return list(subsets)


def subset_cuts(manifest_dir: str | Path, subset: str) -> CutSet:
    """Long-recording cuts of a subset, ready for fbank.

    As icefall's GigaSpeech preprocessing: segments with non-speech tags (``<SIL>``,
    ``<NOISE>``, ``<MUSIC>``, ``<OTHER>``) are dropped; the rest get LibriSpeech-form text
    (punctuation tags removed, see :func:`icefall.data.text.normalize_text`); recordings
    left without a segment are dropped.

    Raises:
      PrepareError: when the subset's manifests are missing or it has no speech segment.
    """
    manifest_dir = Path(manifest_dir)
    if not manifests_exist(subset, manifest_dir, prefix=PREFIX):
        raise PrepareError(f"no GigaSpeech {subset} manifests in {manifest_dir} (run stage 6)")
    recordings = load_manifest(manifest_dir / f"{PREFIX}_recordings_{subset}.jsonl.gz")
    supervisions = load_manifest(manifest_dir / f"{PREFIX}_supervisions_{subset}.jsonl.gz")
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


def compute_features(manifest_dir: str | Path, output_dir: str | Path,
                     subsets: Sequence[str] = SUBSETS, num_jobs: int = 1,
                     progress_bar: bool = True, num_mel_bins: int = NUM_MEL_BINS) -> list[Path]:
    """``gigaspeech_cuts_<subset>.jsonl.gz``: one cut per kept segment, with fbank features
    of ``num_mel_bins`` (in ``gigaspeech_feats_<subset>``).

    Features are computed once per recording, then the cuts are trimmed to their
    supervisions. Existing outputs are kept.
    """
    return compute_fbank_for_parts(lambda subset: subset_cuts(manifest_dir, subset), subsets,
                                   output_dir, PREFIX, num_jobs=num_jobs,
                                   progress_bar=progress_bar, trim_to_supervisions=True,
                                   num_mel_bins=num_mel_bins)
