"""Manifest file names and checked loading of lhotse CutSets.

icefall names its cut manifests ``<prefix>_cuts_<part>.jsonl.gz`` (e.g.
``data/fbank/librispeech_cuts_train-clean-100.jsonl.gz``) and its features
``<prefix>_feats_<part>``. Everything that reads or writes these names goes through here,
so a missing or unreadable manifest is reported the same way everywhere: one line that
names the file. Manifests are written through a temporary file and a rename
(:func:`save_cuts`, :func:`combine_shuffled`), never half-written under their final name.
"""

from __future__ import annotations

import gzip
import json
import logging
import random
from collections.abc import Sequence
from pathlib import Path

from lhotse import CutSet, load_manifest, load_manifest_lazy

from icefall.files import atomic_write, atomic_write_bytes

MANIFEST_SUFFIX = ".jsonl.gz"


class ManifestError(ValueError):
    """A manifest exists but cannot be used (unreadable, not JSON lines, or empty)."""


def cuts_filename(prefix: str, part: str) -> str:
    """``<prefix>_cuts_<part>.jsonl.gz``; an empty prefix gives ``cuts_<part>.jsonl.gz``."""
    return f"{prefix}_cuts_{part}{MANIFEST_SUFFIX}" if prefix else f"cuts_{part}{MANIFEST_SUFFIX}"


def load_part_cuts(manifest_dir: str | Path, prefix: str, part: str) -> CutSet:
    """The cuts of one part, from lhotse's ``<prefix>_recordings_<part>.jsonl.gz`` and
    ``<prefix>_supervisions_<part>.jsonl.gz`` in ``manifest_dir``."""
    d = Path(manifest_dir)
    recordings = load_manifest(d / f"{prefix}_recordings_{part}{MANIFEST_SUFFIX}")
    supervisions = load_manifest(d / f"{prefix}_supervisions_{part}{MANIFEST_SUFFIX}")
    return CutSet.from_manifests(recordings=recordings, supervisions=supervisions)


def feats_dirname(prefix: str, part: str) -> str:
    """``<prefix>_feats_<part>``: where the features of that manifest are stored."""
    return f"{prefix}_feats_{part}" if prefix else f"feats_{part}"


def manifest_list(value: str) -> list[str]:
    """``"a.jsonl.gz, b.jsonl.gz"`` -> ``["a.jsonl.gz", "b.jsonl.gz"]`` (empty items dropped)."""
    return [n.strip() for n in value.split(",") if n.strip()]


def find_manifest(manifest_dir: str | Path, name: str) -> Path:
    """``manifest_dir / name``, where ``name`` may give alternatives as ``a|b``: the first
    that exists. Recipes use this for corpora whose manifests have two usual names (this
    toolkit's ``gigaspeech_cuts_S.jsonl.gz``, icefall's ``cuts_S.jsonl.gz``).

    Raises:
      FileNotFoundError: naming every alternative, when none exists.
    """
    choices = [c.strip() for c in name.split("|") if c.strip()]
    if not choices:
        raise ValueError(f"empty manifest name '{name}'")
    paths = [Path(manifest_dir) / c for c in choices]
    for path in paths:
        if path.is_file():
            return path
    others = "".join(f" (nor {p.name})" for p in paths[1:])
    raise FileNotFoundError(f"manifest not found: {paths[0]}{others}")


def set_name(manifests: str) -> str:
    """The name of an unnamed set of manifests: its first file name without
    ``.jsonl.gz`` (``doma_cuts_valid.jsonl.gz+x`` -> ``doma_cuts_valid``)."""
    first = manifests.split("+")[0].split("|")[0].strip()
    return first[: -len(MANIFEST_SUFFIX)] if first.endswith(MANIFEST_SUFFIX) else first


def named_sets_text(value: str | list[str] | tuple[str, ...]) -> str:
    """Named sets as one string: a repeated flag's list of items joined with commas."""
    return value if isinstance(value, str) else ",".join(value)


