"""LibriSpeech for the recipes of egs/librispeech/ASR: parts, download, manifests, fbank,
train-all-shuf and the transcript text of the BPE model.

The stages of icefall's LibriSpeech recipe on top of lhotse's ``download_librispeech`` and
``prepare_librispeech``:

- download: :func:`download_parts` fetches only the parts missing from
  ``<dl_dir>/LibriSpeech`` and never fails for what is on disk (an offline machine with
  the corpus works);
- manifests: :func:`prepare_manifests` writes
  ``librispeech_{recordings,supervisions}_<part>.jsonl.gz``;
- fbank: :func:`compute_features` (speed perturbation 0.9/1.1 of the training parts, as
  icefall does) and :func:`make_train_all_shuf`;
- BPE: :func:`prepare_bpe` writes ``transcript_words.txt`` from the training supervisions,
  then ``bpe.model`` and ``tokens.txt``.

Errors a user can fix raise :class:`icefall.data.preparation.PrepareError`.
Imported by the ``local/*.py`` scripts beside it (they run as scripts, so this folder is on
``sys.path``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from lhotse import CutSet, combine, load_manifest
from lhotse.recipes.librispeech import LIBRISPEECH, download_librispeech, prepare_librispeech
from lhotse.recipes.utils import manifests_exist

from icefall.data.fbank import NUM_MEL_BINS, compute_fbank_for_parts
from icefall.data.manifests import combine_shuffled, cuts_filename, load_part_cuts
from icefall.data.preparation import PrepareError, prepare_atomically, require_dir, try_download
from icefall.data.tokenizer import train_bpe_model
from icefall.files import atomic_write_text

PREFIX = "librispeech"
PARTS: tuple[str, ...] = tuple(LIBRISPEECH)
TRAIN_PARTS = ("train-clean-100", "train-clean-360", "train-other-500")
SPEED_FACTORS = (0.9, 1.1)
TRAIN_ALL_SHUF = "train-all-shuf"


def _has_trans_txt(part_dir: Path) -> bool:
    return part_dir.is_dir() and next(part_dir.rglob("*.trans.txt"), None) is not None


def parts_present(corpus_dir: str | Path) -> list[str]:
    """The parts under ``corpus_dir`` that hold ``*.trans.txt``, in lhotse's order."""
    corpus_dir = Path(corpus_dir)
    return [p for p in PARTS if _has_trans_txt(corpus_dir / p)]


def download_parts(dl_dir: str | Path, parts: Sequence[str] = PARTS,
                   timeout: float = 30.0) -> list[str]:
    """Downloads the ``parts`` missing from ``<dl_dir>/LibriSpeech``.

    A part already on disk is never downloaded again. A failed download (no network) is
    logged and the other parts go on.

    Returns:
      The parts present afterwards.
    Raises:
      PrepareError: when no part is present at all.
    """
    dl_dir = Path(dl_dir)
    corpus_dir = dl_dir / "LibriSpeech"
    present = set(parts_present(corpus_dir))
    for part in (p for p in parts if p not in present):
        fetched = try_download(lambda p=part: download_librispeech(dl_dir, dataset_parts=[p]),
                               f"LibriSpeech {part}", dl_dir / f"{part}.tar.gz", timeout)
        if fetched and _has_trans_txt(corpus_dir / part):
            present.add(part)
    if not present:
        raise PrepareError(f"no LibriSpeech part found in {corpus_dir} and none could be "
                           "downloaded (pass --dl-dir DIR with DIR/LibriSpeech/<part>/)")
    found = [p for p in PARTS if p in present]
    logging.info(f"LibriSpeech parts in {corpus_dir}: {' '.join(found)}")
    return found


def prepare_manifests(corpus_dir: str | Path, output_dir: str | Path,
                      num_jobs: int = 1) -> list[str]:
    """``librispeech_{recordings,supervisions}_<part>.jsonl.gz`` for every part on disk.

    Parts whose manifests exist are skipped. Audio paths are stored absolute.

    Returns:
      The parts found in ``corpus_dir``.
    Raises:
      PrepareError: when ``corpus_dir`` is missing or holds no LibriSpeech part.
    """
    corpus_dir = require_dir(corpus_dir, "LibriSpeech corpus directory")
    output_dir = Path(output_dir)
    parts = parts_present(corpus_dir)
    if not parts:
        raise PrepareError(f"no LibriSpeech part ({', '.join(PARTS)}) with "
                           f"*.trans.txt files in {corpus_dir}")
    todo = [p for p in parts if not manifests_exist(p, output_dir, prefix=PREFIX)]
    if todo:
        prepare_atomically(output_dir, PREFIX, lambda tmp: prepare_librispeech(
            corpus_dir, dataset_parts=todo, output_dir=tmp, num_jobs=num_jobs))
    logging.info(f"LibriSpeech manifests in {output_dir}: {' '.join(parts)}")
    return parts


