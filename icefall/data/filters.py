"""Dropping training cuts the Zipformer transducer cannot use, with a count of what went.

icefall's ``remove_short_and_long_utt`` (zipformer ``train.py``) keeps a cut when

* ``1.0 <= duration <= 20.0`` seconds (the upper bound follows the duration statistics of
  LibriSpeech, see icefall's ``local/display_manifest_statistics.py``), and
* after the Conv2dSubsampling frontend, which maps ``T`` feature frames to
  ``((T - 7) // 2 + 1) // 2`` encoder frames, there are at least as many encoder frames as
  BPE tokens (the pruned RNN-T loss needs ``T' >= S``).

This module adds ``T' >= 1`` (a cut with no encoder frame cannot be used even without text)
and reports the number dropped for each reason. On an eager CutSet the count is logged at
once; on a lazy one it is logged at the end of every full pass (one pass is one epoch).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import sentencepiece as spm
from lhotse import CutSet
from lhotse.cut import Cut
from lhotse.lazy import Dillable
from lhotse.utils import compute_num_frames

from icefall.data.tokenizer import encode_pieces

FRAME_SHIFT = 0.01  # seconds, the 100 Hz frame rate of the 80-dim fbank features


def zipformer_output_frames(num_frames: int) -> int:
    """Encoder frames after icefall's Conv2dSubsampling: ``((T - 7) // 2 + 1) // 2``."""
    return ((num_frames - 7) // 2 + 1) // 2


@dataclass
class FilterStats:
    """How many cuts a :class:`CutFilter` has kept and dropped, by reason."""

    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def num_dropped(self) -> int:
        return sum(self.dropped.values())

    @property
    def total(self) -> int:
        return self.kept + self.num_dropped

    def summary(self) -> str:
        """E.g. ``Dropped 3 of 40 cuts (too_short: 2, too_few_frames: 1)``."""
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.dropped.items()))
        return f"Dropped {self.num_dropped} of {self.total} cuts" + (
            f" ({reasons})" if reasons else "")


class CutFilter:
    """A predicate for ``CutSet.filter`` that counts what it drops and why.

    Args:
      sp: the BPE model whose pieces are counted; None skips the token rule.
      min_duration, max_duration: kept durations, inclusive (seconds).
      subsampling: maps feature frames ``T`` to encoder frames ``T'``.
    """

    REASONS = ("too_short", "too_long", "no_text", "too_few_frames")

    def __init__(self, sp: spm.SentencePieceProcessor | None = None,
                 min_duration: float = 1.0, max_duration: float = 20.0,
                 subsampling: Callable[[int], int] = zipformer_output_frames) -> None:
        self.sp = sp
        self.min_duration = min_duration
        self.max_duration = max_duration
        self.subsampling = subsampling
        self.stats = FilterStats()

    def reset(self) -> None:
        self.stats = FilterStats()

    def reason(self, cut: Cut) -> str | None:
        """Why ``cut`` would be dropped (one of :attr:`REASONS`), or None to keep it."""
        if cut.duration < self.min_duration:
            return "too_short"
        if cut.duration > self.max_duration:
            return "too_long"
        num_frames = cut.num_frames
        if num_frames is None:  # no features yet: frames the fbank will produce
            num_frames = compute_num_frames(cut.duration, FRAME_SHIFT, cut.sampling_rate)
        out_frames = self.subsampling(num_frames)
        if out_frames < 1:
            return "too_few_frames"
        if self.sp is None:
            return None
        texts = [s.text for s in cut.supervisions if s.text]
        if not texts:
            return "no_text"
        num_tokens = sum(len(p) for p in encode_pieces(self.sp, texts))
        if out_frames < num_tokens:
            logging.debug(f"Exclude cut {cut.id}: {num_frames} frames -> {out_frames} after "
                          f"subsampling, fewer than its {num_tokens} tokens")
            return "too_few_frames"
        return None

    def __call__(self, cut: Cut) -> bool:
        why = self.reason(cut)
        if why is None:
            self.stats.kept += 1
            return True
        self.stats.dropped[why] = self.stats.dropped.get(why, 0) + 1
        return False


class _CountingFilter(Dillable):
    """Lazy filtered iterable that logs the filter's count after each full pass."""

    def __init__(self, cuts: CutSet, predicate: CutFilter) -> None:
        self.cuts = cuts
        self.predicate = predicate

    def __iter__(self) -> Iterator[Cut]:
        self.predicate.reset()
        for cut in self.cuts:
            if self.predicate(cut):
                yield cut
        logging.info(self.predicate.stats.summary())


def filter_cuts(cuts: CutSet, sp: spm.SentencePieceProcessor | None = None,
                subsampling: Callable[[int], int] = zipformer_output_frames,
                min_duration: float = 1.0, max_duration: float = 20.0,
                cut_filter: CutFilter | None = None) -> CutSet:
    """Drops cuts too short or too long for training (see the module docstring).

    Args:
      cuts: the training cuts (eager or lazy).
      sp: BPE model for the tokens-vs-frames rule; None applies only the frame rules.
      subsampling: feature frames to encoder frames.
      min_duration, max_duration: kept durations in seconds, inclusive.
      cut_filter: a :class:`CutFilter` to use instead (its ``stats`` can be read later).
    Returns:
      The kept cuts: eager for an eager input (the count is logged now), lazy for a lazy
      input (the count is logged after each pass).
    """
    f = cut_filter or CutFilter(sp, min_duration, max_duration, subsampling)
    if cuts.is_lazy:
        return CutSet(_CountingFilter(cuts, f))
    f.reset()
    kept = CutSet.from_cuts([c for c in cuts if f(c)])
    logging.info(f.stats.summary())
    return kept
