"""Flash attention on TPU through JAX's Pallas splash-attention kernel.

`jax.experimental.pallas.ops.tpu.splash_attention` is a fused FlashAttention (Dao et al. 2022)
kernel for TPUs: the [T, S] logits live block by block in VMEM and never reach HBM, and its
backward kernels recompute them from the saved log-sum-exp. It takes one example at a time
([heads, length, head_dim]), a static mask (full or causal, whose all-masked blocks it skips) and
runtime segment ids (a query attends a key of the same segment id). The model's masks map onto
it exactly:
- encoder, bidirectional with key padding: full mask, query segments 1, key segments 1 for the
  clip's valid frames and 0 beyond;
- LLM, causal with packing: causal mask, segment ids as the batch gives them (0 = padding).
Queries whose segment is 0, or that see no key at all, get zeros, as in `attention.attend`.

The kernel tiles the sequence in blocks of a multiple of 128 (TPU lanes), so lengths are padded
up to the block (the encoder's 1,500 frames to 1,536: 3 blocks of 512, 2.4% padding) with
segment ids that no real query shares; the padding is sliced off. Head dims need no padding
(the kernel's blocks span the whole head dim; Whisper's 64 compiles as it is). The kernel does
not scale the queries, so `scale` is applied to them first. Its matmuls take bf16 operands with
float32 accumulation: under a global `jax_default_matmul_precision='highest'` Mosaic refuses
bf16 inputs (trace the step under `jax.default_matmul_precision('default')`).

Under a mesh (`sharding.activation_sharding`) the kernel runs inside `shard_map`: one call per
device on its batch rows and heads, since a Pallas call cannot be partitioned by XLA. On CPU,
`interpret=True` runs the same kernel in Pallas's interpreter (the tests).

The causal mask assumes the query and key indices of `attention.MaskInfo` are both 0..T-1 (self
attention: training and scoring). Cached decoding, where they differ, uses another
implementation (`supports`).
"""

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu import splash_attention as splash
from jax.sharding import PartitionSpec as P

from qwen_audio_jax import sharding

LANES = 128  # the kernel's blocks are multiples of this
MAX_BLOCK = 512  # largest tile tried: 512 x 512 logits per step fit VMEM on every TPU generation


def supports(q_len: int, kv_len: int, causal: bool) -> bool:
  """Whether the kernel's static masks express this attention (not cached decoding)."""
  return not causal or q_len == kv_len


def block_size(length: int, max_block: int = MAX_BLOCK) -> int:
  """Largest multiple of 128 up to `max_block` that tiles `length` padded up to a multiple of
  128 (1,500 -> 1,536 = 3 x 512; 2,048 = 4 x 512; 640 = 5 x 128)."""
  if max_block < LANES or max_block % LANES:
    raise ValueError(f"max_block={max_block} must be a positive multiple of {LANES}")
  padded = _round_up(length, LANES)
  return next(b for b in range(max_block, 0, -LANES) if padded % b == 0)


def padded_length(length: int, max_block: int = MAX_BLOCK) -> int:
  return _round_up(length, block_size(length, max_block))


