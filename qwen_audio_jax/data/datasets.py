"""Grain iterator stages of the pipeline: rejection accounting, packing, chaining.

Each stage is checkpointable (`get_state` / `set_state` return JSON-friendly dicts) and runs
inside grain's worker processes, so its output is deterministic for a seed and a worker count.
"""

from typing import Any, Dict, List, Optional, Sequence, Union

import grain

from qwen_audio_jax.data.stats import BAD_REASONS, DataQualityError, Rejection
from qwen_audio_jax.data.transforms import Example


class RejectionsOnly:
  """End-of-stream carrier of rejections that no later example of the task could carry."""

  def __init__(self, rejections: Sequence[Rejection]):
    self.rejections = tuple(rejections)

  def __repr__(self):
    return f"RejectionsOnly({len(self.rejections)})"


Item = Union[Example, RejectionsOnly]
Row = List[Item]  # the examples placed in one batch row (several when packing)


class _AccountRejectionsIterator(grain.DatasetIterator):
  """Passes examples on, attaching the rejections met since the previous example."""

  def __init__(self, parent, *, task_name: str, max_bad_fraction: float, min_examples: int,
               keep_first: int):
    super().__init__(parent)
    self._task_name = task_name
    self._max_bad_fraction = max_bad_fraction
    self._min_examples = min_examples
    self._keep_first = keep_first
    self._seen = 0
    self._bad = 0
    self._first: List[str] = []
    self._done = False

  def __next__(self) -> Item:
    if self._done:
      raise StopIteration
    pending = []
    while True:
      try:
        item = next(self._parent)
      except StopIteration:
        self._done = True
        if pending:
          return RejectionsOnly(pending)
        raise
      self._seen += 1
      if isinstance(item, Example):
        item.rejections = tuple(pending)
        return item
      pending.append(item)
      if item.reason in BAD_REASONS:
        self._bad += 1
        if len(self._first) < self._keep_first:
          self._first.append(item.describe())
        self._check()

  def _check(self):
    if self._seen >= self._min_examples and self._bad / self._seen > self._max_bad_fraction:
      raise DataQualityError(
          f"task {self._task_name!r}: {self._bad} of {self._seen} examples read by one "
          f"worker were bad (limit {self._max_bad_fraction:.2%}); first: "
          + "; ".join(self._first))

  def get_state(self) -> Dict[str, Any]:
    return {"parent": self._parent.get_state(), "seen": self._seen, "bad": self._bad,
            "first": list(self._first), "done": self._done}

  def set_state(self, state: Dict[str, Any]) -> None:
    self._parent.set_state(state["parent"])
    self._seen, self._bad = state["seen"], state["bad"]
    self._first, self._done = list(state["first"]), state["done"]


class AccountRejectionsIterDataset(grain.IterDataset):
  """Drops `Rejection`s from one task's stream, counting them; aborts past the bad fraction.

  The check here sees one worker's share of one task, so a task whose data is entirely broken
  stops the run instead of spinning; the main process repeats the check on the summed counts.
  """

  def __init__(self, parent: grain.IterDataset, *, task_name: str, max_bad_fraction: float,
               min_examples: int, keep_first: int):
    super().__init__(parent)
    self._kwargs = dict(task_name=task_name, max_bad_fraction=max_bad_fraction,
                        min_examples=min_examples, keep_first=keep_first)

  def __iter__(self):
    return _AccountRejectionsIterator(self._parent.__iter__(), **self._kwargs)

  def __str__(self):
    return f"AccountRejectionsIterDataset(task={self._kwargs['task_name']!r})"


