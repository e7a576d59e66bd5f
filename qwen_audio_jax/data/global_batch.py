"""Per-process numpy batches -> global jax.Arrays sharded over the mesh's batch axes.

Every process builds rows_per_batch = batch_size / process_count rows; the global array stacks
them in process order along the batch dimension, which is split over ('data', 'fsdp'). The text
length S and the audio length N of a batch are buckets chosen from the process's own rows, so
before building the global arrays the processes agree on the largest S and N and pad to them,
through the coordination service's key-value store (no device collective, nothing when there is
a single process). A finite stream (evaluation) can end after a different number of
batches on each process; `global_batches` keeps every process stepping, with padding batches,
until all have run out, so that no process waits forever in a collective.
"""

from typing import Callable, Dict, Iterator, Mapping

import jax
import numpy as np
from jax.sharding import Mesh

from qwen_audio_jax import sharding
from qwen_audio_jax.audio.lengths import HOP_LENGTH
from qwen_audio_jax.data.batching import PAD_TASK_ID, TEXT_KEYS


def pad_text_length(batch: Mapping[str, np.ndarray], text_length: int) -> Dict[str, np.ndarray]:
  """The batch with its [B, S] text arrays padded to `text_length` (padding: segment 0)."""
  current = batch["input_ids"].shape[1]
  if text_length < current:
    raise ValueError(f"cannot pad a batch of text length {current} down to {text_length}")
  out = dict(batch)
  if text_length == current:
    return out
  for key in TEXT_KEYS:
    fill = PAD_TASK_ID if key == "task_ids" else 0
    out[key] = np.pad(batch[key], ((0, 0), (0, text_length - current)), constant_values=fill)
  return out


def audio_samples(batch: Mapping[str, np.ndarray]) -> int:
  """The audio bucket of a batch in samples (0 without audio)."""
  if "audio_wave" in batch:
    return int(batch["audio_wave"].shape[-1])
  if "audio_mel" in batch:
    return int(batch["audio_mel"].shape[-1]) * HOP_LENGTH
  return 0


def pad_audio_length(batch: Mapping[str, np.ndarray], samples: int) -> Dict[str, np.ndarray]:
  """The batch with its audio padded to the bucket of `samples` samples: zeros after the
  waveforms, each clip's silent level after its mel frames (empty slots stay zero)."""
  current = audio_samples(batch)
  if samples < current:
    raise ValueError(f"cannot pad a batch of {current} audio samples down to {samples}")
  out = dict(batch)
  if samples == current:
    return out
  if "audio_wave" in batch:
    wave = batch["audio_wave"]
    out["audio_wave"] = np.pad(wave, [(0, 0)] * (wave.ndim - 1) + [(0, samples - current)])
  else:
    from qwen_audio_jax.audio.mel import fit_frames  # pylint: disable=g-import-not-at-top
    used = (np.asarray(batch["audio_lengths"]) > 0)[..., None, None]
    out["audio_mel"] = np.where(used, fit_frames(np.asarray(batch["audio_mel"]),
                                                 samples // HOP_LENGTH), 0).astype(np.float32)
  return out


class _ShapeExchange:
  """Each process's text length and audio bucket of its n-th batch, shared through the coordination service's
  key-value store (the host-side service `jax.distributed` runs), not a device collective: a
  process publishes its length and reads the others' without launching or waiting for any
  device work, so asynchronous dispatch keeps the accelerators busy. Every process makes its
  global batches in the same order (train steps and evaluation batches alike), so the n-th
  call means the same batch everywhere; each process removes its own key two batches later."""

  PREFIX = "qwen_audio_jax/batch_shape"
  TIMEOUT_MS = 30 * 60 * 1000  # a process whose pipeline stalls this long has failed

  def __init__(self):
    self.count = 0

  def shapes(self, shape):
    from jax._src import distributed  # pylint: disable=g-import-not-at-top
    client = distributed.global_state.client
    me, n = jax.process_index(), self.count
    self.count += 1
    client.key_value_set(f"{self.PREFIX}/{n}/{me}", ",".join(map(str, shape)))
    out = [tuple(shape) if p == me else tuple(int(v) for v in client.blocking_key_value_get(
        f"{self.PREFIX}/{n}/{p}", self.TIMEOUT_MS).split(",")) for p in range(jax.process_count())]
    if n >= 2:
      client.key_value_delete(f"{self.PREFIX}/{n - 2}/{me}")
    return out


_EXCHANGE = _ShapeExchange()


def agree_on_text_length(batch: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """Pads every process's batch to the largest text length and audio bucket among the
  processes."""
  if jax.process_count() == 1:
    return dict(batch)
  shapes = np.asarray(_EXCHANGE.shapes((int(batch["input_ids"].shape[1]), audio_samples(batch))))
  batch = pad_text_length(batch, int(np.max(shapes[:, 0])))
  return pad_audio_length(batch, int(np.max(shapes[:, 1])))


def make_global_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> Dict[str, jax.Array]:
  """Global jax.Arrays from this process's batch, batch dimension over ('data', 'fsdp')."""
  batch = agree_on_text_length(batch)
  shards = int(np.prod([mesh.shape[a] for a in sharding.BATCH_AXES if a in mesh.shape]))
  rows = batch["input_ids"].shape[0] * jax.process_count()
  if rows % shards:
    raise ValueError(f"global batch of {rows} rows cannot be split over the mesh's batch axes "
                     f"{sharding.BATCH_AXES} ({shards} shards): make data.batch_size a "
                     f"multiple of {shards}")
  return {key: jax.make_array_from_process_local_data(
      sharding.batch_sharding(mesh, np.ndim(value)), np.asarray(value))
          for key, value in batch.items()}


def _every_process(flag: bool) -> bool:
  """True when `flag` is True on every process."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.all(multihost_utils.process_allgather(np.asarray([flag]))))


def global_batches(local_batches: Iterator[Mapping[str, np.ndarray]], mesh: Mesh, *,
                   padding_batch: Callable[[], Dict[str, np.ndarray]]
                   ) -> Iterator[Dict[str, jax.Array]]:
  """Global batches until every process's local stream has ended.

  A process whose stream has ended contributes `padding_batch()` (all segment ids 0: no loss, no
  metric) while the others still have data.
  """
  exhausted = False
  while True:
    if not exhausted:
      try:
        local = next(local_batches)
      except StopIteration:
        exhausted = True
    if exhausted:
      local = padding_batch()
    if _every_process(exhausted):
      return
    yield make_global_batch(local, mesh)
