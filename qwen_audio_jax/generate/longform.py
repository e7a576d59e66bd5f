"""Recordings longer than the encoder's 30 s: windows, decoded as one batch, then stitched.

    windows = split(num_samples, window_seconds=30, overlap_seconds=5)
    results = generator.generate([Request(prompt, audio=[wave[w.first:w.last]]) ...])
    words = stitch_words([parsed words of each window], windows)

Each window owns the stretch of time up to the middle of its overlap with the next one: a word
is kept from the window that owns the middle of the word (its times shifted by the window's
offset), so a word heard in two overlapping windows is kept once, and a word cut by a window's
edge is kept from the window that heard it whole (the overlap must exceed the longest word).
Without overlap a word cut by the boundary comes out of both windows in two pieces that touch
the boundary; `stitch_words` joins such a pair into one word (text of the longer piece).
Plain transcripts (no word times) can only be joined: overlap needs word times to know what was
heard twice, so `split` refuses overlap for them (`timestamps=False`).
"""

import dataclasses
from typing import List, Sequence

from qwen_audio_jax.audio import lengths
from qwen_audio_jax.text.parsers import Word

# Two pieces of one word cut by a window boundary both lie within this of the boundary.
BOUNDARY_TOLERANCE = 0.02  # seconds: two timestamp steps


@dataclasses.dataclass(frozen=True)
class Window:
  """Samples [first, last) of the recording; words whose middle lies in [own_from, own_to)
  seconds (recording time) are this window's."""
  first: int
  last: int
  own_from: float
  own_to: float

  @property
  def offset(self) -> float:
    return self.first / lengths.SAMPLE_RATE


def split(num_samples: int, window_seconds: float = lengths.CHUNK_SECONDS,
          overlap_seconds: float = 0.0, *, timestamps: bool = True) -> List[Window]:
  """Windows of at most `window_seconds` covering `num_samples`, consecutive ones overlapping by
  `overlap_seconds` (the last window ends at the recording's end)."""
  if not 0 < window_seconds <= lengths.CHUNK_SECONDS:
    raise ValueError(f"window_seconds must be in (0, {lengths.CHUNK_SECONDS}], got "
                     f"{window_seconds}")
  if not 0 <= overlap_seconds < window_seconds / 2:
    raise ValueError(f"overlap_seconds must be in [0, window_seconds / 2), got {overlap_seconds}")
  if overlap_seconds and not timestamps:
    raise ValueError("overlapping windows need word times to drop what two windows both heard; "
                     "use overlap_seconds=0 for transcripts without timestamps")
  if num_samples < 1:
    raise ValueError(f"num_samples must be >= 1, got {num_samples}")
  size = int(round(window_seconds * lengths.SAMPLE_RATE))
  hop = size - int(round(overlap_seconds * lengths.SAMPLE_RATE))
  firsts = [0]
  while firsts[-1] + size < num_samples:
    firsts.append(firsts[-1] + hop)
  lasts = [min(f + size, num_samples) for f in firsts]
  sr = lengths.SAMPLE_RATE
  bounds = [(lasts[i] + firsts[i + 1]) / 2 / sr for i in range(len(firsts) - 1)]
  owns = [0.0] + bounds, bounds + [float("inf")]
  return [Window(f, l, a, b) for f, l, a, b in zip(firsts, lasts, *owns)]


def _joins(left: Word, right: Word, boundary: float) -> bool:
  return (abs(left.end - boundary) <= BOUNDARY_TOLERANCE
          and abs(right.start - boundary) <= BOUNDARY_TOLERANCE)


def stitch_words(window_words: Sequence[Sequence[Word]], windows: Sequence[Window]
                 ) -> List[Word]:
  """The recording's words from each window's words (times relative to the window)."""
  if len(window_words) != len(windows):
    raise ValueError(f"{len(window_words)} word lists for {len(windows)} windows")
  out: List[Word] = []
  for i, (words, window) in enumerate(zip(window_words, windows)):
    shifted = [Word(w.word, round(w.start + window.offset, 2), round(w.end + window.offset, 2))
               for w in words]
    kept = [w for w in shifted if window.own_from <= (w.start + w.end) / 2 < window.own_to]
    touching = i > 0 and windows[i - 1].last == window.first
    if kept and out and touching and _joins(out[-1], kept[0], window.offset):
      left, right = out.pop(), kept.pop(0)
      longer = left if left.end - left.start >= right.end - right.start else right
      kept.insert(0, Word(longer.word, left.start, right.end))
    out += kept
  return out


def join_texts(texts: Sequence[str], separator: str = " ") -> str:
  """Transcripts of consecutive non-overlapping windows as one (`separator`: '' for zh / ja)."""
  return separator.join(t.strip() for t in texts if t.strip())


def words_text(words: Sequence[Word], separator: str = " ") -> str:
  return separator.join(w.word for w in words)
