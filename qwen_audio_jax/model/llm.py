"""The decoder LLM: Qwen-7B / Qwen2.

Token embeddings -> N x [RMSNorm -> causal self-attention with rotary embeddings (QKV bias,
grouped KV heads) -> residual -> RMSNorm -> SwiGLU MLP -> residual] -> RMSNorm -> LM head.
Qwen-7B's long-context options (dynamic NTK rotary scaling, log-n attention scaling) apply, as
in the reference, only at inference (`train=False`) and only past `seq_length` tokens.

Decoding keeps a KV cache in the 'cache' collection: call with `decode=True` and
`mutable=['cache']` after `init_cache`; each call appends its tokens at the cache index.
"""

import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from qwen_audio_jax import sharding
from qwen_audio_jax.config import QwenAudioConfig
from qwen_audio_jax.model import attention
from qwen_audio_jax.model.layers import (DenseGeneral, RMSNorm, apply_rotary, dtype_of,
                                         LayerStack, normal_init, rotary_frequencies)


def ntk_alpha(true_lengths, seq_length: int):
  """Qwen's dynamic-NTK factor: 2^ceil(log2(L / seq_length) + 1) - 1, at least 1."""
  ratio = jnp.maximum(true_lengths.astype(jnp.float32), 1.0) / seq_length
  alpha = 2.0 ** jnp.ceil(jnp.log2(ratio) + 1.0) - 1.0
  return jnp.maximum(alpha, 1.0)


def logn_scale(positions, seq_length: int):
  """Qwen's log-n query scale: log_{seq_length}(p + 1) past the training length, else 1."""
  p = positions.astype(jnp.float32) + 1.0
  return jnp.where(p > seq_length, jnp.log(p) / math.log(seq_length), 1.0)


class DecoderBlock(nn.Module):
  """One pre-norm transformer block of the LLM."""
  config: QwenAudioConfig
  decode: bool = False

  @nn.compact
  def __call__(self, x, positions, mask, inv_freq, query_scale, cache_index):
    cfg = self.config.llm
    dtype, pdtype = dtype_of(self.config.dtype), dtype_of(self.config.param_dtype)
    dense = lambda name, features, axes, **kw: DenseGeneral(  # noqa: E731
        features, axes, dtype=dtype, param_dtype=pdtype, name=name, **kw)

    h = RMSNorm(cfg.rms_norm_eps, dtype, pdtype, name="attn_norm")(x)
    q = dense("query", (cfg.heads, cfg.head_dim), ("embed", "heads", "head_dim"),
              use_bias=cfg.qkv_bias, name_tag="query_proj")(h)
    k = dense("key", (cfg.kv_heads, cfg.head_dim), ("embed", "kv_heads", "head_dim"),
              use_bias=cfg.qkv_bias, name_tag="key_proj")(h)
    v = dense("value", (cfg.kv_heads, cfg.head_dim), ("embed", "kv_heads", "head_dim"),
              use_bias=cfg.qkv_bias, name_tag="value_proj")(h)
    q = apply_rotary(q, positions, inv_freq)
    k = apply_rotary(k, positions, inv_freq)
    if query_scale is not None:
      q = (q.astype(jnp.float32) * query_scale[:, :, None, None]).astype(q.dtype)
    q = sharding.constrain(q, ("act_batch", "act_length", "act_heads", None))
    k = sharding.constrain(k, ("act_batch", "act_length", "act_kv_heads", None))
    v = sharding.constrain(v, ("act_batch", "act_length", "act_kv_heads", None))

    if self.decode:
      cached_k = self.variable("cache", "cached_key", jnp.zeros, (), k.dtype)
      cached_v = self.variable("cache", "cached_value", jnp.zeros, (), v.dtype)
      start = (0, cache_index, 0, 0)
      cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k.astype(cached_k.value.dtype),
                                                    start)
      cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v.astype(cached_v.value.dtype),
                                                    start)
      k, v = cached_k.value, cached_v.value

    o = attention.attend(q, k, v, mask, impl=self.config.attention_impl)
    o = dense("out", (cfg.width,), ("heads", "head_dim", "embed"), in_axes=2, use_bias=False,
              name_tag="attention_out")(o)
    x = x + o

    h = RMSNorm(cfg.rms_norm_eps, dtype, pdtype, name="mlp_norm")(x)
    gate = dense("gate", (cfg.mlp_dim,), ("embed", "mlp"), use_bias=False,
                 name_tag="mlp_hidden")(h)
    up = dense("up", (cfg.mlp_dim,), ("embed", "mlp"), use_bias=False, name_tag="mlp_hidden")(h)
    h = sharding.constrain(jax.nn.silu(gate) * up, ("act_batch", "act_length", "act_mlp"))
    h = dense("down", (cfg.width,), ("mlp", "embed"), use_bias=False)(h)
    x = x + h
    return sharding.constrain(x, ("act_batch", "act_length", "act_embed")), None


