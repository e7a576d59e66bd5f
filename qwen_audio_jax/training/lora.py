"""LoRA (Hu et al., 2021) on LLM kernels, applied functionally inside the step.

For each kernel W matching `config.lora.target` the factors A [n_in, r] and B [r, n_out] (per
layer when layers are stacked) add scale * A @ B to W viewed as an [n_in, n_out] matrix, with
scale = alpha / r. B starts at zero, so training starts from the base model exactly. The model
itself is unchanged: the step computes the merged kernels and runs the usual forward.

Input dims of a kernel: the first axis after the stacked-layer axis, except for the attention
output projection `out` ([heads, head_dim, embed]), whose first two axes are its input.
"""

import math
import re
from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp

from qwen_audio_jax.model.params import flat_paths, key_path_str


def _split(path: str, shape: Tuple[int, ...], stacked: bool) -> Tuple[Tuple[int, ...], int, int]:
  """(leading layer dims, n_in, n_out) of a kernel's matrix view."""
  lead = shape[:1] if stacked else ()
  body = shape[len(lead):]
  n_in_dims = 2 if path.split("/")[-2] == "out" else 1
  if len(body) <= n_in_dims:
    raise ValueError(f"LoRA target {path} with shape {shape} is not a matrix")
  return lead, math.prod(body[:n_in_dims]), math.prod(body[n_in_dims:])


def _is_stacked(path: str) -> bool:
  return "/block/" in path  # nn.scan stacks layers under 'block' (unrolled: 'block_0', ...)


def targets(params, pattern: str) -> Dict[str, Any]:
  """'/'-path -> kernel for every parameter matching `pattern`."""
  regex = re.compile(pattern)
  return {path: leaf for path, leaf in flat_paths(params).items() if regex.search(path)}


def init_lora(config, params, rng) -> Dict[str, Dict[str, jax.Array]]:
  """{'path': {'a': [.., n_in, r], 'b': [.., r, n_out]}} for every target kernel."""
  rank = config.lora.rank
  found = targets(params, config.lora.target)
  if not found:
    raise ValueError(f"config.lora.target={config.lora.target!r} matches no parameter")
  factors = {}
  for i, (path, kernel) in enumerate(sorted(found.items())):
    lead, n_in, n_out = _split(path, kernel.shape, _is_stacked(path))
    a = jax.random.normal(jax.random.fold_in(rng, i), lead + (n_in, rank), jnp.float32)
    factors[path] = {"a": a / math.sqrt(n_in), "b": jnp.zeros(lead + (rank, n_out), jnp.float32)}
  return factors


def merge(config, params, factors):
  """`params` with scale * A @ B added to every target kernel."""
  if not factors:
    return params
  scale = config.lora.alpha / config.lora.rank

  def one(path, kernel):
    name = key_path_str(path)
    if name not in factors:
      return kernel
    a, b = factors[name]["a"], factors[name]["b"]
    delta = jnp.einsum("...ir,...ro->...io", a, b) * scale
    return (kernel + delta.reshape(kernel.shape)).astype(kernel.dtype)

  return jax.tree_util.tree_map_with_path(one, params)
