"""Blockwise attention with an online softmax (FlashAttention, Dao et al. 2022) in pure JAX.

The plain and XLA paths form the [B, H, T, S] logits and probabilities (and keep them for the
backward pass): at the encoder's 1,500 frames that is 72 MB per layer for 4 clips x 8 heads, and
XLA:CPU spends most of the attention time moving them. Here the keys are visited `block_k` at a
time; each query keeps a running max, normaliser and weighted sum (the online softmax), so only
one [B, H, T, block_k] block of logits exists at once, and memory is O(T) for a fixed block. The
backward pass (`jax.custom_vjp`) saves only the output and each query's log-sum-exp and
recomputes the probabilities block by block, as in FlashAttention's backward: dV = P^T dO,
dP = dO V^T, dS = P * (dP - rowsum(dO * O)), dQ = dS K, dK = dS^T Q.

The mask is never materialised either: it is rebuilt per block from segment ids and indices
(`attention.MaskInfo`): key padding for the encoder (key segment 0), causal + same segment for
the packed LLM rows. Queries that may attend to no key get zeros, as in `attention.attend`.
Works on every platform (it is only einsums, exp and a scan); cuDNN's fused kernel stays the
faster choice on GPUs.
"""

import functools

import jax
import jax.numpy as jnp

_NEG = -0.7 * float(jnp.finfo(jnp.float32).max)


def _block_mask(q_seg, kv_seg, q_idx, kv_idx, causal: bool):
  """[B, 1, 1, T, bk] bool mask of one key block (broadcast over KV heads and groups)."""
  mask = (q_seg[:, :, None] == kv_seg[:, None, :]) & (q_seg[:, :, None] != 0)
  if causal:
    mask &= kv_idx[:, None, :] <= q_idx[:, :, None]
  return mask[:, None, None]


def _split_keys(x, block_k: int, fill=0):
  """[B, S, ...] -> [S / block_k, B, block_k, ...] (S padded up to a multiple of block_k)."""
  batch, length = x.shape[:2]
  blocks = -(-length // block_k)
  pad = blocks * block_k - length
  x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2), constant_values=fill)
  return jnp.swapaxes(x.reshape((batch, blocks, block_k) + x.shape[2:]), 0, 1)


def _kv_blocks(key, value, kv_seg, kv_idx, block_k):
  """Per block: keys / values [B, K, bk, D], key segments and indices [B, bk]."""
  to_heads_first = lambda x: jnp.swapaxes(_split_keys(x, block_k), 2, 3)  # noqa: E731
  return (to_heads_first(key), to_heads_first(value), _split_keys(kv_seg, block_k),
          _split_keys(kv_idx, block_k))


def _forward(q, key, value, q_seg, kv_seg, q_idx, kv_idx, causal, scale, block_k):
  """q: [B, K, G, T, D]; returns (out [B, K, G, T, D] float32, lse [B, K, G, T] float32)."""
  batch, kv_heads, groups, q_len, head_dim = q.shape
  blocks = _kv_blocks(key, value, kv_seg, kv_idx, block_k)

  def step(carry, block):
    running_max, norm, acc = carry
    k, v, seg, idx = block
    logits = jnp.einsum("bkgtd,bksd->bkgts", q, k, preferred_element_type=jnp.float32) * scale
    mask = _block_mask(q_seg, seg, q_idx, idx, causal)
    logits = jnp.where(mask, logits, _NEG)
    new_max = jnp.maximum(running_max, jnp.max(logits, axis=-1))
    probs = jnp.where(mask, jnp.exp(logits - new_max[..., None]), 0.0)
    correction = jnp.exp(running_max - new_max)
    norm = norm * correction + jnp.sum(probs, axis=-1)
    acc = acc * correction[..., None] + jnp.einsum(
        "bkgts,bksd->bkgtd", probs.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return (new_max, norm, acc), None

  stats = (batch, kv_heads, groups, q_len)
  init = (jnp.full(stats, _NEG, jnp.float32), jnp.zeros(stats, jnp.float32),
          jnp.zeros(stats + (head_dim,), jnp.float32))
  (running_max, norm, acc), _ = jax.lax.scan(step, init, blocks)
  attended = norm > 0
  out = jnp.where(attended[..., None], acc / jnp.where(attended, norm, 1.0)[..., None], 0.0)
  # Rows without keys: an lse of +inf-like makes every recomputed probability 0 in the backward.
  lse = jnp.where(attended, running_max + jnp.log(jnp.where(attended, norm, 1.0)), -_NEG)
  return out, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9))
