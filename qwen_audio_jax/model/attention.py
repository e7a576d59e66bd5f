"""Scaled dot-product attention behind one interface.

`attend` takes queries [B, T, H, D] and keys / values [B, S, K, D] with K dividing H (grouped
KV heads) and the mask as a `MaskInfo` (segment ids and indices; True = may attend: same non-zero
segment and, when causal, key index <= query index) or a dense boolean [B, 1, T, S].
Implementations:
- 'xla' / 'cudnn': `jax.nn.dot_product_attention` (on GPUs 'cudnn' is flash attention);
- 'plain': explicit einsums with the softmax in float32, the easiest path to read and debug;
- 'flash': blockwise attention with an online softmax and its own backward pass, O(T) memory
  on every platform (`flash_attention.py`; needs a `MaskInfo`);
- 'tpu_flash': the Pallas splash-attention kernel on TPUs (`tpu_attention.py`; needs a
  `MaskInfo`; cached decoding, which it cannot express, takes 'xla');
- 'auto': the fastest of these measured on the platform (`resolve_impl`).
Rows whose mask is all False (padding queries) produce zeros rather than NaNs.
"""

from typing import Union

import flax
import jax
import jax.numpy as jnp

from qwen_audio_jax import sharding
from qwen_audio_jax.model import tpu_attention
from qwen_audio_jax.model.flash_attention import flash_attention

_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


@flax.struct.dataclass
class MaskInfo:
  """Who attends whom, without the [B, T, S] mask: segment ids [B, T] / [B, S] (0 = attends
  nothing / is never attended) and, for a causal mask, query and key indices."""
  q_segments: jax.Array
  kv_segments: jax.Array
  q_index: jax.Array
  kv_index: jax.Array
  causal: bool = flax.struct.field(pytree_node=False, default=False)
  # Every query is in segment 1 and keys in 1 or 0 (key padding): 'flash' then builds its
  # per-tile mask from the keys alone.
  keys_only: bool = flax.struct.field(pytree_node=False, default=False)

  def dense(self) -> jax.Array:
    """The [B, 1, T, S] boolean mask."""
    same = ((self.q_segments[:, :, None] == self.kv_segments[:, None, :])
            & (self.q_segments[:, :, None] != 0))
    if self.causal:
      same &= self.kv_index[:, None, :] <= self.q_index[:, :, None]
    return same[:, None]


def causal_segment_mask(q_segments, kv_segments, q_positions_idx, kv_positions_idx) -> MaskInfo:
  """Causal attention within equal non-zero segments (packed rows, the KV cache)."""
  return MaskInfo(q_segments, kv_segments, q_positions_idx, kv_positions_idx, causal=True)


def key_padding_mask(keys_valid: jax.Array, q_len: int) -> MaskInfo:
  """Bidirectional attention to the valid keys ([B, S] bool) from every one of q_len queries."""
  batch, length = keys_valid.shape
  zeros = jnp.zeros((batch, length), jnp.int32)
  return MaskInfo(jnp.ones((batch, q_len), jnp.int32), keys_valid.astype(jnp.int32),
                  jnp.zeros((batch, q_len), jnp.int32), zeros, causal=False, keys_only=True)


def resolve_impl(impl: str, dtype=jnp.float32) -> str:
  """'auto' -> the fastest implementation for this platform and compute dtype (trace time).

  CPU: 'flash' (measured: benchmarks/attention.py); GPU: 'cudnn' (the fused flash kernel) for
  16-bit inputs, which it requires, else 'xla' (measured on an H200 in bf16 at the release's
  sizes: cudnn 2.3-2.4x faster than xla fwd+bwd, 'flash' 0.2-0.7x xla); elsewhere (TPU): 'xla'
  (not measured here).
  The platform is the one compiled for (`sharding.compile_platform`: a virtual TPU slice
  planned from a CPU host gets the TPU choice).
  """
  if impl != "auto":
    return impl
  backend = sharding.compile_platform()
  if backend == "cpu":
    return "flash"
  if backend in ("gpu", "cuda") and jnp.dtype(dtype).itemsize == 2:
    return "cudnn"
  return "xla"


def attend(query, key, value, mask: Union[MaskInfo, jax.Array], *, impl: str = "xla",
           scale=None):
  """Attention output [B, T, H, D]; `scale` defaults to 1 / sqrt(D).

  Its operations carry the name scope 'attention' (profiles and HLO dumps tell them apart:
  benchmarks/profile_step.py)."""
  with jax.named_scope("attention"):
    return _attend(query, key, value, mask, impl=impl, scale=scale)


def _attend(query, key, value, mask, *, impl, scale):
  batch, q_len, heads, head_dim = query.shape
  kv_heads = key.shape[2]
  if heads % kv_heads:
    raise ValueError(f"query heads ({heads}) must be a multiple of key/value heads ({kv_heads})")
  scale = head_dim ** -0.5 if scale is None else scale
  impl = resolve_impl(impl, query.dtype)
  if impl == "flash":
    if not isinstance(mask, MaskInfo):
      raise ValueError("attention impl 'flash' needs a MaskInfo (segment ids), not a dense mask")
    return flash_attention(query, key, value, mask.q_segments, mask.kv_segments, mask.q_index,
                           mask.kv_index, causal=mask.causal, scale=scale,
                           keys_only=mask.keys_only)
  if impl == "tpu_flash":  # Pallas kernel (tpu_attention.py); cached decoding takes 'xla'
    if not isinstance(mask, MaskInfo):
      raise ValueError("attention impl 'tpu_flash' needs a MaskInfo (segment ids), not a dense "
                       "mask")
    if tpu_attention.supports(q_len, key.shape[1], mask.causal):
      return tpu_attention.tpu_flash_attention(query, key, value, mask.q_segments,
                                               mask.kv_segments, causal=mask.causal, scale=scale)
    impl = "xla"
  if isinstance(mask, MaskInfo):
    mask = mask.dense()
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
    raise ValueError(f"attention impl {impl!r} is not one of 'xla', 'cudnn', 'plain', 'flash', "
                     "'tpu_flash', 'auto'")
  # [B,1,T,1] -> [B,T,1,1]: zero the outputs of queries that may attend to nothing.
  return jnp.where(jnp.swapaxes(any_key, 1, 2), out, 0).astype(query.dtype)