class DecodeState(nn.Module):
  """Bookkeeping of the KV cache shared by all layers: write index, segment ids, NTK factor."""
  seq_length: int

  @nn.compact
  def __call__(self, segment_ids):
    """Appends `segment_ids` [B, T]; returns (cache index, all cached segment ids, NTK alpha)."""
    if not self.has_variable("cache", "segment_ids"):
      raise ValueError("decode=True needs a cache: pass {'cache': model.init_cache(...)} and "
                       "mutable=['cache']")
    segments = self.variable("cache", "segment_ids", jnp.zeros, (), jnp.int32)
    index = self.variable("cache", "index", jnp.zeros, (), jnp.int32)
    alpha = self.variable("cache", "ntk_alpha", jnp.ones, (), jnp.float32)
    start = index.value
    segments.value = jax.lax.dynamic_update_slice(
        segments.value, segment_ids.astype(jnp.int32), (0, start))
    # The NTK factor is fixed at prefill from each row's true length, as in the reference.
    prefill_alpha = ntk_alpha(jnp.sum(segment_ids != 0, axis=1), self.seq_length)
    alpha.value = jnp.where(start == 0, prefill_alpha, alpha.value)
    index.value = start + segment_ids.shape[1]
    return start, segments.value, alpha.value


class QwenLM(nn.Module):
  """Decoder-only LLM. `embed` turns ids into input embeddings (the audio splice happens between
  the two calls); `__call__` runs the blocks over embeddings and returns logits."""
  config: QwenAudioConfig

  def setup(self):
    cfg = self.config.llm
    pdtype = dtype_of(self.config.param_dtype)
    self.embedding = self.param("embed", normal_init(0.02, ("vocab", "embed")),
                                (cfg.vocab_size, cfg.width), pdtype)
    if not cfg.tie_embeddings:
      self.lm_head = self.param("lm_head", normal_init(0.02, ("embed", "vocab")),
                                (cfg.width, cfg.vocab_size), pdtype)
    self.layers = LayerStack(DecoderBlock, cfg.depth, self.config.scan_layers,
                             self.config.remat_policy, {"config": self.config})
    self.final_norm = RMSNorm(cfg.rms_norm_eps, dtype_of(self.config.dtype), pdtype)
    self.decode_state = DecodeState(cfg.seq_length)

  def embed(self, input_ids):
    x = jnp.take(self.embedding, input_ids, axis=0).astype(dtype_of(self.config.dtype))
    return sharding.constrain(x, ("act_batch", "act_length", "act_embed"))

  def logits(self, x):
    head = self.embedding.T if self.config.llm.tie_embeddings else self.lm_head
    return project_to_vocab(self.final_norm(x), head)

  def __call__(self, embeds, positions, segment_ids, *, train: bool = False,
               decode: bool = False, return_hidden: bool = False):
    """Logits [B, T, V] (float32) for input embeddings [B, T, W].

    positions: [B, T] rotary positions. segment_ids: [B, T], 0 = padding; equal non-zero ids
    attend to each other causally (packing). In decode mode the cache holds earlier tokens.
    return_hidden: the final-normed hidden states [B, T, W] instead of logits, for losses that
    project them to the vocabulary a chunk at a time (`project_to_vocab`, `output_head`).
    """
    cfg = self.config.llm
    batch, length = segment_ids.shape
    index = jnp.broadcast_to(jnp.arange(length)[None, :], (batch, length))
    cache_index = None
    if decode:
      cache_index, kv_segments, alpha = self.decode_state(segment_ids)
      kv_index = jnp.broadcast_to(jnp.arange(kv_segments.shape[1])[None, :], kv_segments.shape)
      mask = attention.causal_segment_mask(segment_ids, kv_segments, index + cache_index,
                                           kv_index)
    else:
      mask = attention.causal_segment_mask(segment_ids, segment_ids, index, index)
      alpha = ntk_alpha(jnp.sum(segment_ids != 0, axis=1), cfg.seq_length)

    long_context = not train
    inv_freq = rotary_frequencies(cfg.head_dim, cfg.rope_theta,
                                  alpha if (cfg.use_dynamic_ntk and long_context) else None)
    query_scale = (logn_scale(positions, cfg.seq_length)
                   if (cfg.use_logn_attn and long_context) else None)
    x = self.layers(embeds, positions, mask, inv_freq, query_scale, cache_index, decode=decode)
    if return_hidden:
      return self.final_norm(x)
    return self.logits(x)


def project_to_vocab(hidden: jax.Array, head: jax.Array) -> jax.Array:
  """Final-normed hidden states [B, T, W] x output head [W, V] -> float32 logits [B, T, V]."""
  logits = jnp.einsum("bte,ev->btv", hidden, head.astype(hidden.dtype),
                      preferred_element_type=jnp.float32)
  return sharding.constrain(logits, ("act_batch", "act_length", "act_vocab"))


def output_head(llm_params, config: QwenAudioConfig) -> jax.Array:
  """The [W, V] output projection in an LLM parameter tree (the embedding when tied)."""
  return llm_params["embed"].T if config.llm.tie_embeddings else llm_params["lm_head"]


def init_cache(config: QwenAudioConfig, batch_size: int, max_length: int):
  """A zero KV cache (the 'cache' collection) for `batch_size` rows of `max_length` tokens."""
  cfg = config.llm
  dtype = dtype_of(config.dtype)
  kv_shape = (cfg.depth, batch_size, max_length, cfg.kv_heads, cfg.head_dim)
  if config.scan_layers:
    layers = {"block": {"cached_key": jnp.zeros(kv_shape, dtype), "cached_value": jnp.zeros(kv_shape, dtype)}}
  else:
    layers = {f"block_{i}": {"cached_key": jnp.zeros(kv_shape[1:], dtype),
                             "cached_value": jnp.zeros(kv_shape[1:], dtype)} for i in range(cfg.depth)}
  return {
      "decode_state": {
          "segment_ids": jnp.zeros((batch_size, max_length), jnp.int32),
          "index": jnp.zeros((), jnp.int32),
          "ntk_alpha": jnp.ones((batch_size,), jnp.float32),
      },
      "layers": layers,
  }
