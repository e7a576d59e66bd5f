"""Scaled dot-product attention behind one interface.

`attend` takes queries [B, T, H, D] and keys / values [B, S, K, D] with K dividing H (grouped
KV heads) and a boolean mask [B, 1, T, S] (True = may attend). Implementations:
- 'xla' / 'cudnn': `jax.nn.dot_product_attention` (on GPUs 'cudnn' is flash attention);
- 'plain': explicit einsums with the softmax in float32, the easiest path to read and debug.
Rows whose mask is all False (padding queries) produce zeros rather than NaNs.
"""

import jax
import jax.numpy as jnp

_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def attend(query, key, value, mask, *, impl: str = "xla", scale=None):
  """Attention output [B, T, H, D]; `scale` defaults to 1 / sqrt(D)."""
  batch, q_len, heads, head_dim = query.shape
  kv_heads = key.shape[2]
  if heads % kv_heads:
    raise ValueError(f"query heads ({heads}) must be a multiple of key/value heads ({kv_heads})")
  scale = head_dim ** -0.5 if scale is None else scale
  any_key = jnp.any(mask, axis=-1, keepdims=True)  # [B, 1, T, 1]
  if impl in ("xla", "cudnn"):
    out = jax.nn.dot_product_attention(
        query, key, value, mask=mask, scale=scale, implementation=impl)
  elif impl == "plain":
    groups = heads // kv_heads
    q = query.reshape(batch, q_len, kv_heads, groups, head_dim)
    logits = jnp.einsum("btkgd,bskd->bkgts", q, key, preferred_element_type=jnp.float32) * scale
    logits = jnp.where(mask[:, :, None], logits, _MASK_VALUE)  # mask [B,1,T,S] -> [B,1,1,T,S]
    probs = jax.nn.softmax(logits, axis=-1).astype(value.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, value).reshape(batch, q_len, heads, head_dim)
  else:
    raise ValueError(f"attention impl {impl!r} is not one of 'xla', 'cudnn', 'plain'")
  # [B,1,T,1] -> [B,T,1,1]: zero the outputs of queries that may attend to nothing.
  return jnp.where(jnp.swapaxes(any_key, 1, 2), out, 0).astype(query.dtype)


def causal_segment_mask(q_segments, kv_segments, q_positions_idx, kv_positions_idx):
  """[B, 1, T, S] mask: same non-zero segment and key index <= query index."""
  same = (q_segments[:, :, None] == kv_segments[:, None, :]) & (q_segments[:, :, None] != 0)
  causal = kv_positions_idx[:, None, :] <= q_positions_idx[:, :, None]
  return (same & causal)[:, None]
