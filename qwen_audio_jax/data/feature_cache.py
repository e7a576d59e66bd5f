"""A bounded in-memory cache of decoded, featurised clips, keyed by the clip's file and segment.

A small corpus read for many epochs (the demo's 1,600 clips, each read ~10 times in a run)
spends most of its input time decoding the same Ogg files and computing the same log-mels. The
features of a clip file are a pure function of the file, the segment and the feature settings
(no randomness: SpecAugment runs in the train step), so they are computed once and reused, and
the batches are bit-identical with the cache on or off (tests/test_feature_cache.py).

Only clips read from a path are cached: a clip inside a shard's or TFDS record's bytes has no
stable name of its own, and such corpora are too large to repeat from memory anyway. Entries are
evicted least recently used first once `max_bytes` is reached. Each grain worker process holds
its own cache (the cache is emptied when it is pickled into a worker); the data threads of one
process share one.
"""

import collections
import threading
from typing import Hashable, Optional, Tuple

import numpy as np

# (features: log-mel [n_mels, F] or waveform [L], samples of the clip, whether it was trimmed)
Entry = Tuple[np.ndarray, int, bool]


class FeatureCache:
  """Thread-safe LRU map: clip key -> Entry, bounded by the bytes of the feature arrays."""

  def __init__(self, max_bytes: int):
    if max_bytes < 0:
      raise ValueError(f"FeatureCache: max_bytes must be >= 0, got {max_bytes}")
    self.max_bytes = int(max_bytes)
    self._entries: "collections.OrderedDict[Hashable, Entry]" = collections.OrderedDict()
    self._bytes = 0
    self._lock = threading.Lock()
    self.hits = 0
    self.misses = 0

  def __getstate__(self):
    # A worker process starts empty: the parent's entries would be copied for nothing.
    return {"max_bytes": self.max_bytes}

  def __setstate__(self, state):
    self.__init__(state["max_bytes"])

  @property
  def nbytes(self) -> int:
    return self._bytes

  def __len__(self) -> int:
    return len(self._entries)

  def get(self, key: Hashable) -> Optional[Entry]:
    with self._lock:
      entry = self._entries.get(key)
      if entry is None:
        self.misses += 1
        return None
      self._entries.move_to_end(key)
      self.hits += 1
      return entry

  def put(self, key: Hashable, features: np.ndarray, num_samples: int, trimmed: bool) -> None:
    """Stores a read-only copy's view (callers must not write to features afterwards)."""
    size = int(features.nbytes)
    if size > self.max_bytes:
      return
    features.flags.writeable = False  # shared by every later example that reads this clip
    with self._lock:
      old = self._entries.pop(key, None)
      if old is not None:
        self._bytes -= int(old[0].nbytes)
      self._entries[key] = (features, int(num_samples), bool(trimmed))
      self._bytes += size
      while self._bytes > self.max_bytes:
        _, (evicted, _, _) = self._entries.popitem(last=False)
        self._bytes -= int(evicted.nbytes)
