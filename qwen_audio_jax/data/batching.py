"""Rows of examples -> one fixed-shape batch (numpy, one process's share), plus its counts.

The batch format is the contract with the model and the trainer; for B rows, text length S (the
smallest configured text bucket that holds the longest row), A audio slots per row and audio
length N samples (the smallest audio bucket that holds every clip of the batch,
`audio.buckets.audio_bucket_for`; F = N / 160 mel frames):

    input_ids      int32   [B, S]   tokens; 0 on padding
    target_mask    bool    [B, S]   True where input_ids[t] is a target predicted from t - 1
    segment_ids    int32   [B, S]   0 = padding, 1..k = the example's index within its row
    positions      int32   [B, S]   restart at 0 for every segment (0 on padding)
    task_ids       int32   [B, S]   index of the token's task in the mixture's task list, -1 on pad
    audio_mel      float32 [B, A, n_mels, F]   (features='mel'): the first F frames of the 30 s
                                               features (each clip's silent level past its audio)
    audio_wave     float32 [B, A, N]           (features='waveform'): zero past each clip
    audio_lengths  int32   [B, A]   valid samples of each clip, 0 = empty slot
    audio_starts   int32   [B, A]   token index of the clip's `<audio>` in the row, 0 if empty

The first token of every segment is never a target: it would be predicted across the boundary
from the previous example. With worker processes the arrays live in shared memory (grain's
SharedMemoryArray, an ndarray subclass), released when the last reference to them goes.
"""

from typing import Dict, Sequence, Tuple

import numpy as np

from qwen_audio_jax.audio import buckets as audio_buckets
from qwen_audio_jax.audio import lengths
from qwen_audio_jax.data.datasets import Row
from qwen_audio_jax.data.stats import StatsDelta
from qwen_audio_jax.data.transforms import Example

TEXT_KEYS = ("input_ids", "target_mask", "segment_ids", "positions", "task_ids")
PAD_TASK_ID = -1


def bucket_for(num_tokens: int, buckets: Sequence[int]) -> int:
  """Smallest bucket >= num_tokens; ValueError when none is."""
  for bucket in buckets:
    if num_tokens <= bucket:
      return int(bucket)
  raise ValueError(f"a row of {num_tokens} tokens exceeds the largest text bucket {buckets[-1]}")


