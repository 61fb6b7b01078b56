"""WER reports: hand-computed WER, icefall's file formats, parsing back, atomic writes.

Dimension legend: U = utterances, W = words.
"""

from __future__ import annotations

import logging

import pytest

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
    write_error_stats,
)


def _table():
    """Five utterances: 1 deletion, 1 insertion, 1 substitution, 0 errors, and a
    substitution next to an insertion (printed as one combined error)."""
    return [
        ("u1", "the cat sat on the mat".split(), "the cat sat on mat".split()),
        ("u2", "hello world".split(), "hello big world".split()),
        ("u3", "a b c".split(), "a x c".split()),
        ("u4", "good morning".split(), "good morning".split()),
        ("u5", "x y z".split(), "x p q z".split()),
    ]


# 16 reference words (6 + 2 + 3 + 2 + 3); errors: 2 ins (big, q), 1 del (the),
# 2 sub (b->x, y->p) = 5; WER = 100 * 5 / 16 = 31.25; correct = 16 - 2 - 1 = 13.
EXPECTED_ERRS = """\
%WER = 31.25
Errors: 2 insertions, 1 deletions, 2 substitutions, over 16 reference words (13 correct)
Search below for sections starting with PER-UTT DETAILS:, SUBSTITUTIONS:, DELETIONS:, \
INSERTIONS:, PER-WORD STATS:

PER-UTT DETAILS: corr or (ref->hyp)\x20\x20
u1:\tthe cat sat on (the->*) mat
u2:\thello (*->big) world
u3:\ta (b->x) c
u4:\tgood morning
u5:\tx (y->p q) z

SUBSTITUTIONS: count ref -> hyp
1   y -> p
1   b -> x

DELETIONS: count ref
1   the

INSERTIONS: count hyp
1   q
1   big

PER-WORD STATS: word  corr tot_errs count_in_ref count_in_hyp
y   0 1 1 0
x   1 1 1 2
the   1 1 2 1
q   0 1 0 1
p   0 1 0 1
big   0 1 0 1
b   0 1 1 0
z   1 0 1 1
world   1 0 1 1
sat   1 0 1 1
on   1 0 1 1
morning   1 0 1 1
mat   1 0 1 1
hello   1 0 1 1
good   1 0 1 1
cat   1 0 1 1
c   1 0 1 1
a   1 0 1 1
"""


def test_wer_of_a_hand_computed_table():
    stats = compute_wer(_table())
    assert stats == WerStats(wer=31.25, errors=5, ref_words=16, ins=2, dels=1, subs=2, corr=13)
    assert compute_wer(_table()[3:4]).wer == 0.0
    assert compute_wer([("a", ["one", "two", "three"], ["two"])]).wer == 66.67


def test_errs_file_has_icefalls_layout(caplog):
    with caplog.at_level(logging.INFO):
        text, wer = format_error_stats("dev-greedy_search", _table())
    assert wer == 31.25
    assert text == EXPECTED_ERRS
    assert "[dev-greedy_search] %WER 31.25% [5 / 16, 2 ins, 1 del, 2 sub ]" in caplog.text


def test_save_results_round_trips(tmp_path, caplog):
    table = _table()
    better = [(i, r, r if i != "u5" else h) for i, r, h in table]  # only u5's 2 errors left
    with caplog.at_level(logging.INFO):
        items = save_results(tmp_path, "dev", {"greedy_search": table[::-1],
                                               "beam_size_4": better})
    assert items == [("beam_size_4", 12.5), ("greedy_search", 31.25)]  # 2 / 16 = 12.5
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["errs-dev-beam_size_4.txt", "errs-dev-greedy_search.txt",
                     "recogs-dev-beam_size_4.txt", "recogs-dev-greedy_search.txt",
                     "wer-summary-dev.txt"]  # no temporary files left behind
    assert parse_errs_file(tmp_path / "errs-dev-greedy_search.txt") == compute_wer(table)
    assert parse_errs_file(tmp_path / "errs-dev-beam_size_4.txt").wer == 12.5
    assert (tmp_path / "errs-dev-greedy_search.txt").read_text() == EXPECTED_ERRS
    assert read_transcripts(tmp_path / "recogs-dev-greedy_search.txt") == table  # sorted by id
    assert (tmp_path / "recogs-dev-greedy_search.txt").read_text().splitlines()[:2] == [
        "u1:\tref=['the', 'cat', 'sat', 'on', 'the', 'mat']",
        "u1:\thyp=['the', 'cat', 'sat', 'on', 'mat']"]
    summary = tmp_path / "wer-summary-dev.txt"
    assert summary.read_text() == "settings\tWER\nbeam_size_4\t12.5\ngreedy_search\t31.25\n"
    assert read_wer_summary(summary) == items
    block = ("For dev, WER of different settings are:\n"
             "beam_size_4\t12.5\tbest for dev\ngreedy_search\t31.25\n")
    assert block in caplog.text
    assert parse_wer_settings(caplog.text) == {"dev": items}


