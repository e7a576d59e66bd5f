"""Small building blocks shared by the audio encoder and the LLM.

Every parameter is created through `param_with_axes` style initialisers carrying logical axis names
(see qwen_audio_jax/sharding.py), and layer norms compute their variance the exact way
(mean of squared deviations), which the float32 parity tests against PyTorch need.
"""

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from qwen_audio_jax.config import DTYPES, REMAT_POLICIES


def dtype_of(name: str) -> jnp.dtype:
  """The jnp dtype of a model-config dtype name (one of `qwen_audio_jax.config.DTYPES`)."""
  if name not in DTYPES:
    raise ValueError(f"dtype {name!r} is not one of {DTYPES}")
  return jnp.dtype(name)


def normal_init(stddev: float, axes: Sequence[Optional[str]]):
  return nn.with_logical_partitioning(nn.initializers.normal(stddev), tuple(axes))


def zeros_init(axes):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), tuple(axes))


def ones_init(axes):
  return nn.with_logical_partitioning(nn.initializers.ones_init(), tuple(axes))


class DenseGeneral(nn.Module):
  """x @ kernel (+ bias), with named kernel axes; `in_axes` input dims are contracted."""
  features: Sequence[int]
  kernel_axes: Sequence[Optional[str]]
  in_axes: int = 1
  use_bias: bool = True
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  init_std: float = 0.02
  name_tag: Optional[str] = None  # activation name for remat policies

  @nn.compact
  def __call__(self, x):
    features = tuple(self.features)
    in_shape = x.shape[-self.in_axes:]
    kernel = self.param("kernel", normal_init(self.init_std, self.kernel_axes),
                        in_shape + features, self.param_dtype)
    contract = tuple(range(x.ndim - self.in_axes, x.ndim))
    y = jax.lax.dot_general(
        x.astype(self.dtype), kernel.astype(self.dtype),
        ((contract, tuple(range(self.in_axes))), ((), ())))
    if self.use_bias:
      bias_axes = tuple(self.kernel_axes[self.in_axes:])
      bias = self.param("bias", zeros_init(bias_axes), features, self.param_dtype)
      y = y + bias.astype(self.dtype)
    if self.name_tag:
      y = checkpoint_name(y, self.name_tag)
    return y


class LayerNorm(nn.Module):
  """LayerNorm with scale and bias, statistics in float32."""
  epsilon: float = 1e-5
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  axis_name: str = "embed"

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    scale = self.param("scale", ones_init((self.axis_name,)), (width,), self.param_dtype)
    bias = self.param("bias", zeros_init((self.axis_name,)), (width,), self.param_dtype)
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon)
    return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(self.dtype)


class RMSNorm(nn.Module):
  """RMSNorm (Qwen / Qwen2): x / rms(x) * scale, statistics in float32."""
  epsilon: float = 1e-6
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", ones_init(("embed",)), (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.epsilon)
    return (y.astype(self.dtype) * scale.astype(self.dtype))


def rotary_frequencies(head_dim: int, theta, ntk_alpha=None):
  """Inverse frequencies [.., head_dim // 2]; dynamic NTK scales the base per row."""
  exponent = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
  base = jnp.asarray(theta, jnp.float32)
  if ntk_alpha is not None:
    base = base * ntk_alpha.astype(jnp.float32)[:, None] ** (head_dim / (head_dim - 2))
    return 1.0 / (base ** exponent[None, :])  # [B, D/2]
  return 1.0 / (base ** exponent)


def apply_rotary(x, positions, inv_freq):
  """Rotary embedding, rotate-half convention (as Qwen and Qwen2). x: [B, T, H, D]."""
  if inv_freq.ndim == 1:
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, D/2]
  else:
    angles = positions.astype(jnp.float32)[..., None] * inv_freq[:, None, :]
  angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
  cos, sin = jnp.cos(angles), jnp.sin(angles)
  x32 = x.astype(jnp.float32)
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
  return (x32 * cos + rotated * sin).astype(x.dtype)


def remat_policy(name: str):
  """Maps a policy name of the config (`qwen_audio_jax.config.REMAT_POLICIES`) to a
  jax.checkpoint policy (None: no rematerialisation)."""
  if name not in REMAT_POLICIES:
    raise ValueError(f"remat_policy {name!r} is not one of {REMAT_POLICIES}")
  policies = {
      "none": None,
      "full": jax.checkpoint_policies.nothing_saveable,
      "dots": jax.checkpoint_policies.checkpoint_dots,
      "dots_with_no_batch_dims": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
      "save_qkv_proj": jax.checkpoint_policies.save_only_these_names(
          "query_proj", "key_proj", "value_proj"),
      "minimal": jax.checkpoint_policies.save_only_these_names(
          "query_proj", "key_proj", "value_proj", "attention_out", "mlp_hidden"),
  }
  return policies[name]


class LayerStack(nn.Module):
  """`depth` copies of `block_cls`, scanned (compile time flat in depth) or unrolled.

  Blocks take (x, *args) and return (x, None), the carry convention of `nn.scan`; `args` are
  the same for every block (masks, positions). With scan the block parameters carry a leading
  'layers' axis under `block`; unrolled they are `block_0` ... `block_{depth-1}`.
  """
  block_cls: Any
  depth: int
  scan: bool = True
  remat: str = "none"
  block_kwargs: Any = None

  @nn.compact
  def __call__(self, x, *args, **call_kwargs):
    block_cls = self.block_cls
    if self.remat != "none":
      block_cls = nn.remat(block_cls, policy=remat_policy(self.remat), prevent_cse=not self.scan)
    kwargs = dict(self.block_kwargs or {}, **call_kwargs)
    if self.scan:
      scanned = nn.scan(
          block_cls, variable_axes={"params": 0, "cache": 0},
          split_rngs={"params": True}, in_axes=(nn.broadcast,) * len(args), length=self.depth,
          metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = scanned(name="block", **kwargs)(x, *args)
      return x
    for i in range(self.depth):
      x, _ = block_cls(name=f"block_{i}", **kwargs)(x, *args)
    return x
