"""Context biasing in modified_beam_search (--context-file, --context-score): icefall's
Aho-Corasick context graph over BPE pieces.

Oracles: the bonus a token sequence earns, computed here by scanning for phrases; the
exhaustive argmax over all label sequences with those bonuses; a per-hypothesis beam
search written as icefall's (dicts of hypotheses, the graph stepped token by token);
icefall's own context_graph.py when ICEFALL_SOURCE names an icefall checkout; and
biased-word error counts worked out by hand.
"""

from __future__ import annotations

import importlib.util
import math
import os
import random
from pathlib import Path

import pytest
import torch
from test_search import TinyTransducer, _batch, _frame_log_probs, one_symbol_per_frame_scores

from icefall.decode.context_graph import ContextGraph, read_context_file
from icefall.decode.report import listed_word_errors
from icefall.decode.search import modified_beam_search


def _scan_bonus(ys: list[int], phrases: list[list[int]], score: float) -> float:
    """Bonus kept by non-strict matching: from a restart point, the first position where a
    phrase ends earns its length times ``score`` (the longest phrase ending there), and
    matching restarts after it. Partial matches earn nothing in the end."""
    total, start = 0.0, 0
    for i in range(len(ys)):
        ending = [p for p in phrases if i + 1 - len(p) >= start and ys[i + 1 - len(p):i + 1] == p]
        if ending:
            total += score * max(len(p) for p in ending)
            start = i + 1
    return total


def _total_bonus(graph: ContextGraph, ys: list[int]) -> float:
    state, total = graph.root, 0.0
    for y in ys:
        score, state, _ = graph.forward_one_step(state, y, strict_mode=False)
        total += score
    return total + graph.finalize(state)[0]


def test_a_phrase_earns_its_bonus_only_when_complete():
    graph = ContextGraph(2.0).build([[5, 6, 7], [6, 8]])
    assert _total_bonus(graph, [1, 5, 6, 7, 2]) == 6.0
    assert _total_bonus(graph, [5, 6]) == 0.0  # unfinished at the end
    assert _total_bonus(graph, [5, 6, 3, 5, 6, 7]) == 6.0  # broken off, then complete
    assert _total_bonus(graph, [5, 6, 8]) == 4.0  # via the fail link into "6 8"
    # The bonus is paid token by token while a match grows, and taken back if it breaks.
    state, steps = graph.root, []
    for y in (5, 6, 3):
        score, state, _ = graph.forward_one_step(state, y, strict_mode=False)
        steps.append(score)
    assert steps == [2.0, 2.0, -4.0]


def test_total_bonus_equals_a_scan_for_random_phrases_and_sequences():
    rng = random.Random(0)
    for _ in range(200):
        phrases = [[rng.randint(1, 4) for _ in range(rng.randint(1, 3))] for _ in range(3)]
        ys = [rng.randint(1, 4) for _ in range(rng.randint(0, 9))]
        graph = ContextGraph(1.5).build(phrases)
        assert _total_bonus(graph, ys) == pytest.approx(_scan_bonus(ys, phrases, 1.5))


def test_dense_tables_equal_the_graph_steps():
    graph = ContextGraph(1.0).build([[1, 2, 3], [2, 3], [3, 1, 1], [4]], scores=[0, 2.5, 0, 0])
    tables = graph.transition_tables(vocab_size=6)
    for state in range(graph.num_nodes + 1):
        for token in range(6):
            score, nxt, _ = graph.forward_one_step(state, token, strict_mode=False)
            assert int(tables.next_state[state, token]) == nxt
            assert float(tables.bonus[state, token]) == pytest.approx(score)
        assert float(tables.final[state]) == graph.finalize(state)[0]