def batch_spec(rows: int, text_length: int, *, max_clips: int, features: str, n_mels: int,
               audio_samples: int = lengths.N_SAMPLES
               ) -> Dict[str, Tuple[Tuple[int, ...], np.dtype]]:
  """key -> (shape, dtype) of a batch (the format above) of audio bucket `audio_samples`."""
  spec = {
      "input_ids": ((rows, text_length), np.dtype(np.int32)),
      "target_mask": ((rows, text_length), np.dtype(bool)),
      "segment_ids": ((rows, text_length), np.dtype(np.int32)),
      "positions": ((rows, text_length), np.dtype(np.int32)),
      "task_ids": ((rows, text_length), np.dtype(np.int32)),
      "audio_lengths": ((rows, max_clips), np.dtype(np.int32)),
      "audio_starts": ((rows, max_clips), np.dtype(np.int32)),
  }
  if features == "mel":
    spec["audio_mel"] = ((rows, max_clips, n_mels, audio_samples // lengths.HOP_LENGTH),
                         np.dtype(np.float32))
  else:
    spec["audio_wave"] = ((rows, max_clips, audio_samples), np.dtype(np.float32))
  return spec


def _shared_zeros(shape: Tuple[int, ...], dtype: np.dtype) -> np.ndarray:
  """Zeros in a new POSIX shared-memory block (a new block reads as zeros: no fill needed)."""
  from grain.python import SharedMemoryArray  # pylint: disable=g-import-not-at-top
  return SharedMemoryArray(shape, dtype=dtype)


def empty_batch(rows: int, text_length: int, *, max_clips: int, features: str, n_mels: int,
                audio_samples: int = lengths.N_SAMPLES, shared_memory: bool = False
                ) -> Dict[str, np.ndarray]:
  """A batch of padding rows only (segment ids 0, task ids -1, empty audio slots).

  shared_memory: allocate the arrays in shared memory, so that a batch built in a worker process
  reaches the main process without being copied (grain passes such arrays by name).
  """
  spec = batch_spec(rows, text_length, max_clips=max_clips, features=features, n_mels=n_mels,
                    audio_samples=audio_samples)
  zeros = _shared_zeros if shared_memory else np.zeros
  batch = {key: zeros(shape, dtype) for key, (shape, dtype) in spec.items()}
  batch["task_ids"][:] = PAD_TASK_ID
  return batch


class BatchBuilder:
  """grain batch_fn: a list of rows -> (batch dict, StatsDelta)."""

  def __init__(self, *, rows_per_batch: int, buckets: Sequence[int], max_clips: int,
               features: str, n_mels: int, keep_first: int = 10,
               audio_buckets: Sequence[int] = (lengths.N_SAMPLES,)):
    """buckets: text lengths; audio_buckets: audio lengths in samples (`audio.buckets`)."""
    self.rows_per_batch = rows_per_batch
    self.buckets = tuple(int(b) for b in buckets)
    self.audio_buckets = tuple(int(b) for b in audio_buckets)
    self.max_clips = max_clips
    self.features = features
    self.n_mels = n_mels
    self.keep_first = keep_first
    self.shared_memory = False

  def enable_shared_memory_output(self) -> None:
    """Called by grain when batches are built in worker processes: a waveform batch is 15 MB per
    8 rows, and building it in shared memory saves a copy of it per batch."""
    self.shared_memory = True

  def __call__(self, rows: Sequence[Row]) -> Tuple[Dict[str, np.ndarray], StatsDelta]:
    if len(rows) > self.rows_per_batch:
      raise ValueError(f"{len(rows)} rows for a batch of {self.rows_per_batch}")
    longest = max((sum(x.num_tokens for x in row if isinstance(x, Example)) for row in rows),
                  default=1)
    text_length = bucket_for(max(longest, 1), self.buckets)
    audio_samples = audio_buckets.batch_bucket(
        (n for row in rows for x in row if isinstance(x, Example) for n in x.clip_lengths),
        self.audio_buckets)
    batch = empty_batch(self.rows_per_batch, text_length, max_clips=self.max_clips,
                        features=self.features, n_mels=self.n_mels, audio_samples=audio_samples,
                        shared_memory=self.shared_memory)
    audio = batch["audio_mel" if self.features == "mel" else "audio_wave"]
    delta = StatsDelta(self.keep_first)
    for r, row in enumerate(rows):
      offset, slot, segment = 0, 0, 0
      for item in row:
        for rejection in item.rejections:
          delta.add_rejection(rejection)
        if not isinstance(item, Example):
          continue
        segment += 1
        n = item.num_tokens
        if slot + item.num_clips > self.max_clips or offset + n > text_length:
          raise ValueError(f"{item.origin}: the row overflows the batch shape "
                           f"({offset + n} tokens, {slot + item.num_clips} clips)")
        span = slice(offset, offset + n)
        batch["input_ids"][r, span] = item.input_ids
        batch["target_mask"][r, span] = item.target_mask
        batch["target_mask"][r, offset] = False
        batch["segment_ids"][r, span] = segment
        batch["positions"][r, span] = np.arange(n, dtype=np.int32)
        batch["task_ids"][r, span] = item.task_id
        for clip, num_samples, start in zip(item.clips, item.clip_lengths, item.audio_starts):
          if self.features == "mel":
            from qwen_audio_jax.audio.mel import fit_frames  # pylint: disable=g-import-not-at-top
            audio[r, slot] = fit_frames(clip, audio.shape[-1])
          else:
            audio[r, slot, :clip.shape[0]] = clip
          batch["audio_lengths"][r, slot] = num_samples
          batch["audio_starts"][r, slot] = offset + start
          slot += 1
        delta.add_example(item.task_id, n, int(batch["target_mask"][r, span].sum()),
                          item.truncated)
        offset += n
    return batch, delta


def task_counts(batch: Dict[str, np.ndarray], num_tasks: int) -> np.ndarray:
  """Examples of each task in a batch (int64 [num_tasks]), from its segment and task ids."""
  segment_ids, task_ids = np.asarray(batch["segment_ids"]), np.asarray(batch["task_ids"])
  starts = (segment_ids > 0) & (np.diff(segment_ids, axis=1, prepend=0) != 0)
  return np.bincount(task_ids[starts], minlength=num_tasks).astype(np.int64)
