"""Scanned <-> unrolled layer layouts of a parameter tree.

With `scan_layers=True` a LayerStack keeps its blocks under one 'block' entry whose leaves carry a
leading layer axis; unrolled (`scan_layers=False`) they are 'block_0' ... 'block_{L-1}' without
it. Checkpoints are stored scanned; these functions convert any tree (parameters, optimizer
moments, numpy or jax leaves) between the two.
"""

import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

_BLOCK = "block"
_NUMBERED = re.compile(r"^block_(\d+)$")


def _stack(leaves):
  if all(isinstance(x, np.ndarray) for x in leaves):
    return np.stack(leaves)
  return jnp.stack(leaves)


def unstack_layers(tree: Any) -> Any:
  """Every 'block' subtree (leaves [L, ...]) -> 'block_0' ... 'block_{L-1}' (leaves [...])."""
  if not isinstance(tree, Mapping):
    return tree
  out = {}
  for key, value in tree.items():
    if key == _BLOCK and isinstance(value, Mapping):
      depths = {x.shape[0] for x in jax.tree.leaves(value)}
      if len(depths) != 1:
        raise ValueError(f"leaves under '{_BLOCK}' disagree on the layer count: {sorted(depths)}")
      depth = depths.pop()
      for i in range(depth):
        out[f"{_BLOCK}_{i}"] = jax.tree.map(lambda x, i=i: x[i], value)
    else:
      out[key] = unstack_layers(value)
  return out


def stack_layers(tree: Any) -> Any:
  """Every run of 'block_0' ... 'block_{L-1}' subtrees -> one 'block' subtree (leaves [L, ...])."""
  if not isinstance(tree, Mapping):
    return tree
  numbered = {int(m.group(1)): k for k in tree if (m := _NUMBERED.match(str(k)))}
  out = {k: stack_layers(v) for k, v in tree.items() if k not in numbered.values()}
  if numbered:
    if sorted(numbered) != list(range(len(numbered))):
      raise ValueError(f"layer blocks are not numbered 0..{len(numbered) - 1}: "
                       f"{sorted(numbered.values())}")
    if _BLOCK in out:
      raise ValueError(f"a tree cannot hold both '{_BLOCK}' and '{_BLOCK}_N' entries")
    blocks = [tree[numbered[i]] for i in range(len(numbered))]
    out[_BLOCK] = jax.tree.map(lambda *xs: _stack(list(xs)), *blocks)
  return out
