"""Blockwise attention with an online softmax (FlashAttention, Dao et al. 2022) in pure JAX.

The plain and XLA paths form the [B, H, T, S] logits and probabilities (and keep them for the
backward pass): at the encoder's 1,500 frames that is 72 MB per layer for 4 clips x 8 heads, and
XLA:CPU spends most of the attention time moving them. Here the keys are visited `block_k` at a
time; each query keeps a running max, normaliser and weighted sum (the online softmax), so only
one block of logits exists at once, and memory is O(T) for a fixed block. The backward pass
(`jax.custom_vjp`) saves only the output and each query's log-sum-exp and recomputes the
probabilities tile by tile, as in FlashAttention-2's backward (Dao 2023): dV = P^T dO,
dP = dO V^T, dS = P * (dP - rowsum(dO * O)), dQ = dS K, dK = dS^T Q.

Causal attention is also cut into query tiles, and a tile pair whose queries may attend none of
its keys is skipped (`_live_tiles`): the upper triangle of each row, padding and other packed
sequences, about half the work of a causal row. Bidirectional attention (the encoder's key
padding) keeps all queries in one tile: there, per-pair branches and query tiles cost more on
CPU than the rare all-padding key tile saves.

The mask is never materialised either: it is rebuilt per tile from segment ids and indices
(`attention.MaskInfo`): key padding for the encoder (key segment 0), causal + same segment for
the packed LLM rows. Queries that may attend to no key get zeros, as in `attention.attend`.
Works on every platform (it is only einsums, exp, scans and conds); cuDNN's fused kernel stays
the faster choice on GPUs.
"""

import functools

import jax
import jax.numpy as jnp

_NEG = -0.7 * float(jnp.finfo(jnp.float32).max)


def _tile_mask(q_seg, kv_seg, q_idx, kv_idx, causal: bool, keys_only: bool = False):
  """[B, 1, 1, bq, bk] bool mask of one (query tile, key tile) pair (broadcast over KV heads and
  groups); [B, 1, 1, 1, bk] with `keys_only` (every query is in segment 1: key padding), which
  XLA then broadcasts inside the fusions that read it instead of materialising a mask per
  query."""
  if keys_only:
    return (kv_seg == 1)[:, None, None, None, :]
  mask = (q_seg[:, :, None] == kv_seg[:, None, :]) & (q_seg[:, :, None] != 0)
  if causal:
    mask &= kv_idx[:, None, :] <= q_idx[:, :, None]
  return mask[:, None, None]


def _tiles(x, block: int, axis: int, fill=0):
  """x with `axis` cut into tiles of `block` (padded with `fill`), the tile index moved first:
  [..., L, ...] -> [L / block, ..., block, ...]."""
  length = x.shape[axis]
  count = -(-length // block)
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, count * block - length)
  x = jnp.pad(x, pad, constant_values=fill)
  x = x.reshape(x.shape[:axis] + (count, block) + x.shape[axis + 1:])
  return jnp.moveaxis(x, axis, 0)


def _untile(x, axis: int, length: int):
  """Inverse of `_tiles` (the tile index first, the tile at `axis` of the rest), cut to length."""
  x = jnp.moveaxis(x, 0, axis)
  x = x.reshape(x.shape[:axis] + (-1,) + x.shape[axis + 2:])
  return jax.lax.slice_in_dim(x, 0, length, axis=axis)


def _live_tiles(q_seg, kv_seg, q_idx, kv_idx, causal):
  """[n_q, n_k] bool: may any query of tile i attend any key of tile j (in some row)?

  Tiles: [n, B, block]. Conservative (a tile pair marked live may still be fully masked; the
  per-element mask stays exact), from per-row summaries: both tiles hold a non-padding token,
  their segment-id ranges overlap (packed segments are increasing along a row) and, when causal,
  the tile's first key index is not after its last query index. Everything else is skipped:
  the upper triangle of a causal row, padding, other packed sequences.
  """
  big = jnp.iinfo(jnp.int32).max
  q_real, kv_real = q_seg != 0, kv_seg != 0
  q_any, kv_any = q_real.any(-1), kv_real.any(-1)  # [n, B]
  lo = lambda x, real: jnp.where(real, x, big).min(-1)  # noqa: E731
  hi = lambda x, real: jnp.where(real, x, -big).max(-1)  # noqa: E731
  live = q_any[:, None] & kv_any[None, :]  # [n_q, n_k, B]
  live &= lo(q_seg, q_real)[:, None] <= hi(kv_seg, kv_real)[None, :]
  live &= lo(kv_seg, kv_real)[None, :] <= hi(q_seg, q_real)[:, None]
  if causal:
    live &= lo(kv_idx, kv_real)[None, :] <= hi(q_idx, q_real)[:, None]
  return live.any(-1)


