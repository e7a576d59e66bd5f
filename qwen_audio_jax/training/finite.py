"""Finiteness of whole trees, computed on the device (one cheap reduction per array).

The train step uses it on the updated parameters and optimizer state: a gradient can be finite
while the update it produces is not (a learning rate of 1e39, an Adam second moment that
overflows), and such an update is skipped or halts the run exactly like a non-finite gradient.
Checkpoints use it before every save, so that no checkpoint ever holds a NaN or an infinity.
"""

from typing import Any, List

import jax
import jax.numpy as jnp
import numpy as np


def _float_leaves(tree) -> List[jax.Array]:
  return [x for x in jax.tree.leaves(tree)
          if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)]


def all_finite(tree) -> jax.Array:
  """bool scalar: every element of every floating-point array of `tree` is finite."""
  flags = [jnp.all(jnp.isfinite(x)) for x in _float_leaves(tree)]
  return jnp.all(jnp.stack(flags)) if flags else jnp.asarray(True)


_all_finite = jax.jit(all_finite)


@jax.jit
def _leaf_flags(tree):
  return jax.tree.map(
      lambda x: jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact)
      else jnp.asarray(True), tree)


def _host_bool(x) -> bool:
  """A replicated device scalar on this host (multi-host safe: no cross-host gather)."""
  return bool(np.asarray(x.addressable_data(0)) if hasattr(x, "addressable_data") else x)


def nonfinite_paths(tree: Any, limit: int = 5) -> List[str]:
  """'/'-joined paths of the first `limit` arrays of `tree` that hold a NaN or an infinity
  (empty when every array is finite). Computed on the device; only booleans reach the host."""
  if _host_bool(_all_finite(tree)):  # one scalar to the host in the common case
    return []
  flags = _leaf_flags(tree)
  out = []
  for path, flag in jax.tree_util.tree_flatten_with_path(flags)[0]:
    if not _host_bool(flag):
      out.append("/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                          for k in path))
      if len(out) >= limit:
        break
  return out
