"""Length-grouped batching: rows of similar length share a batch, so little of it is padding.

A batch is padded to the text bucket of its longest row and the audio bucket of its longest clip
(`batching`, `audio.buckets`); in arrival order one long row or clip makes the whole batch long.
This stage reads a window of rows from the (already shuffled) stream, sorts them by (audio
bucket, text length), cuts the sorted window into batches of `rows_per_batch` rows and emits
those batches in a seeded random order (a new order per window), so batches stay a random mix
of lengths over the run while each batch is homogeneous. Every row is emitted exactly once, in
every window; only the order within a window changes.

Checkpointing: the state is the parent's state at the window's start, the window's number and
the rows already emitted from it; restoring replays the window from the parent (at most `window`
rows are transformed again), so a resumed run continues with exactly the same batches.
"""

from typing import Any, Dict, List, Sequence, Tuple

import grain
import numpy as np

from qwen_audio_jax.audio import buckets as audio_buckets
from qwen_audio_jax.data.datasets import Row
from qwen_audio_jax.data.transforms import Example


def row_length_key(row: Row, buckets: Sequence[int]) -> Tuple[int, int]:
  """(audio bucket in samples, text tokens) of a row: what its batch gets padded to."""
  examples = [x for x in row if isinstance(x, Example)]
  clips = [int(n) for x in examples for n in x.clip_lengths]
  return (audio_buckets.batch_bucket(clips, buckets) if clips else 0,
          sum(x.num_tokens for x in examples))


def group_window(rows: List[Row], *, rows_per_batch: int, buckets: Sequence[int],
                 seed: int, window_index: int) -> List[Row]:
  """One window's rows in emission order: sorted by length, cut into batches, batches shuffled.

  A last, partial batch (only at the end of a finite stream) stays last, so that the batching
  downstream never mixes it with the next window's rows.
  """
  keys = [row_length_key(row, buckets) for row in rows]
  order = sorted(range(len(rows)), key=lambda i: keys[i])  # stable: ties keep arrival order
  groups = [order[i:i + rows_per_batch] for i in range(0, len(order), rows_per_batch)]
  full = [g for g in groups if len(g) == rows_per_batch]
  partial = [g for g in groups if len(g) < rows_per_batch]
  rng = np.random.default_rng([seed, window_index])
  shuffled = [full[i] for i in rng.permutation(len(full))] + partial
  return [rows[i] for group in shuffled for i in group]


class _LengthGroupIterator(grain.DatasetIterator):

  def __init__(self, parent, *, window: int, rows_per_batch: int, buckets: Sequence[int],
               seed: int):
    super().__init__(parent)
    self._window, self._rows_per_batch = window, rows_per_batch
    self._buckets, self._seed = tuple(buckets), seed
    self._window_index = -1
    self._window_start = None
    self._rows: List[Row] = []
    self._emitted = 0
    self._exhausted = False

  def _read_window(self) -> None:
    self._window_index += 1
    self._window_start = self._parent.get_state()
    rows = []
    while len(rows) < self._window:
      try:
        rows.append(next(self._parent))
      except StopIteration:
        self._exhausted = True
        break
    self._rows = group_window(rows, rows_per_batch=self._rows_per_batch, buckets=self._buckets,
                              seed=self._seed, window_index=self._window_index)
    self._emitted = 0

  def __next__(self) -> Row:
    while self._emitted >= len(self._rows):
      if self._exhausted:
        raise StopIteration
      self._read_window()
    row = self._rows[self._emitted]
    self._emitted += 1
    return row

  def get_state(self) -> Dict[str, Any]:
    if self._window_start is None:  # nothing read yet
      return {"window_start": self._parent.get_state(), "window_index": -1, "emitted": 0,
              "started": False}
    return {"window_start": self._window_start, "window_index": self._window_index,
            "emitted": self._emitted, "started": True}

  def set_state(self, state: Dict[str, Any]) -> None:
    self._parent.set_state(state["window_start"])
    self._exhausted = False
    self._rows, self._emitted, self._window_start = [], 0, None
    self._window_index = state["window_index"]
    if state["started"]:
      self._window_index -= 1  # `_read_window` counts it again
      self._read_window()
      self._emitted = state["emitted"]


class LengthGroupIterDataset(grain.IterDataset):
  """Rows grouped by length within windows of `window` rows (see the module docstring)."""

  def __init__(self, parent: grain.IterDataset, *, window: int, rows_per_batch: int,
               buckets: Sequence[int], seed: int):
    super().__init__(parent)
    if rows_per_batch < 1 or window < 1:
      raise ValueError(f"window ({window}) and rows_per_batch ({rows_per_batch}) must be >= 1")
    window = -(-window // rows_per_batch) * rows_per_batch  # whole batches per window
    self._kwargs = dict(window=window, rows_per_batch=rows_per_batch, buckets=tuple(buckets),
                        seed=seed)

  def __iter__(self):
    return _LengthGroupIterator(self._parent.__iter__(), **self._kwargs)

  def __str__(self):
    return f"LengthGroupIterDataset(window={self._kwargs['window']})"