def _layout(q, key, value, q_seg, kv_seg, q_idx, kv_idx, causal, block_q, block_k):
  """Tiles: queries [n_q, B, K, G, bq, D], keys / values [n_k, B, K, bk, D], their segment ids
  and indices [n, B, block], and the live-pair table [n_q, n_k]."""
  q_t = _tiles(q, block_q, axis=3)
  k_t = _tiles(jnp.swapaxes(key, 1, 2), block_k, axis=2)  # [B, K, S, D] -> tiles
  v_t = _tiles(jnp.swapaxes(value, 1, 2), block_k, axis=2)
  q_seg_t, q_idx_t = _tiles(q_seg, block_q, axis=1), _tiles(q_idx, block_q, axis=1)
  kv_seg_t, kv_idx_t = _tiles(kv_seg, block_k, axis=1), _tiles(kv_idx, block_k, axis=1)
  if causal:
    live = _live_tiles(q_seg_t, kv_seg_t, q_idx_t, kv_idx_t, causal)
  else:  # every pair is computed (see `flash_attention`): no table to build
    live = jnp.ones((q_t.shape[0], k_t.shape[0]), bool)
  return q_t, k_t, v_t, q_seg_t, q_idx_t, kv_seg_t, kv_idx_t, live


def _forward(q, key, value, q_seg, kv_seg, q_idx, kv_idx, causal, scale, block_q, block_k,
             keys_only):
  """q: [B, K, G, T, D]; returns (out [B, K, G, T, D] float32, lse [B, K, G, T] float32)."""
  q_len = q.shape[3]
  q_t, k_t, v_t, q_seg_t, q_idx_t, kv_seg_t, kv_idx_t, live = _layout(
      q, key, value, q_seg, kv_seg, q_idx, kv_idx, causal, block_q, block_k)

  def query_tile(_, tile):
    q_i, seg_i, idx_i, live_i = tile

    def key_tile(carry, block):
      k, v, seg, idx, is_live = block

      def update(carry):
        running_max, norm, acc = carry
        logits = jnp.einsum("bkgtd,bksd->bkgts", q_i, k,
                            preferred_element_type=jnp.float32) * scale
        mask = _tile_mask(seg_i, seg, idx_i, idx, causal, keys_only)
        logits = jnp.where(mask, logits, _NEG)
        new_max = jnp.maximum(running_max, jnp.max(logits, axis=-1))
        probs = jnp.where(mask, jnp.exp(logits - new_max[..., None]), 0.0)
        correction = jnp.exp(running_max - new_max)
        norm = norm * correction + jnp.sum(probs, axis=-1)
        acc = acc * correction[..., None] + jnp.einsum(
            "bkgts,bksd->bkgtd", probs.astype(v.dtype), v, preferred_element_type=jnp.float32)
        return new_max, norm, acc

      if not causal:  # every pair is computed (see `flash_attention`): no branch
        return update(carry), None
      return jax.lax.cond(is_live, update, lambda c: c, carry), None

    stats = q_i.shape[:-1]
    init = (jnp.full(stats, _NEG, jnp.float32), jnp.zeros(stats, jnp.float32),
            jnp.zeros(q_i.shape, jnp.float32))
    (running_max, norm, acc), _ = jax.lax.scan(
        key_tile, init, (k_t, v_t, kv_seg_t, kv_idx_t, live_i))
    attended = norm > 0
    out = jnp.where(attended[..., None], acc / jnp.where(attended, norm, 1.0)[..., None], 0.0)
    # Rows without keys: an lse of +inf-like makes every recomputed probability 0 in the
    # backward.
    lse = jnp.where(attended, running_max + jnp.log(jnp.where(attended, norm, 1.0)), -_NEG)
    return None, (out, lse)

  _, (out_t, lse_t) = jax.lax.scan(query_tile, None, (q_t, q_seg_t, q_idx_t, live))
  return _untile(out_t, 3, q_len), _untile(lse_t, 3, q_len)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9, 10, 11))
