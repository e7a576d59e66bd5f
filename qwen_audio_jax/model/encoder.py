"""The audio encoder: Whisper's encoder as Qwen-Audio uses it.

log-mel [N, n_mels, F] (F <= 3000: 30 s or an audio bucket) -> conv1 + GELU -> conv2 (stride 2) + GELU -> + sinusoidal positions
-> pre-LN transformer blocks (frames beyond a clip's valid length are masked out of the attention
keys) -> average pool (stride 2: one frame per 40 ms) -> ln_post -> projection to the LLM width.
Qwen-Audio also learns two embeddings (audio-bos, audio-eos) that frame each clip in the LLM
input. With `avg_pool=False` and `output_dim=None` this is exactly Whisper's encoder.
"""

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from qwen_audio_jax import sharding
from qwen_audio_jax.audio import lengths as audio_lengths
from qwen_audio_jax.config import QwenAudioConfig
from qwen_audio_jax.model import attention
from qwen_audio_jax.model.layers import (DenseGeneral, LayerNorm, dtype_of, normal_init,
                                         LayerStack, zeros_init)


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> np.ndarray:
  """Whisper's fixed positional embedding: [sin | cos] over log-spaced timescales."""
  log_increment = np.log(max_timescale) / (channels // 2 - 1)
  inv_timescales = np.exp(-log_increment * np.arange(channels // 2))
  scaled = np.arange(length)[:, None] * inv_timescales[None, :]
  return np.concatenate([np.sin(scaled), np.cos(scaled)], axis=1).astype(np.float32)


class EncoderBlock(nn.Module):
  """Pre-LN residual block: x + attn(attn_ln(x)); x + mlp(mlp_ln(x))."""
  config: QwenAudioConfig

  @nn.compact
  def __call__(self, x, mask):
    cfg = self.config.encoder
    dtype, pdtype = dtype_of(self.config.dtype), dtype_of(self.config.param_dtype)
    dense = lambda name, features, axes, **kw: DenseGeneral(  # noqa: E731
        features, axes, dtype=dtype, param_dtype=pdtype, name=name, **kw)
    heads, head_dim = cfg.heads, cfg.head_dim

    h = LayerNorm(cfg.layer_norm_eps, dtype, pdtype, name="attn_ln")(x)
    q = dense("query", (heads, head_dim), ("embed", "heads", "head_dim"),
              name_tag="query_proj")(h)
    k = dense("key", (heads, head_dim), ("embed", "heads", "head_dim"), use_bias=False,
              name_tag="key_proj")(h)
    v = dense("value", (heads, head_dim), ("embed", "heads", "head_dim"),
              name_tag="value_proj")(h)
    q = sharding.constrain(q, ("act_batch", "act_length", "act_heads", None))
    o = attention.attend(q, k, v, mask, impl=self.config.attention_impl)
    o = dense("out", (cfg.width,), ("heads", "head_dim", "embed"), in_axes=2,
              name_tag="attention_out")(o)
    x = x + o

    h = LayerNorm(cfg.layer_norm_eps, dtype, pdtype, name="mlp_ln")(x)
    h = dense("fc1", (cfg.mlp_dim,), ("embed", "mlp"), name_tag="mlp_hidden")(h)
    h = jax.nn.gelu(h, approximate=False)
    h = sharding.constrain(h, ("act_batch", "act_length", "act_mlp"))
    h = dense("fc2", (cfg.width,), ("mlp", "embed"))(h)
    x = x + h
    return sharding.constrain(x, ("act_batch", "act_length", "act_embed")), None


class AudioEncoder(nn.Module):
  """Encodes a batch of clips.

  Call with mel [N, n_mels, F] and the clips' valid lengths in samples [N] (None: all full).
  Returns (frames [N, F', output_width], frame_counts [N]) where frame_counts are the valid
  output frames of each clip (audio tokens after pooling, or encoder frames without pooling).
  """
  config: QwenAudioConfig

  @nn.compact
  def __call__(self, mel, num_samples: Optional[jax.Array] = None):
    cfg = self.config.encoder
    dtype, pdtype = dtype_of(self.config.dtype), dtype_of(self.config.param_dtype)
    n_clips, n_mels, n_frames = mel.shape
    if n_mels != cfg.n_mels:
      raise ValueError(f"audio encoder expects {cfg.n_mels} mel bins, got mel of shape {mel.shape}")
    n_out = (n_frames - 1) // 2 + 1
    if n_out > cfg.n_ctx:
      raise ValueError(f"{n_frames} mel frames give {n_out} positions, more than n_ctx={cfg.n_ctx}")

    if num_samples is None:
      valid = jnp.full((n_clips,), n_out, jnp.int32)
    else:
      valid = audio_lengths.encoder_frames(num_samples.astype(jnp.int32))
    x = jnp.swapaxes(mel, 1, 2).astype(dtype)  # [N, F, n_mels]: channels last
    if cfg.cut_mel_to_batch_max and num_samples is not None:
      # Same numbers as cutting the batch to 2 * T_max mel frames: zero what lies beyond.
      keep = jnp.arange(n_frames) < 2 * jnp.max(valid)
      x = jnp.where(keep[None, :, None], x, 0)
    x = sharding.constrain(x, ("act_batch", "act_length", None))

    conv = lambda name, features, stride: nn.Conv(  # noqa: E731
        features, (3,), strides=(stride,), padding=((1, 1),), dtype=dtype, param_dtype=pdtype,
        kernel_init=normal_init(0.02, ("conv_window", None, "embed")),
        bias_init=zeros_init(("embed",)), name=name)
    x = jax.nn.gelu(conv("conv1", cfg.width, 1)(x), approximate=False)
    x = jax.nn.gelu(conv("conv2", cfg.width, 2)(x), approximate=False)

    positions = self.param(
        "positional_embedding",
        nn.with_logical_partitioning(lambda *_: jnp.asarray(sinusoids(cfg.n_ctx, cfg.width)),
                                     ("positions", "embed")),
        (cfg.n_ctx, cfg.width), pdtype)
    x = x + positions[:n_out].astype(dtype)
    frame_valid = jnp.arange(n_out)[None, :] < valid[:, None]  # [N, T]
    if cfg.cut_mel_to_batch_max:
      x = jnp.where(frame_valid[..., None], x, 0)
    x = sharding.constrain(x, ("act_batch", "act_length", "act_embed"))

    # Keys beyond a clip's valid frames are hidden; an empty slot keeps one key so no row is
    # fully masked (its output is never used).
    keys = frame_valid | (jnp.arange(n_out)[None, :] == 0)
    mask = attention.key_padding_mask(keys, n_out)
    x = LayerStack(EncoderBlock, cfg.depth, self.config.scan_layers, self.config.remat_policy,
                   {"config": self.config}, name="blocks")(x, mask)

    counts = valid
    if cfg.avg_pool:
      pooled = n_out // 2
      x = x[:, :2 * pooled].reshape(n_clips, pooled, 2, cfg.width).mean(axis=2)
      counts = audio_lengths.audio_tokens_from_encoder_frames(valid)
    x = LayerNorm(cfg.layer_norm_eps, dtype, pdtype, name="ln_post")(x)
    if cfg.output_dim is not None:
      x = DenseGeneral((cfg.output_dim,), ("embed", "embed"), dtype=dtype,
                       param_dtype=pdtype, name="proj")(x)
    counts = jnp.maximum(counts, 0)
    return sharding.constrain(x, ("act_batch", "act_length", "act_embed")), counts