def _icefall_context_graph():
    source = os.environ.get("ICEFALL_SOURCE")
    path = Path(source or ".") / "icefall" / "context_graph.py"
    if not source or not path.is_file():
        pytest.skip("ICEFALL_SOURCE does not name an icefall checkout")
    spec = importlib.util.spec_from_file_location("upstream_context_graph", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ContextGraph


@pytest.mark.parametrize("strict", [True, False])
def test_graph_scores_equal_icefalls_own(strict):
    upstream = _icefall_context_graph()
    rng = random.Random(1)
    for _ in range(100):
        phrases = [[rng.randint(1, 5) for _ in range(rng.randint(1, 4))] for _ in range(4)]
        scores = [rng.choice([0.0, 1.0, 3.0]) for _ in phrases]
        ours = ContextGraph(2.0).build(phrases, scores=scores)
        theirs = upstream(2.0)
        theirs.build(phrases, scores=scores)
        a, b = ours.root, theirs.root
        for y in [rng.randint(1, 5) for _ in range(12)]:
            sa, a, ma = ours.forward_one_step(a, y, strict_mode=strict)
            sb, b, mb = theirs.forward_one_step(b, y, strict_mode=strict)
            assert sa == pytest.approx(sb)
            assert ours.node_score[a] == pytest.approx(b.node_score)
            assert (ma is None) == (mb is None)
        assert ours.finalize(a)[0] == pytest.approx(theirs.finalize(b)[0])


@pytest.mark.parametrize("seed", [21, 22])
def test_full_beam_finds_the_argmax_of_probability_plus_bonus(seed):
    """Nothing pruned: every label sequence keeps its exact probability plus its bonus,
    so the result is the exhaustive argmax of (log p + bonus) / (K + length)."""
    model = TinyTransducer(vocab_size=3, context_size=2, seed=seed)
    x, lens = _batch(N=10, T=4, seed=seed)
    phrases, score = [[1, 2], [2, 2, 1]], 1.5
    graph = ContextGraph(score).build(phrases)
    biased = modified_beam_search(model, x, lens, beam=128, context_graph=graph)
    plain = modified_beam_search(model, x, lens, beam=128)
    changed = 0
    for n in range(10):
        scores = one_symbol_per_frame_scores(model, x[n, :lens[n]])
        best = max(scores, key=lambda s: (scores[s] + _scan_bonus(list(s), phrases, score))
                   / (2 + len(s)))
        assert biased[n] == list(best)
        changed += biased[n] != plain[n]
    assert changed > 0  # the bonus does change results


@torch.no_grad()
def _icefall_style_search(model, enc: torch.Tensor, beam: int, graph: ContextGraph
                          ) -> list[int]:
    """icefall's modified_beam_search with a context graph, for one utterance: candidates
    by probability, the graph's bonus added to the kept ones, equal sequences merged."""
    K = model.decoder.context_size
    hyps = {(): (0.0, graph.root)}  # label sequence -> (score, context state)
    for t in range(enc.size(0)):
        cands = []
        for ys, (score, state) in hyps.items():
            context = tuple(([-1] * (K - 1) + [0] + list(ys))[-K:])
            lp = _frame_log_probs(model, enc[t], context).double()
            cands += [(score + float(lp[v]), ys, v, state) for v in range(lp.numel())]
        cands.sort(key=lambda c: c[0], reverse=True)
        new: dict = {}
        for total, ys, v, state in cands[:beam]:
            if v != 0:
                bonus, state = graph.forward_one_step(state, v, strict_mode=False)[:2]
                total, ys = total + bonus, ys + (v,)
            if ys in new:
                old = new[ys][0]
                total = max(old, total) + math.log1p(math.exp(-abs(old - total)))
            new[ys] = (total, state)
        hyps = new
    best = max(hyps, key=lambda ys: (hyps[ys][0] + graph.finalize(hyps[ys][1])[0])
               / (K + len(ys)))
    return list(best)


@pytest.mark.parametrize("beam", [2, 4])
def test_pruned_biased_search_equals_icefalls_algorithm(beam):
    model = TinyTransducer(vocab_size=7, context_size=2, seed=5)
    x, lens = _batch(N=6, T=10, seed=5)
    graph = ContextGraph(2.0).build([[3, 4], [5, 5, 2], [6]], scores=[0, 1.0, 0])
    biased = modified_beam_search(model, x, lens, beam=beam, context_graph=graph)
    for n in range(6):
        assert biased[n] == _icefall_style_search(model, x[n, :lens[n]], beam, graph)
    assert biased != modified_beam_search(model, x, lens, beam=beam)


def test_zero_score_is_the_unbiased_search():
    model = TinyTransducer(vocab_size=7, context_size=2, seed=6)
    x, lens = _batch(N=5, T=9, seed=6)
    graph = ContextGraph(0.0).build([[3, 4], [5]])
    assert modified_beam_search(model, x, lens, beam=4, context_graph=graph) == \
        modified_beam_search(model, x, lens, beam=4)


def test_context_file_is_read_and_checked(tmp_path):
    path = tmp_path / "ctx.txt"
    path.write_text("HELLO WORLD\n\n  FOO\n")
    graph = read_context_file(path, lambda lines: [[len(w) for w in ln.split()] for ln in lines],
                              3.0)
    assert graph.phrase[graph.next[graph.next[0][5]][5]] == "HELLO WORLD"
    assert graph.is_matched(graph.next[0][3]) == (True, graph.next[0][3])
    path.write_text("\n \n")
    with pytest.raises(ValueError, match="holds no words"):
        read_context_file(path, lambda lines: [], 2.0)
    with pytest.raises(ValueError, match="cannot read"):
        read_context_file(tmp_path / "missing.txt", lambda lines: [], 2.0)


def test_listed_word_errors_count_misses_and_false_alarms():
    results = [("u1", ["a", "QUIXOTE", "b"], ["a", "KEY", "b"]),  # a miss (substituted)
               ("u2", ["QUIXOTE", "c"], ["QUIXOTE", "c", "ZED"]),  # hit + false alarm
               ("u3", ["d", "ZED"], ["d"])]  # a miss (deleted)
    errors = listed_word_errors(results, {"QUIXOTE", "ZED"})
    assert (errors.misses, errors.false_alarms, errors.ref_words) == (2, 1, 3)
    assert errors.rate == 100.0


def test_decode_py_biases_towards_a_context_file(corpus, base_run, tmp_path, capsys):
    """decode.py --context-file: its own report names (icefall's -context-score- tag), and
    the biased-word errors of the listed words with and without biasing (logged)."""
    from runs import BASE, decode_args

    from icefall.cli.decode import main as decode_main
    from icefall.decode.report import read_transcripts

    words = ["GOLF", "KILO", "ECHO"]
    context = tmp_path / "context.txt"
    context.write_text("\n".join(words) + "\n")
    common = ["--decoding-method", "modified_beam_search", "--beam-size", "4"]
    sets = "B=domb_cuts_valid.jsonl.gz"
    plain = decode_main(BASE.decode, decode_args(corpus, base_run, 8, *common, "--res-dir",
                                                 str(tmp_path / "plain"), sets=sets))
    biased = decode_main(BASE.decode, decode_args(
        corpus, base_run, 8, *common, "--context-file", str(context), "--context-score", "3",
        "--res-dir", str(tmp_path / "biased"), sets=sets))
    assert plain["B"][0][0] == "beam_size_4"
    assert biased["B"][0][0] == "beam_size_4-context-score-3"
    errors = {}
    for name in ("plain", "biased"):
        (recogs,) = (tmp_path / name).glob("recogs-B-*.txt")
        errors[name] = listed_word_errors(read_transcripts(recogs), words)
    print(f"listed-word errors on B: without biasing {errors['plain']}, "
          f"with --context-score 3: {errors['biased']}")
    assert errors["plain"].ref_words == errors["biased"].ref_words > 0
    with pytest.raises(SystemExit):
        decode_main(BASE.decode, decode_args(corpus, base_run, 8, "--context-file",
                                             str(context), sets=sets))
    assert "modified_beam_search only" in capsys.readouterr().err
