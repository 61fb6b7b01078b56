"""GigaSpeech scoring normalisation on a table of cases (rules of the official script).

Dimension legend: U = utterances, W = words.
"""

from __future__ import annotations

import pytest

from icefall.data.gigaspeech_tags import GARBAGE_UTTERANCE_TAGS, PUNCTUATION_TAGS
from icefall.data.text import is_gigaspeech_garbage, normalize_text
from icefall.decode.gigaspeech_scoring import (
    CONVERSATIONAL_FILLERS,
    NON_SCORING_WORDS,
    asr_text_post_processing,
    normalize_words,
    post_processing,
)

CASES = [
    # punctuation tags
    ("HELLO <COMMA> WORLD <PERIOD>", "HELLO WORLD"),
    ("WHAT <QUESTIONMARK> WOW <EXCLAMATIONPOINT>", "WHAT WOW"),
    # garbage utterance tags, also in lower case (upper-casing comes first)
    ("<SIL>", ""),
    ("<MUSIC> <NOISE> <OTHER> <sil>", ""),
    # unknown-word tags
    ("<UNK> word <unk>", "WORD"),
    # fillers, including UHH, which quoted lists often forget
    ("uh i think um so", "I THINK SO"),
    ("UHH OK", "OK"),
    ("ACH EEE EW HEE OOF ER HA HUH AH HM MM EH UM UH", ""),
    # words that look like fillers but are not on GigaSpeech's list
    ("OH YEAH HMM UMM MHM UHM MMM", "OH YEAH HMM UMM MHM UHM MMM"),
    # fillers are whole words only
    ("UMBRELLA HAT HUHN", "UMBRELLA HAT HUHN"),
    # hyphens split words, never join them
    ("E-COMMERCE", "E COMMERCE"),
    ("state-of-the-art", "STATE OF THE ART"),
    ("UH-HUH YEAH", "YEAH"),
    ("WELL - I MEAN", "WELL I MEAN"),
    ("-", ""),
    # whitespace is normalised; apostrophes and digits stay
    ("  spaced \t out  ", "SPACED OUT"),
    ("DON'T SAY 42", "DON'T SAY 42"),
    ("", ""),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_asr_text_post_processing(text, expected):
    assert asr_text_post_processing(text) == expected


def test_filler_list_is_the_official_one():
    assert CONVERSATIONAL_FILLERS == ("UH", "UHH", "UM", "EH", "MM", "HM", "AH", "HUH", "HA",
                                      "ER", "OOF", "HEE", "ACH", "EEE", "EW")


def test_post_processing_normalises_both_sides():
    results = [("cut-1", ["UM", "E-MAIL", "<COMMA>", "ME"], ["uh", "e-mail", "me"]),
               ("cut-2", ["<SIL>"], ["<NOISE>", "hi"])]
    assert post_processing(results) == [("cut-1", ["E", "MAIL", "ME"], ["E", "MAIL", "ME"]),
                                        ("cut-2", [], ["HI"])]
    assert normalize_words(["ER", "WELL-KNOWN"]) == ["WELL", "KNOWN"]
    with pytest.raises(ValueError, match="list of words"):
        normalize_words("NOT A LIST")


def test_training_text_and_scoring_share_the_tag_lists():
    """Every GigaSpeech tag that scoring ignores is also handled when training text is
    normalised: punctuation tags removed, garbage tags (any case) mark a segment dropped."""
    for tag in PUNCTUATION_TAGS:
        assert normalize_text(f"GOOD {tag} MORNING") == "GOOD MORNING"
        assert normalize_text(f"good {tag.lower()} morning") == "GOOD MORNING"
        assert asr_text_post_processing(f"GOOD {tag} MORNING") == "GOOD MORNING"
        assert not is_gigaspeech_garbage(tag)
    for tag in GARBAGE_UTTERANCE_TAGS:
        assert is_gigaspeech_garbage(tag) and is_gigaspeech_garbage(f"A {tag.lower()} B")
        assert asr_text_post_processing(tag.lower()) == ""
    assert set(PUNCTUATION_TAGS + GARBAGE_UTTERANCE_TAGS + CONVERSATIONAL_FILLERS) < \
        NON_SCORING_WORDS
    assert not is_gigaspeech_garbage("SILENCE <SILVER> MUSICAL")