def _attention(q, key, value, q_seg, kv_seg, q_idx, kv_idx, causal, scale, block_q, block_k,
               keys_only):
  return _forward(q, key, value, q_seg, kv_seg, q_idx, kv_idx, causal, scale, block_q,
                  block_k, keys_only)[0].astype(q.dtype)


def _attention_fwd(q, key, value, q_seg, kv_seg, q_idx, kv_idx, causal, scale, block_q,
                   block_k, keys_only):
  out, lse = _forward(q, key, value, q_seg, kv_seg, q_idx, kv_idx, causal, scale, block_q,
                      block_k, keys_only)
  out = out.astype(q.dtype)
  return out, (q, key, value, q_seg, kv_seg, q_idx, kv_idx, out, lse)


def _attention_bwd(causal, scale, block_q, block_k, keys_only, residuals, d_out):
  """FlashAttention-2's backward: key tiles outside, query tiles inside; dK and dV of a key
  tile accumulate in the inner loop's carry, dQ in a [n_q, ...] buffer updated a tile at a
  time. Only live tile pairs are computed."""
  q, key, value, q_seg, kv_seg, q_idx, kv_idx, out, lse = residuals
  q_len, kv_len = q.shape[3], key.shape[1]
  d_out32 = d_out.astype(jnp.float32)
  delta = jnp.sum(d_out32 * out.astype(jnp.float32), axis=-1)  # rowsum(dO * O): [B, K, G, T]
  q_t, k_t, v_t, q_seg_t, q_idx_t, kv_seg_t, kv_idx_t, live = _layout(
      q, key, value, q_seg, kv_seg, q_idx, kv_idx, causal, block_q, block_k)
  d_out_t = _tiles(d_out32, block_q, axis=3)
  # [n_q, B, K, G, bq, D] -> [n_q, B, K, D, G, bq]: the query tiles' transposes, for dK and dV.
  q_tt = jnp.transpose(q_t.astype(jnp.float32), (0, 1, 2, 5, 3, 4))
  d_out_tt = jnp.transpose(d_out_t, (0, 1, 2, 5, 3, 4))
  lse_t, delta_t = _tiles(lse, block_q, axis=3), _tiles(delta, block_q, axis=3)
  n_q = q_t.shape[0]

  def key_tile(d_q, block):
    k, v, seg, idx, live_j = block
    k32, v32 = k.astype(jnp.float32), v.astype(jnp.float32)

    def query_tile(i, carry):
      d_q, d_k, d_v = carry

      def grads(_):
        q_i = q_t[i].astype(jnp.float32)
        logits = jnp.einsum("bkgtd,bksd->bkgts", q_i, k32) * scale
        mask = _tile_mask(q_seg_t[i], seg, q_idx_t[i], idx, causal, keys_only)
        probs = jnp.where(mask, jnp.exp(logits - lse_t[i][..., None]), 0.0)
        # dV^T = dO^T P and dK^T = Q^T dS: P and dS are read as they are made ([queries, keys],
        # the contraction over queries their major axis); the transposed operands are the
        # small per-query-tile dO^T and Q^T, made once before the loops.
        d_v = jnp.einsum("bkdgt,bkgts->bkds", d_out_tt[i], probs)
        d_probs = jnp.einsum("bkgtd,bksd->bkgts", d_out_t[i], v32)
        d_logits = probs * (d_probs - delta_t[i][..., None]) * scale
        return (jnp.einsum("bkgts,bksd->bkgtd", d_logits, k32),
                jnp.einsum("bkdgt,bkgts->bkds", q_tt[i], d_logits), d_v)

      def nothing(_):
        return (jnp.zeros(q_t.shape[1:], jnp.float32), jnp.zeros(d_k.shape, jnp.float32),
                jnp.zeros(d_v.shape, jnp.float32))

      if causal:
        dq_i, dk_i, dv_i = jax.lax.cond(live_j[i], grads, nothing, None)
      else:
        dq_i, dk_i, dv_i = grads(None)
      return d_q.at[i].add(dq_i), d_k + dk_i, d_v + dv_i

    zeros = jnp.zeros(jnp.swapaxes(k, -1, -2).shape, jnp.float32)  # dK^T, dV^T: [B, K, D, bk]
    if n_q == 1:
      d_q, d_k, d_v = query_tile(0, (d_q, zeros, zeros))
    else:
      d_q, d_k, d_v = jax.lax.fori_loop(0, n_q, query_tile, (d_q, zeros, zeros))
    return d_q, (d_k, d_v)

  d_q, (d_k, d_v) = jax.lax.scan(key_tile, jnp.zeros(q_t.shape, jnp.float32),
                                 (k_t, v_t, kv_seg_t, kv_idx_t, live.T))
  d_q = _untile(d_q, 3, q_len)
  # [n_k, B, K, D, bk] -> [B, S, K, D]
  merge = lambda x: jnp.swapaxes(_untile(jnp.swapaxes(x, -1, -2), 2, kv_len), 1, 2)  # noqa: E731
  return (d_q.astype(q.dtype), merge(d_k).astype(key.dtype), merge(d_v).astype(value.dtype),
          None, None, None, None)