class _PackIterator(grain.DatasetIterator):
  """First-fit packing over a window of open rows; restores by replaying the window."""

  def __init__(self, parent, *, max_tokens: int, max_clips: int, num_bins: int):
    super().__init__(parent)
    self._max_tokens = max_tokens
    self._max_clips = max_clips
    self._num_bins = num_bins
    self._window_start = self._parent.get_state()  # parent state before the window's 1st item
    self._consumed = 0  # items read in the current window
    self._bins: List[Row] = []
    self._closed = False  # the window is complete and its rows are being emitted
    self._emitted = 0
    self._carry: Optional[Item] = None  # read, belongs to the next window
    self._carry_state = None  # parent state before the carried item
    self._exhausted = False

  def _fits(self, row: Row, item: Example) -> bool:
    tokens = sum(x.num_tokens for x in row if isinstance(x, Example))
    clips = sum(x.num_clips for x in row if isinstance(x, Example))
    return (tokens + item.num_tokens <= self._max_tokens
            and clips + item.num_clips <= self._max_clips)

  def _place(self, item: Item) -> bool:
    """Adds `item` to the window; False when it fits in no open row and no row is free."""
    if isinstance(item, RejectionsOnly):
      if self._bins:
        self._bins[-1].append(item)
      else:
        self._bins.append([item])
      return True
    for row in self._bins:
      if self._fits(row, item):
        row.append(item)
        return True
    if len(self._bins) < self._num_bins:
      self._bins.append([item])
      return True
    return False

  def _fill(self) -> None:
    """Reads items into the window until one does not fit or the stream ends."""
    while not self._closed:
      state = self._parent.get_state()
      try:
        item = next(self._parent)
      except StopIteration:
        self._exhausted = True
        self._closed = True
        return
      if self._place(item):
        self._consumed += 1
      else:
        self._carry, self._carry_state = item, state
        self._closed = True

  def _open_next_window(self) -> None:
    self._bins, self._emitted, self._closed, self._consumed = [], 0, False, 0
    if self._carry is not None:
      self._window_start = self._carry_state
      placed = self._place(self._carry)
      assert placed, "an item always fits an empty window"
      self._consumed = 1
      self._carry, self._carry_state = None, None
    else:
      self._window_start = self._parent.get_state()

  def __next__(self) -> Row:
    while True:
      if not self._closed:
        self._fill()
      if self._emitted < len(self._bins):
        row = self._bins[self._emitted]
        self._emitted += 1
        return row
      if self._exhausted:
        raise StopIteration
      self._open_next_window()

  def get_state(self) -> Dict[str, Any]:
    return {"window_start": self._window_start, "consumed": self._consumed,
            "closed": self._closed, "emitted": self._emitted, "exhausted": self._exhausted}

  def set_state(self, state: Dict[str, Any]) -> None:
    self._parent.set_state(state["window_start"])
    self._window_start = state["window_start"]
    self._bins, self._carry, self._carry_state = [], None, None
    self._closed, self._exhausted = False, False
    for _ in range(state["consumed"]):
      placed = self._place(next(self._parent))
      assert placed, "replaying a packing window must place every item"
    self._consumed = state["consumed"]
    self._closed, self._emitted = state["closed"], state["emitted"]
    self._exhausted = state["exhausted"]
    if self._closed and not self._exhausted:
      # The item that closed the window is read again when the next window opens.
      self._carry_state = self._parent.get_state()
      self._carry = next(self._parent)


class PackIterDataset(grain.IterDataset):
  """Packs examples into rows of at most `max_tokens` tokens and `max_clips` clips.

  Up to `num_bins` rows are open at once; each example goes to the first open row it fits
  (first fit). When an example fits none and no new row can be opened, the open rows are
  emitted and a new window starts with that example. Restoring a checkpoint replays the current
  window from the parent's saved state (at most `num_bins` rows of examples).
  """

  def __init__(self, parent: grain.IterDataset, *, max_tokens: int, max_clips: int,
               num_bins: int):
    super().__init__(parent)
    if num_bins < 1:
      raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    self._kwargs = dict(max_tokens=max_tokens, max_clips=max_clips, num_bins=num_bins)

  def __iter__(self):
    return _PackIterator(self._parent.__iter__(), **self._kwargs)

  def __str__(self):
    return f"PackIterDataset({self._kwargs})"


def single_row(item: Item) -> Row:
  """The row of an unpacked example."""
  return [item]


class _ChainIterator(grain.DatasetIterator):

  def __init__(self, parents):
    super().__init__(parents)
    self._index = 0

  def __next__(self):
    while self._index < len(self._parents):
      try:
        return next(self._parents[self._index])
      except StopIteration:
        self._index += 1
    raise StopIteration

  def get_state(self) -> Dict[str, Any]:
    return {"index": self._index, "parents": [p.get_state() for p in self._parents]}

  def set_state(self, state: Dict[str, Any]) -> None:
    self._index = state["index"]
    for parent, parent_state in zip(self._parents, state["parents"]):
      parent.set_state(parent_state)


class ChainIterDataset(grain.IterDataset):
  """The parents one after another (evaluation: every example of every task exactly once)."""

  def __init__(self, parents: Sequence[grain.IterDataset]):
    super().__init__(list(parents))

  def __iter__(self):
    return _ChainIterator([p.__iter__() for p in self._parents])

  def __str__(self):
    return f"ChainIterDataset({len(self._parents)} parents)"

