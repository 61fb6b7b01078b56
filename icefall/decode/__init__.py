"""Decoding: transducer search (offline and streaming), WER reports, GigaSpeech scoring
normalisation.

Dimension legend: N = utterances, T = encoder frames, C = encoder output dim.
"""

from icefall.decode.gigaspeech_scoring import (
    NON_SCORING_WORDS,
    asr_text_post_processing,
    normalize_words,
    post_processing,
)
from icefall.decode.report import (
    WerStats,
    compute_wer,
    format_error_stats,
    format_wer_settings,
    parse_errs_file,
    parse_wer_line,
    parse_wer_settings,
    read_transcripts,
    read_wer_summary,
    save_results,
    store_transcripts,
    write_error_stats,
    write_wer_summary,
)
from icefall.decode.search import (
    DECODING_METHODS,
    DecodingResults,
    beam_search,
    decode_batch,
    decoding_key,
    fast_beam_search_one_best,
    greedy_search,
    greedy_search_batch,
    k2_available,
    modified_beam_search,
)
from icefall.decode.streaming import streaming_greedy_search

__all__ = [
    "DECODING_METHODS",
    "NON_SCORING_WORDS",
    "DecodingResults",
    "WerStats",
    "asr_text_post_processing",
    "beam_search",
    "compute_wer",
    "decode_batch",
    "decoding_key",
    "fast_beam_search_one_best",
    "format_error_stats",
    "format_wer_settings",
    "greedy_search",
    "greedy_search_batch",
    "k2_available",
    "modified_beam_search",
    "normalize_words",
    "parse_errs_file",
    "parse_wer_line",
    "parse_wer_settings",
    "post_processing",
    "read_transcripts",
    "read_wer_summary",
    "save_results",
    "store_transcripts",
    "streaming_greedy_search",
    "write_error_stats",
    "write_wer_summary",
]
