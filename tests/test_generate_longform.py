"""Long recordings: windows cover the recording, and stitching keeps every word exactly once with
its time in the recording, with and without overlap, for words cut by a window's edge."""

import numpy as np
import pytest

from qwen_audio_jax.audio import lengths
from qwen_audio_jax.generate import longform
from qwen_audio_jax.text.parsers import Word

SR = lengths.SAMPLE_RATE


def _recording_words(seconds, seed=0):
  """Words of 0.2-0.6 s separated by 0.05-0.4 s pauses, some straddling the windows' edges
  (30, 55, 60 s) and the middles of their overlaps (27.5, 52.5 s)."""
  rng = np.random.default_rng(seed)
  words, t, i = [], 0.13, 0
  while t < seconds - 1:
    duration = float(rng.uniform(0.2, 0.6))
    for mark in (27.5, 30.0, 52.5, 55.0, 60.0):  # window edges and ownership boundaries
      if t < mark < t + duration + 0.5 and not any(w.start < mark < w.end for w in words):
        t = mark - duration / 2
    words.append(Word(f"w{i}", round(t, 2), round(t + duration, 2)))
    t += duration + float(rng.uniform(0.05, 0.4))
    i += 1
  return words


def _heard(words, window):
  """What a perfect model says for a window: the words it hears (cut at its edges), in local
  time rounded to the timestamp step."""
  start, end = window.first / SR, window.last / SR
  out = []
  for w in words:
    if w.end <= start or w.start >= end:
      continue
    out.append(Word(w.word, round(max(w.start, start) - start, 2),
                    round(min(w.end, end) - start, 2)))
  return out


@pytest.mark.parametrize("overlap", [0.0, 5.0, 2.5])
def test_stitching_keeps_every_word_once_with_its_time(overlap):
  seconds = 75.0
  words = _recording_words(seconds)
  assert any(w.start < 30 < w.end for w in words) and any(w.start < 60 < w.end for w in words)
  windows = longform.split(int(seconds * SR), 30.0, overlap)
  stitched = longform.stitch_words([_heard(words, w) for w in windows], windows)
  assert [w.word for w in stitched] == [w.word for w in words]
  np.testing.assert_allclose([(w.start, w.end) for w in stitched],
                             [(w.start, w.end) for w in words], atol=0.011)


def test_windows_cover_the_recording():
  n = int(71.3 * SR)
  plain = longform.split(n)
  assert [(w.first, w.last) for w in plain] == [(0, 30 * SR), (30 * SR, 60 * SR),
                                                (60 * SR, n)]
  overlapping = longform.split(n, 30.0, 5.0)
  assert [w.first for w in overlapping] == [0, 25 * SR, 50 * SR]
  assert overlapping[-1].last == n and all(w.last - w.first <= 30 * SR for w in overlapping)
  assert [w.own_from for w in overlapping] == [0.0, 27.5, 52.5]
  assert longform.split(SR * 10) == [longform.Window(0, SR * 10, 0.0, float("inf"))]


def test_bad_windowing_is_refused():
  with pytest.raises(ValueError, match="window_seconds"):
    longform.split(SR * 60, 31.0)
  with pytest.raises(ValueError, match="overlap_seconds"):
    longform.split(SR * 60, 30.0, 15.0)
  with pytest.raises(ValueError, match="word times"):
    longform.split(SR * 60, 30.0, 5.0, timestamps=False)


def test_join_texts():
  assert longform.join_texts(["hello there ", "", " general kenobi"]) == (
      "hello there general kenobi")
  assert longform.join_texts(["你好", "世界"], "") == "你好世界"
