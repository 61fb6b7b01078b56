"""GigaSpeech's transcription conventions: its tags and its conversational fillers.

The one copy of these lists: :mod:`icefall.data.text` removes the punctuation tags and
recognises garbage segments with them when transcripts are normalised for training, and
:mod:`icefall.decode.gigaspeech_scoring` drops all of them when scoring. The lists and
their order are those of the official scoring script (SpeechColab/GigaSpeech
``utils/gigaspeech_scoring.py``).
"""

from __future__ import annotations

# GigaSpeech transcripts spell punctuation as tags.
PUNCTUATION_TAGS: tuple[str, ...] = (
    "<COMMA>", "<PERIOD>", "<QUESTIONMARK>", "<EXCLAMATIONPOINT>",
)
# Tags that mark non-speech segments (icefall's preparation drops such segments).
GARBAGE_UTTERANCE_TAGS: tuple[str, ...] = ("<SIL>", "<NOISE>", "<MUSIC>", "<OTHER>")
# Official list, in the official order. Note "UHH" (often left out of quoted versions);
# "OH", "HMM", "UMM", "MHM" are not GigaSpeech fillers (they are in icefall's SPGISpeech/
# Switchboard variants of the scoring script, not here).
CONVERSATIONAL_FILLERS: tuple[str, ...] = (
    "UH", "UHH", "UM", "EH", "MM", "HM", "AH", "HUH", "HA", "ER", "OOF", "HEE", "ACH",
    "EEE", "EW",
)