_attention.defvjp(_attention_fwd, _attention_bwd)

# Measured on CPU (`benchmarks/attention.py --iters 5 --blocks ...`, 2 cores, fwd+bwd): the causal
# LLM shape [4, 1024, 8 (2 KV), 64] is fastest at 128 x 256 tiles (202 ms; 256 x 128: 237,
# 128 x 128: 228, 128 x 512: 242); the encoder's bidirectional shape [4, 1500, 8, 64] is
# fastest with all queries in one tile, every key block computed (a cond per tile pair and
# query tiling cost more there than they save: only key tiles padded in every clip could be
# skipped), and key blocks of 256-384 (711 / 698 ms; 128: 823, 512: 721).
DEFAULT_BLOCK_Q = 128
DEFAULT_BLOCK_K = 256


def flash_attention(query, key, value, q_segments, kv_segments, q_index, kv_index, *,
                    causal: bool, scale: float, block_q: int = DEFAULT_BLOCK_Q,
                    block_k: int = DEFAULT_BLOCK_K, keys_only: bool = False):
  """Attention output [B, T, H, D] for queries [B, T, H, D], keys / values [B, S, K, D].

  A query attends a key when their segment ids ([B, T] / [B, S]) are equal and non-zero and,
  with `causal`, the key's index ([B, S]) is at most the query's ([B, T]).

  Causal attention is tiled over queries (`block_q`) and keys (`block_k`), and only the tile
  pairs that may attend are computed (`_live_tiles`): about half of them for one sequence per
  row, fewer for packed rows and padding. Bidirectional attention keeps all queries in one tile
  and visits every key block.

  keys_only: the caller promises that every query's segment id is 1 and that keys are in
  segment 1 or 0 (padding), as `attention.key_padding_mask` builds them; the mask is then the
  keys' validity alone, broadcast over the queries (bidirectional only).
  """
  if keys_only and causal:
    raise ValueError("flash_attention: keys_only is for bidirectional attention (causal=False)")
  batch, q_len, heads, head_dim = query.shape
  kv_heads = key.shape[2]
  groups = heads // kv_heads
  block_q = max(1, min(block_q, q_len)) if causal else q_len
  block_k = max(1, min(block_k, key.shape[1]))
  q = jnp.transpose(query.reshape(batch, q_len, kv_heads, groups, head_dim), (0, 2, 3, 1, 4))
  as_int = lambda x: jnp.asarray(x, jnp.int32)  # noqa: E731
  out = _attention(q, key, value, as_int(q_segments), as_int(kv_segments), as_int(q_index),
                   as_int(kv_index), bool(causal), float(scale), int(block_q), int(block_k),
                   bool(keys_only))
  return jnp.transpose(out, (0, 3, 1, 2, 4)).reshape(batch, q_len, heads, head_dim)
