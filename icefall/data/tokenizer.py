"""sentencepiece BPE models laid out as icefall's ``data/lang_bpe_<N>/``.

icefall trains the model with two user-defined symbols, ``<blk>`` (id 0, the transducer
blank) and ``<sos/eos>`` (id 1), puts ``<unk>`` right after them (id 2) and disables
sentencepiece's own BOS/EOS pieces. ``train.py`` then reads ``blank_id`` as
``sp.piece_to_id("<blk>")`` and ``vocab_size`` as ``sp.get_piece_size()``. ``tokens.txt``
lists ``<token> <id>`` per line, the form sherpa-onnx and ``export-onnx.py`` read.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sentencepiece as spm

from icefall.files import atomic_copy, atomic_write_text
from icefall.token_table import read_token_table

USER_DEFINED_SYMBOLS = ("<blk>", "<sos/eos>")
BLANK = "<blk>"
SOS_EOS = "<sos/eos>"
UNK = "<unk>"


def _write_transcripts(transcripts: Iterable[str], path: Path) -> int:
    """Writes one non-empty transcript a line; returns how many were written."""
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for line in transcripts:
            line = line.strip()
            if line:
                f.write(line + "\n")
                n += 1
    return n


def train_bpe_model(transcripts: str | Path | Iterable[str], lang_dir: str | Path,
                    vocab_size: int, model_type: str = "unigram",
                    character_coverage: float = 1.0,
                    input_sentence_size: int = 100_000_000) -> Path:
    """Trains a sentencepiece model as icefall's ``local/train_bpe_model.py`` does.

    Writes ``<lang_dir>/<model_type>_<vocab_size>.model`` (and ``.vocab``), copies it to
    ``<lang_dir>/bpe.model`` and writes ``<lang_dir>/tokens.txt``.

    Args:
      transcripts: a text file with one transcript a line, or the transcripts themselves
        (then written to ``<lang_dir>/transcript_words.txt``).
      lang_dir: output folder, e.g. ``data/lang_bpe_500``.
      vocab_size: number of pieces, including ``<blk>``, ``<sos/eos>`` and ``<unk>``.
      model_type: ``unigram`` (icefall's choice), ``bpe``, ``char`` or ``word``.
      character_coverage: share of characters the model must cover (1.0 for English).
      input_sentence_size: at most this many sentences are sampled for training.
    Returns:
      The path of ``bpe.model``.
    Raises:
      FileNotFoundError: when ``transcripts`` names a missing file.
      ValueError: when there is no text, or sentencepiece refuses (e.g. ``vocab_size`` too
        large for the text), with its reason.
    """
    lang_dir = Path(lang_dir)
    lang_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(transcripts, (str, Path)):
        text_file = Path(transcripts)
        if not text_file.is_file():
            raise FileNotFoundError(f"transcript file not found: {text_file}")
    else:
        text_file = lang_dir / "transcript_words.txt"
        if _write_transcripts(transcripts, text_file) == 0:
            raise ValueError("no transcripts to train the BPE model on")
    model_prefix = lang_dir / f"{model_type}_{vocab_size}"
    try:
        spm.SentencePieceTrainer.train(
            input=str(text_file), model_prefix=str(model_prefix), vocab_size=vocab_size,
            model_type=model_type, character_coverage=character_coverage,
            input_sentence_size=input_sentence_size,
            user_defined_symbols=list(USER_DEFINED_SYMBOLS),
            unk_id=len(USER_DEFINED_SYMBOLS), bos_id=-1, eos_id=-1, minloglevel=1)
    except RuntimeError as e:
        raise ValueError(f"BPE training on {text_file} failed: {e}") from e
    bpe_model = lang_dir / "bpe.model"
    atomic_copy(f"{model_prefix}.model", bpe_model)
    write_tokens(load_bpe_model(bpe_model), lang_dir / "tokens.txt")
    logging.info(f"Trained {bpe_model} ({vocab_size} pieces, {model_type})")
    return bpe_model


def load_bpe_model(path: str | Path) -> spm.SentencePieceProcessor:
    """Loads a sentencepiece model.

    Raises:
      FileNotFoundError: naming the file when it does not exist.
      ValueError: naming the file when sentencepiece cannot read it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"BPE model not found: {path}")
    sp = spm.SentencePieceProcessor()
    try:
        sp.load(str(path))
    except (OSError, RuntimeError) as e:
        raise ValueError(f"cannot read BPE model {path}: {e}") from e
    if sp.piece_to_id(BLANK) != 0:
        logging.warning(f"{path}: '{BLANK}' is not piece 0; icefall recipes expect it there")
    return sp


