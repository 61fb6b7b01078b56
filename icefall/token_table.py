"""``tokens.txt``, icefall's token table (``<token> <id>`` per line), read with the standard
library only: the data module and the torch-free ONNX Runtime code both use it.
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from pathlib import Path
from typing import Any

WORD_START = "\u2581"  # sentencepiece's word-start mark
MAX_TOKENS = 1_000_000  # no vocabulary is larger; bounds what a bad file can allocate


def read_token_table(path: str | Path) -> list[str]:
    """``tokens.txt`` as a list indexed by id (ids 0 .. n-1, each once).

    Raises:
      ValueError: naming the file (and line) when it is missing, unreadable or malformed.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read tokens file {path}: "
                         f"{getattr(e, 'strerror', None) or e}") from e
    table: dict[int, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not fields[1].isdigit():
            raise ValueError(f"{path}:{lineno}: expected '<token> <id>', got '{line[:80]}'")
        i = int(fields[1])
        if i in table:
            raise ValueError(f"{path}:{lineno}: id {i} is given twice")
        if i >= MAX_TOKENS:
            raise ValueError(f"{path}:{lineno}: id {i} is not below {MAX_TOKENS}")
        table[i] = fields[0]
    if not table:
        raise ValueError(f"tokens file {path} has no tokens")
    if max(table) != len(table) - 1:  # ids must be 0 .. n-1, each once
        gap = next(i for i in range(len(table)) if i not in table)
        raise ValueError(f"{path}: ids must run from 0 to {len(table) - 1} without gaps; "
                         f"{gap} is missing")
    return [table[i] for i in range(len(table))]


def token_id(tokens: Sequence[str], token: str) -> int:
    """Id of ``token`` in the table, or -1 when absent."""
    try:
        return list(tokens).index(token)
    except ValueError:
        return -1


def tokens_to_text(token_ids: Sequence[int], tokens: Sequence[str]) -> str:
    """Concatenated tokens with ``▁`` as a space (what sherpa-onnx and icefall print)."""
    return "".join(tokens[i] for i in token_ids).replace(WORD_START, " ").strip()


def set_dims_from_tokens(params: MutableMapping[str, Any], tokens_path: str | Path
                         ) -> list[str]:
    """vocab_size and blank_id from tokens.txt, as icefall's export scripts set them.

    Returns:
      The token table (list indexed by id).
    Raises:
      ValueError: when the file is missing or malformed, or blank is not id 0 (sherpa-onnx
        hard-codes blank = 0).
    """
    tokens = read_token_table(tokens_path)
    if "<blk>" not in tokens:
        raise ValueError(f"{tokens_path} has no <blk> token")
    if tokens.index("<blk>") != 0:
        raise ValueError(f"{tokens_path}: <blk> has id {tokens.index('<blk>')}; sherpa-onnx "
                         "needs blank id 0")
    # disambiguation symbols (#0, #1, ...) of a lexicon are not model outputs
    params["vocab_size"] = 1 + max(i for i, t in enumerate(tokens) if t and t[0] != "#")
    params["blank_id"] = 0
    return tokens