def manifest_parts(manifest_dir: str | Path) -> list[str]:
    """The parts whose recordings and supervisions manifests exist."""
    return [p for p in PARTS if manifests_exist(p, Path(manifest_dir), prefix=PREFIX)]


def part_cuts(manifest_dir: str | Path, part: str, perturb_speed: bool) -> CutSet:
    """The cuts of one part; training parts get speed-perturbed copies (factors 0.9 and
    1.1, ids ending ``_sp0.9``/``_sp1.1``) when ``perturb_speed``."""
    cuts = load_part_cuts(manifest_dir, PREFIX, part)
    if perturb_speed and part.startswith("train"):
        logging.info(f"Speed perturbation of {part} with factors {SPEED_FACTORS}")
        cuts = combine(cuts, *(cuts.perturb_speed(f) for f in SPEED_FACTORS))
    return cuts.to_eager()


def compute_features(manifest_dir: str | Path, output_dir: str | Path,
                     parts: Sequence[str] | None = None, num_jobs: int = 1,
                     perturb_speed: bool = True, progress_bar: bool = True,
                     num_mel_bins: int = NUM_MEL_BINS) -> list[Path]:
    """``librispeech_cuts_<part>.jsonl.gz`` with fbank features (``num_mel_bins``), per part.

    Parts whose cut manifest exists are skipped without reading anything.

    Args:
      parts: the parts to featurise; None means every part with manifests.
    Returns:
      The cut manifests.
    Raises:
      PrepareError: when there is no manifest (or a requested part's is missing).
    """
    available = manifest_parts(manifest_dir)
    parts = list(parts) if parts else available
    missing = [p for p in parts if p not in available]
    if not parts or missing:
        raise PrepareError(f"no LibriSpeech manifests for {' '.join(missing) or 'any part'} "
                           f"in {manifest_dir} (run stage 1)")
    return compute_fbank_for_parts(lambda part: part_cuts(manifest_dir, part, perturb_speed),
                                   parts, output_dir, PREFIX, num_jobs=num_jobs,
                                   progress_bar=progress_bar, num_mel_bins=num_mel_bins)


def make_train_all_shuf(fbank_dir: str | Path, seed: int = 42) -> Path | None:
    """``librispeech_cuts_train-all-shuf.jsonl.gz``: the training parts present, shuffled.

    Kept when it exists; None (logged) when no training part has been featurised.
    """
    fbank_dir = Path(fbank_dir)
    output = fbank_dir / cuts_filename(PREFIX, TRAIN_ALL_SHUF)
    if output.is_file():
        logging.info(f"{output} exists: skipping")
        return output
    inputs = [fbank_dir / cuts_filename(PREFIX, p) for p in TRAIN_PARTS]
    inputs = [p for p in inputs if p.is_file()]
    if not inputs:
        logging.warning(f"no LibriSpeech training part in {fbank_dir}: no {output.name}")
        return None
    logging.info(f"{output.name} from {', '.join(p.name for p in inputs)}")
    return combine_shuffled(inputs, output, seed)


def write_transcripts(manifest_dir: str | Path, output: str | Path) -> int:
    """Writes the training transcripts (train-* supervisions, sorted by id), one a line.

    Returns:
      The number of transcripts.
    Raises:
      PrepareError: when no training part has manifests.
    """
    manifest_dir = Path(manifest_dir)
    parts = [p for p in manifest_parts(manifest_dir) if p.startswith("train")]
    if not parts:
        raise PrepareError(f"no LibriSpeech training supervisions in {manifest_dir} "
                           "(run stage 1 with a train-* part)")
    texts = []
    for part in parts:
        sups = load_manifest(manifest_dir / f"{PREFIX}_supervisions_{part}.jsonl.gz")
        texts.extend((s.id, s.text.strip()) for s in sups if s.text and s.text.strip())
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output, "".join(f"{t}\n" for _, t in sorted(texts)))
    logging.info(f"Wrote {len(texts)} transcripts of {' '.join(parts)} to {output}")
    return len(texts)


def prepare_bpe(lang_dir: str | Path, vocab_size: int, manifest_dir: str | Path,
                transcript: str | Path | None = None) -> Path:
    """``<lang_dir>/bpe.model`` and ``tokens.txt`` from the training text.

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
        write_transcripts(manifest_dir, transcript)
    return train_bpe_model(transcript, lang_dir, vocab_size)
