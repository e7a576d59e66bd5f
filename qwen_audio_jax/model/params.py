"""Parameter trees: abstract initialisation (shapes, logical axes and parameter counts without
allocating memory) and the '/'-joined paths that name their leaves everywhere in the project
(`audio_encoder/blocks/block/query/kernel`: config regexes, checkpoints, error messages)."""

import functools
from typing import Any, Dict, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from qwen_audio_jax.audio import lengths
from qwen_audio_jax.config import QwenAudioConfig
from qwen_audio_jax.model.qwen_audio import QwenAudio

SEPARATOR = "/"


def path_str(path: Sequence[str]) -> str:
  """'llm/embed/embedding' for the key tuple ('llm', 'embed', 'embedding')."""
  return SEPARATOR.join(path)


def key_path_str(key_path) -> str:
  """The '/'-joined form of a jax key path (dict keys, attribute names, sequence indices)."""
  return jax.tree_util.keystr(tuple(key_path), simple=True, separator=SEPARATOR)


def path_tree(tree) -> Any:
  """`tree` with every leaf replaced by its '/'-joined path."""
  return jax.tree_util.tree_map_with_path(lambda p, _: key_path_str(p), tree)


def flat_paths(tree) -> Dict[str, Any]:
  """{'/'-joined path: leaf} of any pytree (the string-keyed `flatten_dict(tree, sep='/')`)."""
  return {key_path_str(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


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


@functools.lru_cache(maxsize=16)
def _abstract_params(config: QwenAudioConfig) -> Dict:
  return jax.eval_shape(lambda: init_params(config, jax.random.key(0)))


def abstract_params(config: QwenAudioConfig) -> Dict:
  """ShapeDtypeStructs of the parameters (boxed with logical axes), nothing allocated.

  Traced once per model config (a trace of the whole model's init: seconds, and a run asks for
  it several times); each call returns its own copy of the tree."""
  return jax.tree.map(lambda x: x, _abstract_params(config))


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