def _attention(q, key, value, q_seg, kv_seg, q_idx, kv_idx, causal, scale, block_k):
  return _forward(q, key, value, q_seg, kv_seg, q_idx, kv_idx, causal, scale, block_k)[0].astype(
      q.dtype)


def _attention_fwd(q, key, value, q_seg, kv_seg, q_idx, kv_idx, causal, scale, block_k):
  out, lse = _forward(q, key, value, q_seg, kv_seg, q_idx, kv_idx, causal, scale, block_k)
  out = out.astype(q.dtype)
  return out, (q, key, value, q_seg, kv_seg, q_idx, kv_idx, out, lse)


def _attention_bwd(causal, scale, block_k, residuals, d_out):
  q, key, value, q_seg, kv_seg, q_idx, kv_idx, out, lse = residuals
  kv_len = key.shape[1]
  d_out32 = d_out.astype(jnp.float32)
  delta = jnp.sum(d_out32 * out.astype(jnp.float32), axis=-1)  # rowsum(dO * O): [B, K, G, T]
  blocks = _kv_blocks(key, value, kv_seg, kv_idx, block_k)

  def step(d_q, block):
    k, v, seg, idx = block
    logits = jnp.einsum("bkgtd,bksd->bkgts", q, k, preferred_element_type=jnp.float32) * scale
    mask = _block_mask(q_seg, seg, q_idx, idx, causal)
    probs = jnp.where(mask, jnp.exp(logits - lse[..., None]), 0.0)
    d_v = jnp.einsum("bkgts,bkgtd->bksd", probs, d_out32)
    d_probs = jnp.einsum("bkgtd,bksd->bkgts", d_out32, v.astype(jnp.float32))
    d_logits = probs * (d_probs - delta[..., None]) * scale
    d_q = d_q + jnp.einsum("bkgts,bksd->bkgtd", d_logits, k.astype(jnp.float32))
    d_k = jnp.einsum("bkgts,bkgtd->bksd", d_logits, q.astype(jnp.float32))
    return d_q, (d_k, d_v)

  d_q, (d_k, d_v) = jax.lax.scan(step, jnp.zeros(q.shape, jnp.float32), blocks)

  def merge(x):  # [blocks, B, K, bk, D] -> [B, S, K, D]
    x = jnp.moveaxis(x, 0, 1)  # [B, blocks, K, bk, D]
    x = jnp.swapaxes(x, 2, 3).reshape((x.shape[0], -1) + (x.shape[2], x.shape[4]))
    return x[:, :kv_len]

  return (d_q.astype(q.dtype), merge(d_k).astype(key.dtype), merge(d_v).astype(value.dtype),
          None, None, None, None)


_attention.defvjp(_attention_fwd, _attention_bwd)

DEFAULT_BLOCK_K = 128


def flash_attention(query, key, value, q_segments, kv_segments, q_index, kv_index, *,
                    causal: bool, scale: float, block_k: int = DEFAULT_BLOCK_K):
  """Attention output [B, T, H, D] for queries [B, T, H, D], keys / values [B, S, K, D].

  A query attends a key when their segment ids ([B, T] / [B, S]) are equal and non-zero and,
  with `causal`, the key's index ([B, S]) is at most the query's ([B, T]).
  """
  batch, q_len, heads, head_dim = query.shape
  kv_heads = key.shape[2]
  groups = heads // kv_heads
  block_k = max(1, min(block_k, key.shape[1]))
  q = jnp.transpose(query.reshape(batch, q_len, kv_heads, groups, head_dim), (0, 2, 3, 1, 4))
  as_int = lambda x: jnp.asarray(x, jnp.int32)  # noqa: E731
  out = _attention(q, key, value, as_int(q_segments), as_int(kv_segments), as_int(q_index),
                   as_int(kv_index), bool(causal), float(scale), int(block_k))
  return jnp.transpose(out, (0, 3, 1, 2, 4)).reshape(batch, q_len, heads, head_dim)