def test_file_names_with_a_suffix(tmp_path):
    save_results(tmp_path, "test-clean", {"greedy_search": _table()},
                 suffix="epoch-99-avg-1", enable_log=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "errs-test-clean-epoch-99-avg-1.txt", "recogs-test-clean-epoch-99-avg-1.txt",
        "wer-summary-test-clean-epoch-99-avg-1.txt"]
    save_results(tmp_path / "k", "dev", {"greedy_search": _table()}, enable_log=False)
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == [
        "errs-dev-greedy_search.txt", "recogs-dev-greedy_search.txt",
        "wer-summary-dev-greedy_search.txt"]


def test_summary_sorting_and_best_line():
    block = format_wer_settings("test-other", {"a": 7.5, "b": 4.96, "c": 5.0})
    assert block == ("\nFor test-other, WER of different settings are:\n"
                     "b\t4.96\tbest for test-other\nc\t5.0\na\t7.5\n")
    seed_log = """
    For dev, WER of different settings are:
    greedy_search	20.06	best for dev

    For test, WER of different settings are:
    greedy_search	19.27	best for test
    """
    assert parse_wer_settings(seed_log) == {"dev": [("greedy_search", 20.06)],
                                            "test": [("greedy_search", 19.27)]}


def test_parse_wer_lines():
    icefall_log = ("2024-01-01 10:00:00,000 INFO [utils.py:565] [test-other-greedy_search] "
                   "%WER 4.96% [2597 / 52343, 276 ins, 221 del, 2100 sub ]")
    expected = WerStats(wer=4.96, errors=2597, ref_words=52343, ins=276, dels=221, subs=2100,
                        corr=52343 - 2100 - 221)
    assert parse_wer_line(icefall_log) == expected
    kaldi = "%WER 4.96 [ 2597 / 52343, 276 ins, 221 del, 2100 sub ]"
    assert parse_wer_line(kaldi) == expected
    assert parse_wer_line("%WER = 2.23") == WerStats(wer=2.23)
    with pytest.raises(ValueError, match="not a %WER line"):
        parse_wer_line("WER is low")


def test_bad_input_raises_and_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match="test set is empty"):
        save_results(tmp_path, "dev", {"greedy_search": []})
    with pytest.raises(ValueError, match="no decoding results for dev"):
        save_results(tmp_path, "dev", {})
    with pytest.raises(ValueError, match="references have no words"):
        save_results(tmp_path, "dev", {"greedy_search": [("u1", [], ["a"])]})
    with pytest.raises(ValueError, match="u1: hyp must be a list of words"):
        save_results(tmp_path, "dev", {"greedy_search": _table()[1:],
                                       "beam": [("u1", ["a"], "a b")]})
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="test set is empty"):
        compute_wer([])
    bad = tmp_path / "wer-summary.txt"
    bad.write_text("key\tvalue\n")
    with pytest.raises(ValueError, match="settings"):
        read_wer_summary(bad)


def test_write_error_stats_keeps_old_file_until_replaced(tmp_path):
    path = tmp_path / "errs-dev-greedy_search.txt"
    path.write_text("old report\n")
    with pytest.raises(ValueError):
        write_error_stats(path, "dev-greedy_search", [])
    assert path.read_text() == "old report\n"
    assert write_error_stats(path, "dev-greedy_search", _table(), enable_log=False) == 31.25
    assert path.read_text() == EXPECTED_ERRS
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
