"""Abstract initialisation: shapes, logical axes and parameter counts without allocating memory."""

from typing import Dict

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from qwen_audio_jax.audio import lengths
from qwen_audio_jax.config import QwenAudioConfig
from qwen_audio_jax.model.qwen_audio import QwenAudio


def example_inputs(config: QwenAudioConfig, batch: int = 1, length: int = 8, slots: int = 1):
  """Smallest inputs that reach every parameter (one clip per row)."""
  return dict(
      input_ids=jnp.zeros((batch, length), jnp.int32),
      audio_mel=jnp.zeros((batch, slots, config.encoder.n_mels, lengths.N_FRAMES), jnp.float32),
      audio_lengths=jnp.full((batch, slots), lengths.SAMPLE_RATE, jnp.int32),
      audio_starts=jnp.zeros((batch, slots), jnp.int32),
  )


def init_params(config: QwenAudioConfig, rng) -> Dict:
  """Randomly initialised parameters, still boxed with their logical axis names."""
  inputs = example_inputs(config)
  ids = inputs.pop("input_ids")
  return QwenAudio(config).init(rng, ids, **inputs)["params"]


def abstract_params(config: QwenAudioConfig) -> Dict:
  """ShapeDtypeStructs of the parameters (boxed with logical axes), nothing allocated."""
  return jax.eval_shape(lambda: init_params(config, jax.random.key(0)))


def count_params(config: QwenAudioConfig) -> Dict[str, int]:
  """Parameter counts of the whole model and its parts, computed abstractly."""
  tree = nn.unbox(abstract_params(config))
  size = lambda t: int(sum(np.prod(x.shape) for x in jax.tree.leaves(t)))  # noqa: E731
  encoder = size(tree["audio_encoder"]) + size(tree.get("audio_bos_eos", {}))
  projection = size(tree["audio_encoder"].get("proj", {}))
  return {
      "total": size(tree),
      "audio_encoder": encoder,
      "projection": projection,
      "llm": size(tree["llm"]),
  }
