"""A tiny model whose LLM is a fixed Markov chain over a few tokens of the real vocabulary.

Attention and MLP outputs are zeroed, so the residual stream at a position is the embedding of
its token; embeddings are one-hot rows and the output head maps each chain token to its
successor with a large logit. Whatever the audio, the model then generates a known text, which
lets command-line tests check batching, windowing, time shifts and output formats exactly.
"""

import dataclasses

import flax.linen as nn
import jax
import numpy as np

from qwen_audio_jax import config as config_lib
from qwen_audio_jax.model import params as params_lib

CONFIG = dataclasses.replace(
    config_lib.TINY,
    encoder=config_lib.EncoderConfig(n_mels=80, width=32, depth=1, heads=2, mlp_dim=64,
                                     output_dim=32),
    llm=dataclasses.replace(config_lib.TINY.llm, width=32, depth=1, heads=2, kv_heads=1,
                            head_dim=16, mlp_dim=64))


def chain_params(chain, config=CONFIG, seed=0):
  """Parameters whose LLM maps each token of `chain` ({token: next token}) to its successor."""
  if len(chain) > config.llm.width:
    raise ValueError(f"a chain of {len(chain)} tokens needs llm.width >= {len(chain)}")
  rng = np.random.default_rng(seed)

  def leaf(path, shape):  # norms at identity, everything else small and random (no model init)
    name = getattr(path[-1], "key", "")
    if name == "scale":
      return np.ones(shape.shape, np.float32)
    return (0.02 * rng.standard_normal(shape.shape)).astype(np.float32)

  params = jax.tree_util.tree_map_with_path(
      leaf, nn.unbox(params_lib.abstract_params(config)))
  llm = params["llm"]
  llm["layers"]["block"]["out"]["kernel"][:] = 0
  llm["layers"]["block"]["down"]["kernel"][:] = 0
  llm["embed"][:] = 0
  llm["lm_head"][:] = 0
  for i, (token, following) in enumerate(chain.items()):
    llm["embed"][token, i] = 1.0
    llm["lm_head"][i, following] = 10.0
  return params
