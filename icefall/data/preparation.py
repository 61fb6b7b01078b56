"""Shared pieces of resumable corpus preparation.

What a corpus is (its parts, file layout, downloads, text) lives with the recipe that uses
it, e.g. ``egs/librispeech/ASR/local/librispeech.py``; the steps every corpus goes through
the same way live here:

- :class:`PrepareError`: a stage cannot go on; its message is one line for the user;
- :func:`require_dir`: a corpus folder that must exist;
- :func:`try_download`: one download with a socket timeout, where a failure is logged and
  the empty archive it leaves is removed, so an offline machine carries on;
- :func:`prepare_atomically`: runs a manifest preparer (lhotse's ``prepare_*`` write in
  place) in a temporary folder and moves its files to their final names when it is done,
  so an interrupted run never leaves a half-written manifest under a final name.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


class PrepareError(ValueError):
    """A preparation step cannot go on with the given input; the message is one line."""


def require_dir(path: str | Path, what: str) -> Path:
    """``path`` resolved, when it is a folder.

    Raises:
      PrepareError: ``<what> not found: <path>`` otherwise.
    """
    path = Path(path)
    if not path.is_dir():
        raise PrepareError(f"{what} not found: {path}")
    return path.resolve()


@contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """Applies a default socket timeout, so an unreachable host fails instead of hanging."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def _remove_if_empty(path: Path) -> None:
    """Removes the empty archive a failed download leaves (a partial one is kept: lhotse's
    downloaders resume it)."""
    if path.is_file() and path.stat().st_size == 0:
        path.unlink()


def try_download(download: Callable[[], object], what: str, archive: Path | None = None,
                 timeout: float = 30.0) -> bool:
    """Runs ``download()`` with a default socket timeout of ``timeout`` seconds.

    Args:
      download: the download call (e.g. a lhotse ``download_*`` with its arguments bound).
      what: what is downloaded, for the log (``LibriSpeech dev-clean``).
      archive: the archive the download writes; removed after a failure when empty.
      timeout: seconds before an unanswered connection counts as failed.
    Returns:
      True when ``download()`` returned, False when it failed (logged as a warning).
    Raises:
      ImportError: a package the downloader needs is missing (not a network failure).
    """
    try:
        with _socket_timeout(timeout):
            download()
    except ImportError:
        raise
    except Exception as e:  # network, HTTP or archive errors alike
        logging.warning(f"could not download {what}: {type(e).__name__}: {e}")
        if archive is not None:
            _remove_if_empty(archive)
        return False
    return True


def prepare_atomically(output_dir: str | Path, name: str,
                       prepare: Callable[[Path], object]) -> None:
    """Runs ``prepare(tmp_dir)`` and then moves every file it wrote into ``output_dir``.

    Args:
      output_dir: where the manifests go (created when missing).
      name: starts the name of the temporary folder ``<output_dir>/.<name>.<random>``
        (created exclusively; removed afterwards, also when ``prepare`` raises).
      prepare: writes its files into the folder it is given.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(dir=output_dir, prefix=f".{name}."))
    try:
        prepare(tmp_dir)
        for f in sorted(tmp_dir.iterdir()):
            os.replace(f, output_dir / f.name)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