def write_tokens(sp: spm.SentencePieceProcessor, path: str | Path) -> Path:
    """Writes ``tokens.txt``: ``<token> <id>`` per line for every piece, in id order.

    Returns:
      ``path`` as a Path.
    """
    path = Path(path)
    lines = [f"{sp.id_to_piece(i)} {i}\n" for i in range(sp.get_piece_size())]
    atomic_write_text(path, "".join(lines))
    return path


def read_tokens(path: str | Path) -> dict[str, int]:
    """Reads ``tokens.txt`` into ``{token: id}``.

    Raises:
      ValueError: naming the file (and line) when it is missing, unreadable or malformed
        (see :func:`icefall.token_table.read_token_table`).
    """
    return {tok: i for i, tok in enumerate(read_token_table(path)) if tok}


# One text per call: sentencepiece encodes a list in worker threads it starts per call,
# about 0.4 ms for one short text against 12 us for the text alone (sentencepiece 0.2;
# within the noise of a demo training run: docs/benchmarks.md).
def encode(sp: spm.SentencePieceProcessor, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text (what ``train.py`` feeds the transducer loss)."""
    return [sp.encode(t, out_type=int) for t in texts]


def encode_pieces(sp: spm.SentencePieceProcessor, texts: Sequence[str]) -> list[list[str]]:
    """Token pieces of each text (``▁HELLO`` ...), as the length filters count them."""
    return [sp.encode(t, out_type=str) for t in texts]


def decode(sp: spm.SentencePieceProcessor, token_ids: Sequence[Sequence[int]]) -> list[str]:
    """Texts of token-id sequences (hypotheses from search); blanks must be removed first."""
    return [sp.decode(list(ids)) for ids in token_ids]


def set_model_dims_from_bpe(params: MutableMapping[str, Any], sp: spm.SentencePieceProcessor
                            ) -> None:
    """vocab_size and blank_id from the BPE model, as icefall recipes set them."""
    params["vocab_size"] = sp.get_piece_size()
    params["blank_id"] = sp.piece_to_id("<blk>")


@dataclass
class UnkStats:
    """How many BPE tokens of a set of transcripts are ``<unk>``, and the first utterances
    that have some (with the words that give them)."""

    tokens: int = 0
    unk: int = 0
    utterances_with_unk: int = 0
    offenders: list[tuple[str, list[str]]] = field(default_factory=list)

    @property
    def share(self) -> float:
        return self.unk / self.tokens if self.tokens else 0.0

    def describe(self, what: str) -> str:
        """E.g. ``train: 0.12% of 4,321 BPE tokens are <unk> (2 utterances)``."""
        return (f"{what}: {100 * self.share:.2f}% of {self.tokens:,} BPE tokens are <unk> "
                f"({self.utterances_with_unk} utterance"
                f"{'' if self.utterances_with_unk == 1 else 's'})")


def unk_words(sp: spm.SentencePieceProcessor, text: str) -> list[str]:
    """The words of ``text`` whose pieces include ``<unk>``."""
    unk = sp.unk_id()
    return [w for w, ids in zip(text.split(), encode(sp, text.split()))
            if unk in ids]


def unk_stats(sp: spm.SentencePieceProcessor, texts: Iterable[tuple[str, str]],
              keep: int = 5) -> UnkStats:
    """Counts ``<unk>`` among the BPE tokens of ``(utterance id, text)`` pairs.

    Args:
      keep: how many offending utterances to keep (in input order) with their words.
    """
    stats, unk = UnkStats(), sp.unk_id()
    for utt, text in texts:
        ids = sp.encode(text, out_type=int)
        n = sum(1 for i in ids if i == unk)
        stats.tokens += len(ids)
        stats.unk += n
        if n:
            stats.utterances_with_unk += 1
            if len(stats.offenders) < keep:
                stats.offenders.append((utt, unk_words(sp, text)))
    return stats


def check_unk_share(stats: UnkStats, max_share: float, what: str) -> None:
    """Raises ValueError when more than ``max_share`` of the tokens are ``<unk>``, naming
    the first offending utterances and their words, and the way to accept it.

    Args:
      what: the data and how it was found, for the message (``train.csv``).
    """
    if stats.share <= max_share:
        return
    first = "; ".join(f"{utt} ({' '.join(words[:4]) or '?'})" for utt, words in
                      stats.offenders[:3])
    raise ValueError(f"{stats.describe(what)}, above --max-unk-share {max_share:g}: the "
                     f"base's BPE model cannot spell these words; first: {first}. Fix the "
                     "transcripts (e.g. spell out numbers), or pass --max-unk-share 1 to "
                     "train anyway")
