"""GigaSpeech scoring normalisation of references and hypotheses.

GigaSpeech scores WER after a text post-processing step that both sides go through. The
rules and word lists used here are those of the official scoring script
(SpeechColab/GigaSpeech ``utils/gigaspeech_scoring.py``, function
``asr_text_post_processing``), which icefall copies verbatim into
``egs/gigaspeech/ASR/*/gigaspeech_scoring.py`` and into
``egs/librispeech/ASR/zipformer_adapter/decode_gigaspeech.py`` (applied to the references
and the hypotheses before ``write_error_stats``). In order:

1. Upper-case the text (GigaSpeech transcripts are upper case; tags such as ``<sil>`` then
   match too).
2. Split hyphenated words: every ``-`` becomes a space, so ``E-COMMERCE`` -> ``E COMMERCE``
   and ``STATE-OF-THE-ART`` -> ``STATE OF THE ART`` (the official script's own examples).
   Hyphens are never joined. A filler written with a hyphen (``UH-HUH``) is split first
   and its parts are then removed as fillers where listed.
3. Drop the non-scoring words, compared as whole whitespace-separated words:
   conversational fillers, ``<UNK>``/``<unk>``, the punctuation tags and the garbage
   utterance tags (the lists are in :mod:`icefall.data.gigaspeech_tags`, shared with the
   training-text normalisation).

Other characters (apostrophes, digits) are kept as they are.

Dimension legend: W = words of one transcript, U = utterances.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from icefall.data.gigaspeech_tags import (
    CONVERSATIONAL_FILLERS,
    GARBAGE_UTTERANCE_TAGS,
    PUNCTUATION_TAGS,
)

# Unknown-word tags; "<unk>" is listed too although upper-casing already maps it to "<UNK>".
UNK_TAGS: tuple[str, ...] = ("<UNK>", "<unk>")

NON_SCORING_WORDS: frozenset[str] = frozenset(
    CONVERSATIONAL_FILLERS + UNK_TAGS + PUNCTUATION_TAGS + GARBAGE_UTTERANCE_TAGS)


def asr_text_post_processing(text: str) -> str:
    """Normalises one transcript for GigaSpeech scoring (rules 1-3 of the module docstring).

    Args:
      text: a reference or hypothesis, words separated by whitespace.
    Returns:
      The normalised words joined by single spaces ("" when nothing is left).
    """
    text = text.upper()  # rule 1
    text = text.replace("-", " ")  # rule 2
    return " ".join(w for w in text.split() if w not in NON_SCORING_WORDS)  # rule 3


def normalize_words(words: Sequence[str]) -> list[str]:
    """:func:`asr_text_post_processing` on a (W,) word list; returns the normalised words."""
    if isinstance(words, str):
        raise ValueError(f"expected a list of words, got the string {words!r}")
    return asr_text_post_processing(" ".join(words)).split()


def post_processing(results: Iterable[tuple[str, Sequence[str], Sequence[str]]]
                    ) -> list[tuple[str, list[str], list[str]]]:
    """Normalises both sides of (cut_id, ref_words, hyp_words) triples, as icefall's
    ``decode_gigaspeech.py`` does before computing the WER."""
    return [(cut_id, normalize_words(ref), normalize_words(hyp))
            for cut_id, ref, hyp in results]
