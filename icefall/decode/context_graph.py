"""Context biasing: icefall's ``ContextGraph``, an Aho-Corasick automaton over the token
(BPE piece) sequences of words or phrases that decoding should favour.

Semantics (icefall's ``icefall/context_graph.py``, used by ``modified_beam_search`` with
``--context-file`` and ``--context-score``):

- A trie of the phrases' tokens; each edge gives ``token_score`` (the phrase's score, or
  the graph's ``context_score``; the largest where phrases share a prefix), each node the
  sum along its path (``node_score``); a node that ends a phrase has ``output_score`` =
  its node score plus the output score of the longest phrase ending at its suffix link.
- Fail (suffix) links as in Aho-Corasick. :meth:`ContextGraph.forward_one_step` follows a
  token: on a trie edge it earns the edge's ``token_score``; otherwise it moves along the
  fail links, and the score is the difference of node scores (the bonus of a partial
  match that breaks off is taken back). In strict mode the output score of a completed
  match is added and matching continues; in non-strict mode (what the beam search uses)
  a completed phrase keeps exactly its bonus and the state returns to the root.
- :meth:`ContextGraph.finalize` takes back the bonus of a match left unfinished when the
  utterance ends.

So in non-strict mode a hypothesis that spells a phrase of n tokens gains ``n *
context_score`` in total and one that spells only a prefix of it gains nothing, while the
per-token bonus keeps the partial match alive in the beam.

For the batched search, :meth:`ContextGraph.transition_tables` expands the non-strict
transitions into dense (states, V) tables.

Dimension legend: S = graph states (nodes), V = vocab size.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

ROOT = 0


@dataclass
class ContextTables:
    """Non-strict transitions of every state on every token, for the batched search.

    next_state: (S, V) int64; bonus: (S, V) float32, the score of the move;
    final: (S,) float32, :meth:`ContextGraph.finalize`'s score.
    """

    next_state: Tensor
    bonus: Tensor
    final: Tensor

    def to(self, device: torch.device | str) -> ContextTables:
        return ContextTables(self.next_state.to(device), self.bonus.to(device),
                             self.final.to(device))


class ContextGraph:
    """icefall's context graph (module docstring). States are ints; 0 is the root.

    Args:
      context_score: the default bonus per token of a matched phrase.
    """

    def __init__(self, context_score: float) -> None:
        self.context_score = float(context_score)
        self.root = ROOT
        self.next: list[dict[int, int]] = [{}]
        self.token_score = [0.0]
        self.node_score = [0.0]
        self.output_score = [0.0]
        self.is_end = [False]
        self.phrase = [""]
        self.fail = [ROOT]
        self.output: list[int | None] = [None]

    @property
    def num_nodes(self) -> int:
        """Nodes besides the root (icefall's ``num_nodes``)."""
        return len(self.next) - 1

    def _new_node(self, token_score: float, node_score: float, is_end: bool,
                  phrase: str) -> int:
        self.next.append({})
        self.token_score.append(token_score)
        self.node_score.append(node_score)
        self.output_score.append(node_score if is_end else 0.0)
        self.is_end.append(is_end)
        self.phrase.append(phrase if is_end else "")
        self.fail.append(ROOT)
        self.output.append(None)
        return len(self.next) - 1

    def _add_phrase(self, tokens: Sequence[int], phrase: str, score: float) -> None:
        node = ROOT
        for i, token in enumerate(tokens):
            last = i == len(tokens) - 1
            child = self.next[node].get(token)
            if child is None:
                child = self._new_node(score, self.node_score[node] + score, last, phrase)
                self.next[node][token] = child
            else:  # a shared prefix keeps the largest token score
                self.token_score[child] = max(score, self.token_score[child])
                self.node_score[child] = self.node_score[node] + self.token_score[child]
                self.is_end[child] = last or self.is_end[child]
                self.output_score[child] = self.node_score[child] if self.is_end[child] else 0.0
                if last:
                    self.phrase[child] = phrase
            node = child

    def build(self, token_ids: Sequence[Sequence[int]], phrases: Sequence[str] | None = None,
              scores: Sequence[float] | None = None) -> ContextGraph:
        """Adds the phrases (token-id lists; optional texts and per-token scores, 0 for
        the default) and computes the fail and output links. Returns self.

        Raises:
          ValueError: for lists of different lengths, an empty phrase or a negative id.
        """
        for name, other in (("phrases", phrases), ("scores", scores)):
            if other is not None and len(other) != len(token_ids):
                raise ValueError(f"{len(token_ids)} token lists but {len(other)} {name}")
        for i, tokens in enumerate(token_ids):
            if not tokens or min(tokens) < 0:
                raise ValueError(f"context phrase {i} has no tokens or a negative token id")
            score = 0.0 if scores is None else float(scores[i])
            self._add_phrase(list(tokens), "" if phrases is None else phrases[i],
                             self.context_score if score == 0.0 else score)
        self._link()
        return self

    def _link(self) -> None:
        """Fail links (breadth first) and output links (nearest phrase end on the chain)."""
        queue = deque(self.next[ROOT].values())
        for child in queue:
            self.fail[child] = ROOT
        while queue:
            node = queue.popleft()
            for token, child in self.next[node].items():
                f = self.fail[node]
                while f != ROOT and token not in self.next[f]:
                    f = self.fail[f]
                self.fail[child] = self.next[f].get(token, ROOT)
                out = self.fail[child]
                while out != ROOT and not self.is_end[out]:
                    out = self.fail[out]
                self.output[child] = None if out == ROOT else out
                if out != ROOT:
                    self.output_score[child] += self.output_score[out]
                queue.append(child)

    def forward_one_step(self, state: int, token: int, strict_mode: bool = True
                         ) -> tuple[float, int, int | None]:
        """(score, next state, matched state or None) after ``token`` from ``state``."""
        node = self.next[state].get(token)
        if node is not None:
            score = self.token_score[node]
        else:
            node = self.fail[state]
            while node != ROOT and token not in self.next[node]:
                node = self.fail[node]
            node = self.next[node].get(token, node)
            score = self.node_score[node] - self.node_score[state]
        matched = node if self.is_end[node] else self.output[node]
        if not strict_mode and self.output_score[node] != 0:
            # The longest phrase ending here keeps its bonus; matching restarts at the root.
            done = node if self.is_end[node] or self.output[node] is None else self.output[node]
            return score + self.node_score[done] - self.node_score[node], ROOT, matched
        return score + self.output_score[node], node, matched

    def is_matched(self, state: int) -> tuple[bool, int | None]:
        """Whether ``state`` ends a phrase (itself or along its output link)."""
        if self.is_end[state]:
            return True, state
        return self.output[state] is not None, self.output[state]

    def finalize(self, state: int) -> tuple[float, int]:
        """(score, root) at the end of an utterance: the unfinished match's bonus back."""
        return -self.node_score[state], ROOT

    def transition_tables(self, vocab_size: int) -> ContextTables:
        """Dense non-strict transitions (:class:`ContextTables`).

        A token that starts no match from a state's fail chain sends it to the root and
        takes its bonus back; only the tokens on the chain are followed one by one.
        """
        S = len(self.next)
        node_score = torch.tensor(self.node_score, dtype=torch.float32)  # (S,)
        next_state = torch.zeros(S, vocab_size, dtype=torch.int64)
        bonus = (-node_score).unsqueeze(1).repeat(1, vocab_size)  # (S, V)
        for state in range(S):
            tokens, f = set(self.next[state]), state
            while f != ROOT:
                f = self.fail[f]
                tokens |= set(self.next[f])
            for token in tokens:
                if token >= vocab_size:
                    raise ValueError(f"context token {token} is not below the vocabulary "
                                     f"size {vocab_size}")
                score, nxt, _ = self.forward_one_step(state, token, strict_mode=False)
                next_state[state, token], bonus[state, token] = nxt, score
        return ContextTables(next_state, bonus, -node_score)


def read_context_file(path: str | Path, encode, context_score: float) -> ContextGraph:
    """The graph of a ``--context-file``: one word or phrase per line (blank lines are
    skipped), each encoded into tokens by ``encode`` (e.g. a sentencepiece model's
    ``encode``), every token scored ``context_score``.

    Raises:
      OSError, ValueError: the file is missing or unreadable, or holds no phrase.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read --context-file {path}: "
                         f"{getattr(e, 'strerror', None) or e}") from e
    phrases = [line.strip() for line in lines if line.strip()]
    if not phrases:
        raise ValueError(f"--context-file {path} holds no words or phrases")
    token_ids = [list(t) for t in encode(phrases)]
    return ContextGraph(context_score).build(token_ids, phrases)