def _round_up(x: int, multiple: int) -> int:
  return -(-x // multiple) * multiple


def _kernel(heads: int, q_len: int, kv_len: int, causal: bool, max_block: int, interpret: bool):
  """The splash kernel for one example of `heads` query heads (its block tables are built with
  numpy at trace time, once per layer trace)."""
  block_q, block_kv = block_size(q_len, max_block), block_size(kv_len, max_block)
  blocks = splash.BlockSizes(
      block_q=block_q, block_kv=block_kv, block_kv_compute=block_kv,
      block_q_dkv=block_q, block_kv_dkv=block_kv, block_kv_dkv_compute=block_kv,
      use_fused_bwd_kernel=True)
  one = (splash.CausalMask((q_len, kv_len)) if causal else splash.FullMask((q_len, kv_len)))
  with jax.ensure_compile_time_eval():  # concrete mask tables, whatever trace builds them first
      return splash.make_splash_mha(splash.MultiHeadMask([one] * heads), block_sizes=blocks,
                                  head_shards=1, q_seq_shards=1, interpret=interpret)


def _local_attention(q, k, v, q_seg, kv_seg, *, causal: bool, max_block: int, interpret: bool):
  """q [B, H, T, D], k / v [B, K, S, D] (padded, scaled), segments [B, T] / [B, S]."""
  kernel = _kernel(q.shape[1], q.shape[2], k.shape[2], causal, max_block, interpret)
  one = lambda q, k, v, qs, ks: kernel(q, k, v, splash.SegmentIds(q=qs, kv=ks))  # noqa: E731
  return jax.vmap(one)(q, k, v, q_seg, kv_seg)


def _specs(q_shape, kv_heads: int) -> tuple[P, P]:
  """shard_map specs of q / k / v [B, heads, len, D] and segments [B, len]: batch and heads split
  as `sharding.constrain` splits them, heads only where query and KV heads split alike (each
  device keeps whole groups)."""
  q_spec = sharding.activation_spec(("act_batch", "act_heads", None, None), q_shape)
  kv_spec = sharding.activation_spec(("act_batch", "act_kv_heads", None, None),
                                     (q_shape[0], kv_heads) + tuple(q_shape[2:]))
  heads = q_spec[1] if q_spec[1] == kv_spec[1] else None
  return P(q_spec[0], heads, None, None), P(q_spec[0], None)


def tpu_flash_attention(query, key, value, q_segments, kv_segments, *, causal: bool,
                        scale: float, max_block: int = MAX_BLOCK,
                        interpret: Optional[bool] = None):
  """Attention output [B, T, H, D] for queries [B, T, H, D] and keys / values [B, S, K, D].

  A query attends a key when their segment ids ([B, T] / [B, S]) are equal and non-zero and, with
  `causal`, the key's position is at most the query's (T == S). `max_block`: the largest tile
  (`block_size`). `interpret`: run the kernel in Pallas's interpreter (default: when the backend
  is not a TPU: the mesh's devices under `sharding.activation_sharding`, else the default
  backend).
  """
  batch, q_len, heads, head_dim = query.shape
  kv_len, kv_heads = key.shape[1], key.shape[2]
  if not supports(q_len, kv_len, causal):
    raise ValueError(f"causal TPU flash attention needs as many queries as keys (self "
                     f"attention), got {q_len} queries and {kv_len} keys")
  mesh = sharding.current_mesh()
  if interpret is None:  # the platform compiled for: the mesh's devices (virtual TPUs too)
    interpret = sharding.compile_platform() != "tpu"
  q_segments = jnp.asarray(q_segments, jnp.int32)
  kv_segments = jnp.asarray(kv_segments, jnp.int32)
  t_pad = padded_length(q_len, max_block) - q_len
  s_pad = padded_length(kv_len, max_block) - kv_len
  # Padded queries take segment -1 and padded keys -2: they never meet a real segment id.
  q_seg = jnp.pad(q_segments, ((0, 0), (0, t_pad)), constant_values=-1)
  kv_seg = jnp.pad(kv_segments, ((0, 0), (0, s_pad)), constant_values=-2)
  # Key segment 0 (padding) must not match query segment 0 (padding queries, zeroed below).
  kv_seg = jnp.where(kv_seg == 0, -2, kv_seg)

  def heads_first(x, pad):  # [B, L, H, D] -> [B, H, L + pad, D]
    return jnp.pad(jnp.swapaxes(x, 1, 2), ((0, 0), (0, 0), (0, pad), (0, 0)))

  q = heads_first((query.astype(jnp.float32) * scale).astype(query.dtype), t_pad)
  k, v = heads_first(key, s_pad), heads_first(value, s_pad)

  local = functools.partial(_local_attention, causal=causal, max_block=max_block,
                            interpret=interpret)
  if mesh is not None:
    qkv_spec, seg_spec = _specs(q.shape, kv_heads)
    local = jax.shard_map(local, mesh=mesh, in_specs=(qkv_spec,) * 3 + (seg_spec,) * 2,
                          out_specs=qkv_spec, check_vma=False)
  out = jnp.swapaxes(local(q, k, v, q_seg, kv_seg), 1, 2)[:, :q_len]  # [B, T, H, D]

  # A query sees a key when its segment is non-zero and occurs among the keys (always, for
  # causal self attention: the query's own position). A fused reduction, no [T, S] array.
  sees = q_segments != 0
  if not causal:
    sees &= jnp.any(q_segments[:, :, None] == kv_segments[:, None, :], axis=-1)
  return jnp.where(sees[:, :, None, None], out, 0).astype(query.dtype)