def parse_named_sets(value: str) -> list[tuple[str, list[str]]]:
    """Named sets of manifests: ``"dev=a.jsonl.gz+b.jsonl.gz,giga=c.jsonl.gz"`` ->
    ``[("dev", ["a.jsonl.gz", "b.jsonl.gz"]), ("giga", ["c.jsonl.gz"])]``.

    Items are comma-separated; ``NAME=`` is optional (see :func:`set_name`); ``+`` joins
    the manifests of one set; each manifest may give alternatives with ``|``.

    Raises:
      ValueError: for an empty or repeated name, or an item without manifests.
    """
    sets: list[tuple[str, list[str]]] = []
    for item in manifest_list(value):
        name, sep, files = item.partition("=")
        if not sep:
            name, files = set_name(item), item
        manifests = [f.strip() for f in files.split("+") if f.strip()]
        if not name.strip() or not manifests:
            raise ValueError(f"expected NAME=MANIFEST[+MANIFEST...] or MANIFEST, got '{item}'")
        if name.strip() in {n for n, _ in sets}:
            raise ValueError(f"the set name '{name.strip()}' is given twice")
        sets.append((name.strip(), manifests))
    return sets


def check_manifest(path: str | Path) -> Path:
    """Checks that ``path`` is a readable, non-empty JSON-lines manifest.

    Only the first line is read, so this is cheap even for a million cuts.

    Returns:
      ``path`` as a Path.
    Raises:
      FileNotFoundError: naming the file when it does not exist.
      ManifestError: naming the file when it cannot be read, is empty or is not JSON lines.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            first = f.readline()
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise ManifestError(f"cannot read manifest {path}: {e}") from e
    if not first.strip():
        raise ManifestError(f"manifest {path} is empty (no cuts)")
    try:
        json.loads(first)
    except json.JSONDecodeError as e:
        raise ManifestError(f"manifest {path} is not a JSON-lines manifest: {e}") from e
    return path


def count_cuts(paths: list[Path]) -> int:
    """Number of cuts in JSONL manifests (one per non-empty line), read without parsing
    them."""
    total = 0
    for path in paths:
        opener = gzip.open if str(path).endswith(".gz") else open
        try:
            with opener(path, "rb") as f:
                total += sum(1 for line in f if line.strip())
        except (OSError, EOFError) as e:
            raise ManifestError(f"cannot read manifest {path}: {e}") from e
    return total


def load_cuts(path: str | Path, lazy: bool = True) -> CutSet:
    """Loads a CutSet after :func:`check_manifest`.

    Args:
      path: a ``.jsonl.gz`` (or ``.jsonl``) cut manifest.
      lazy: open it lazily (read while iterating), as icefall does for training data.
    Returns:
      The CutSet (lazy when ``lazy``).
    """
    path = check_manifest(path)
    cuts = load_manifest_lazy(path) if lazy else load_manifest(path)
    if not isinstance(cuts, CutSet):
        raise ManifestError(f"manifest {path} holds {type(cuts).__name__}, not cuts")
    return cuts


def feature_width(cuts: CutSet) -> int | None:
    """F, the width of the stored features of the first cut of ``cuts`` (a lazy set reads
    one line); None when it has none."""
    cut = next(iter(cuts), None)
    return cut.num_features if cut is not None and cut.has_features else None


def save_cuts(cuts: CutSet, path: str | Path) -> Path:
    """Writes ``cuts`` to ``path`` through a temporary file and a rename.

    A crash while writing never leaves a half-written manifest under the final name.

    Returns:
      ``path`` as a Path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, cuts.to_file)  # the temporary name keeps the suffix lhotse reads
    logging.info(f"Saved {path}")
    return path


def combine_shuffled(inputs: Sequence[str | Path], output: str | Path, seed: int = 42) -> Path:
    """Concatenates gzipped JSON-lines manifests and shuffles their lines with ``seed``.

    What icefall's ``cat ... | shuf | gzip`` does (e.g. for LibriSpeech's
    ``train-all-shuf``), reproducibly; blank lines are dropped and a missing final newline
    is added. The output is written through a temporary file and a rename.

    Returns:
      ``output`` as a Path.
    """
    lines: list[bytes] = []
    for path in inputs:
        with gzip.open(path, "rb") as f:
            lines.extend(line if line.endswith(b"\n") else line + b"\n"
                         for line in f if line.strip())
    random.Random(seed).shuffle(lines)
    output = Path(output)
    atomic_write_bytes(output, gzip.compress(b"".join(lines)))
    logging.info(f"Saved {output} ({len(lines)} cuts)")
    return output
