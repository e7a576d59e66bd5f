"""Shape buckets: a service or an evaluation compiles a handful of programs, not one per request.

Every compiled program is keyed by its padded shapes. A request's prompt length, its clips'
mel-frame count and its new-token budget are each rounded up to a bucket that depends on that
request alone; requests that share buckets are batched together, and the batch is padded up to a
batch bucket. Because a row's own shapes never depend on its neighbours, a row decodes the same
tokens alone or in any batch (see `Generator`).
"""

import dataclasses
from typing import Sequence, Tuple

from qwen_audio_jax.audio import lengths


def round_up(value: int, buckets: Sequence[int]) -> int:
  """The smallest bucket >= value; past the largest, the next multiple of the largest."""
  for bucket in buckets:
    if value <= bucket:
      return bucket
  top = buckets[-1]
  return -(-value // top) * top


@dataclasses.dataclass(frozen=True)
class Buckets:
  """Padded sizes (each sorted ascending).

  prompt: prompt tokens (audio spans included); a 30 s clip alone is 752 tokens.
  new_tokens: the output buffer and KV-cache room for new tokens (the loop stops at
    max_new_tokens itself, so all budgets in one bucket share a program).
  mel_frames: encoder input frames (100 per second); frames past a clip's end are never
    computed beyond its bucket. The last entry must be 3000 (30 s).
  batch: rows per call; a larger set of requests runs in several calls of the largest.
  """
  prompt: Tuple[int, ...] = (64, 128, 256, 512, 1024, 2048)
  new_tokens: Tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024)
  mel_frames: Tuple[int, ...] = (500, 1000, 1500, 2000, 3000)
  batch: Tuple[int, ...] = (1, 2, 4, 8, 16, 32)

  def __post_init__(self):
    for name in ("prompt", "new_tokens", "mel_frames", "batch"):
      values = getattr(self, name)
      if not values or list(values) != sorted(set(values)) or values[0] < 1:
        raise ValueError(f"Buckets.{name} must be a non-empty ascending tuple of positive "
                         f"ints, got {values!r}")
    if self.mel_frames[-1] != lengths.N_FRAMES or any(f % 2 for f in self.mel_frames):
      raise ValueError(f"Buckets.mel_frames must be even and end at {lengths.N_FRAMES} (30 s), "
                       f"got {self.mel_frames!r}")

  @property
  def max_batch(self) -> int:
    return self.batch[-1]
