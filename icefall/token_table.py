"""``tokens.txt``, icefall's token table (``<token> <id>`` per line), read with the standard
library only: the data module and the torch-free ONNX Runtime code both use it.
"""

from __future__ import annotations

from pathlib import Path


def read_token_table(path: str | Path) -> list[str]:
    """``tokens.txt`` as a list indexed by id; ids missing from the file map to ``""``.

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
            raise ValueError(f"{path}:{lineno}: expected '<token> <id>', got '{line}'")
        table[int(fields[1])] = fields[0]
    if not table:
        raise ValueError(f"tokens file {path} has no tokens")
    tokens = [""] * (max(table) + 1)
    for i, tok in table.items():
        tokens[i] = tok
    return tokens
