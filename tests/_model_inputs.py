"""Inputs of the small-model attention tests: two rows of 40 tokens (one packed with two
segments, one padded), one clip each (1 s and 2 s of random log-mel)."""

import jax.numpy as jnp
import numpy as np


def packed_rows(vocab_size: int = 256):
  """(input_ids [2, 40], segment_ids [2, 40], audio keyword arguments of the model's apply)."""
  rng = np.random.default_rng(0)
  ids = jnp.asarray(rng.integers(0, vocab_size, (2, 40)), jnp.int32)
  segments = jnp.asarray([[1] * 30 + [2] * 10, [1] * 35 + [0] * 5], jnp.int32)
  audio = dict(audio_mel=jnp.asarray(rng.normal(size=(2, 1, 80, 320)), jnp.float32),
               audio_lengths=jnp.asarray([[16_000], [32_000]], jnp.int32),
               audio_starts=jnp.asarray([[1], [2]], jnp.int32))
  return ids, segments, audio
