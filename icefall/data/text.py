"""Text normalisation of training transcripts, in the form icefall's LibriSpeech recipes use.

LibriSpeech transcripts are upper-case words separated by single spaces, with apostrophes
kept inside words (``DON'T``, ``BOYS'``) and no other punctuation. A BPE model trained on such
text sees nothing else, so transcripts from any other source (GigaSpeech, synthetic demo
corpora, user data) are brought to the same form before BPE training and training.

GigaSpeech writes punctuation as tags (``<COMMA>``, ``<PERIOD>``, ``<QUESTIONMARK>``,
``<EXCLAMATIONPOINT>``), which are removed, and marks non-speech segments with garbage tags
(``<SIL>``, ``<NOISE>``, ``<MUSIC>``, ``<OTHER>``); icefall's GigaSpeech preparation drops such
segments, see :func:`is_gigaspeech_garbage`. Both lists come from
:mod:`icefall.data.gigaspeech_tags`.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

from lhotse import CutSet

from icefall.data.gigaspeech_tags import GARBAGE_UTTERANCE_TAGS, PUNCTUATION_TAGS


def _any_of(tags: tuple[str, ...]) -> re.Pattern:
    """A case-insensitive pattern matching any of ``tags`` literally."""
    return re.compile("|".join(re.escape(t) for t in tags), re.IGNORECASE)


_PUNCT_TAG_RE = _any_of(PUNCTUATION_TAGS)
_GARBAGE_TAG_RE = _any_of(GARBAGE_UTTERANCE_TAGS)
# Typographic apostrophes and quotes that should read as a plain apostrophe.
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'", "\u00b4": "'"})
_DISALLOWED_RE = re.compile(r"[^A-Z0-9' ]+")
_SPACES_RE = re.compile(r"\s+")


def is_gigaspeech_garbage(text: str) -> bool:
    """True when ``text`` carries a GigaSpeech non-speech tag (``<SIL>``, ``<NOISE>``, ...)."""
    return _GARBAGE_TAG_RE.search(text) is not None


def remove_punctuation_tags(text: str) -> str:
    """Removes GigaSpeech punctuation tags (``<COMMA>`` ...) and squeezes spaces."""
    return _SPACES_RE.sub(" ", _PUNCT_TAG_RE.sub(" ", text)).strip()


def _clean_apostrophes(word: str) -> str:
    """Keeps apostrophes inside a word and a possessive one after ``S``; drops quotes."""
    core = word.strip("'")
    if not core:
        return ""
    if word.endswith("'") and core.endswith("S"):
        return core + "'"
    return core


def normalize_text(text: str) -> str:
    """Brings a transcript to LibriSpeech form.

    Steps: Unicode NFKC; typographic apostrophes to ``'``; GigaSpeech punctuation tags
    removed; upper case; every character other than ``A-Z``, ``0-9`` and ``'`` becomes a
    space (so ``WELL-KNOWN`` gives ``WELL KNOWN`` and ``HELLO, WORLD!`` gives
    ``HELLO WORLD``); quote marks around words are dropped while ``DON'T`` and ``BOYS'``
    keep theirs; runs of spaces become one. Digits are kept as they are: LibriSpeech has
    none, and spelling numbers out is a choice for the corpus preparation, not made here.

    Args:
      text: the raw transcript.
    Returns:
      The normalised transcript (possibly empty).
    """
    text = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES)
    text = _PUNCT_TAG_RE.sub(" ", text).upper()
    text = _DISALLOWED_RE.sub(" ", text)
    words = (_clean_apostrophes(w) for w in text.split())
    return " ".join(w for w in words if w)


def normalize_cut_texts(cuts: CutSet, drop_gigaspeech_garbage: bool = True) -> CutSet:
    """Normalises every supervision text of ``cuts`` with :func:`normalize_text`.

    Works lazily on lazy CutSets.

    Args:
      cuts: the cuts.
      drop_gigaspeech_garbage: first drop cuts whose text has a GigaSpeech non-speech tag.
    Returns:
      The cuts with normalised supervision texts.
    """
    if drop_gigaspeech_garbage:
        cuts = cuts.filter(_has_no_garbage)
    return cuts.transform_text(normalize_text)


def _has_no_garbage(cut) -> bool:
    return not any(is_gigaspeech_garbage(s.text or "") for s in cut.supervisions)


def bpe_is_lower_case(sp) -> bool:
    """True when the letters of a sentencepiece model's pieces are mostly lower case (a BPE
    model trained on lower-case text); icefall's LibriSpeech models are upper case."""
    pieces = (sp.id_to_piece(i) for i in range(sp.get_piece_size()))
    lower = upper = 0
    for piece in pieces:
        lower += sum(c.islower() for c in piece)
        upper += sum(c.isupper() for c in piece)
    return lower > upper


def normalizer_for_bpe(sp) -> Callable[[str], str]:
    """:func:`normalize_text` in the case the BPE model ``sp`` was trained in."""
    if bpe_is_lower_case(sp):
        return lambda text: normalize_text(text).lower()
    return normalize_text
