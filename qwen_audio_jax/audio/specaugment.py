"""SpecAugment on log-mel batches, on device inside the jitted train step.

Follows Park et al. 2019 ("SpecAugment") for frequency masks, time masks and time warping, and
Park et al. 2020 ("SpecAugment on large scale datasets") for adaptive time masks, whose count
and maximum width scale with each clip's valid length, so 2 s and 30 s clips get comparable
masking density.

Every clip of a Whisper-style batch is padded to 3000 frames; only a clip's first
`valid_frames[b]` frames are real audio. Augmentation stays strictly inside that region: the
padding frames come out bit-identical, so the model's padding handling and any later
masking by valid length see exactly what they would without augmentation.

Named policies (`POLICIES`, chosen with `policy(name)`): the LibriSpeech policies of Park et al.
2019, Table 1 ("SpecAugment: A Simple Data Augmentation Method for Automatic Speech Recognition",
arXiv:1904.08779), with their symbols mapped onto the fields below:

    policy  W (max_time_warp)  F (max_freq_width)  mF  T (max_time_width)  p (ratio)  mT
    LB      80                 27                  1   100                 1.0        1
    LD      80                 27                  2   100                 1.0        2

W, F and T are in feature frames / mel bins; Whisper's 10 ms hop matches the paper's. 'custom'
starts from the `SpecAugmentConfig` defaults instead. Any field given explicitly overrides the
policy's value (e.g. LB without time warp).

Masked value: by default the clip's mean over its valid region (one scalar per clip). The
original paper masks with zero on mean-normalised features, i.e. with the mean; Whisper
features are not mean-normalised ((log10 + 4) / 4 puts zero at an arbitrary loudness), so zero
would paint a fixed, fairly loud level into quiet clips and an unnaturally quiet one into loud
clips. The clip mean keeps the masked region at the clip's own average level and carries no
information. `mask_value="zero"` is available for recipes that want it.
"""

import dataclasses
from typing import Tuple

import jax
import jax.numpy as jnp

MASK_VALUES = ("mean", "zero")


@dataclasses.dataclass(frozen=True)
class SpecAugmentConfig:
  """SpecAugment policy; hashable, so it can be a static argument of a jitted function.

  Defaults: the LibriSpeech "LD" masks of Park et al. 2019 (2 frequency masks of up to 27 bins,
  2 time masks of up to 100 frames = 1 s), no time warp, fixed time-mask count and width.

  Attributes:
    num_freq_masks: frequency masks per clip.
    max_freq_width: each frequency mask covers f ~ U{0..max_freq_width} mel bins (capped at
      n_mels).
    num_time_masks: time masks per clip; with `time_masks_per_frame` > 0, the upper bound of the
      adaptive count.
    max_time_width: each time mask covers t ~ U{0..W} frames, W = max_time_width (further capped
      by `max_time_width_ratio`).
    time_masks_per_frame: adaptive multiplicity p_M: a clip of L valid frames gets
      min(num_time_masks, floor(p_M * L)) time masks. 0 keeps the count fixed.
    max_time_width_ratio: adaptive size p_S: W = min(max_time_width, floor(p_S * L)). 1.0 only
      keeps masks inside the clip.
    max_time_warp: time warp window W in frames (0 disables): a random anchor frame inside the
      valid region moves by up to W frames and the valid region is stretched piecewise linearly
      around it (linear interpolation between frames); its first and last frames stay fixed.
    mask_value: "mean" (the clip's mean over its valid region; the default, see module doc) or
      "zero".
    enabled: False turns `spec_augment` into the identity (e.g. for evaluation).
  """
  num_freq_masks: int = 2
  max_freq_width: int = 27
  num_time_masks: int = 2
  max_time_width: int = 100
  time_masks_per_frame: float = 0.0
  max_time_width_ratio: float = 1.0
  max_time_warp: int = 0
  mask_value: str = "mean"
  enabled: bool = True

  def __post_init__(self):
    for name in ("num_freq_masks", "max_freq_width", "num_time_masks", "max_time_width",
                 "max_time_warp"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"SpecAugmentConfig.{name}: expected an int >= 0, got {value!r}")
    for name in ("time_masks_per_frame", "max_time_width_ratio"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(
            f"SpecAugmentConfig.{name}: expected a fraction in [0, 1], got {value!r}")
    if self.mask_value not in MASK_VALUES:
      raise ValueError(
          f"SpecAugmentConfig.mask_value: expected one of {MASK_VALUES}, got {self.mask_value!r}")
    if not isinstance(self.enabled, bool):
      raise ValueError(f"SpecAugmentConfig.enabled: expected a bool, got {self.enabled!r}")

  @property
  def is_identity(self) -> bool:
    """True when the policy can never change a feature."""
    masks = (self.num_freq_masks > 0 and self.max_freq_width > 0) or (
        self.num_time_masks > 0 and self.max_time_width > 0 and self.max_time_width_ratio > 0)
    return not self.enabled or not (masks or self.max_time_warp > 0)


# Park et al. 2019, Table 1 (arXiv:1904.08779): LibriSpeech basic (LB) and double (LD).
POLICIES = {
    "LB": dict(max_time_warp=80, max_freq_width=27, num_freq_masks=1, max_time_width=100,
               max_time_width_ratio=1.0, num_time_masks=1, time_masks_per_frame=0.0),
    "LD": dict(max_time_warp=80, max_freq_width=27, num_freq_masks=2, max_time_width=100,
               max_time_width_ratio=1.0, num_time_masks=2, time_masks_per_frame=0.0),
}
CUSTOM = "custom"
POLICY_NAMES = tuple(POLICIES) + (CUSTOM,)


def policy(name: str, **fields) -> SpecAugmentConfig:
  """The named policy ('LB', 'LD') with `fields` overriding its values, or 'custom': the
  `SpecAugmentConfig` defaults with `fields` set. Fields that are None keep the policy's value."""
  if name not in POLICY_NAMES:
    raise ValueError(f"SpecAugment policy {name!r}: expected one of {POLICY_NAMES}")
  known = {f.name for f in dataclasses.fields(SpecAugmentConfig)}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise ValueError(f"SpecAugmentConfig.{unknown[0]}: unknown field; expected one of "
                     f"{sorted(known)}")
  values = dict(POLICIES.get(name, {}))
  values.update({k: v for k, v in fields.items() if v is not None})
  return SpecAugmentConfig(**values)


def from_config(specaugment) -> SpecAugmentConfig:
  """The policy of a training config's `specaugment` dict: `policy` plus field overrides."""
  fields = dict(specaugment)
  return policy(fields.pop("policy", CUSTOM), **fields)


def _random_spans(key: jax.Array, count: int, max_width: jax.Array, extent: jax.Array
                  ) -> Tuple[jax.Array, jax.Array]:
  """`count` spans [start, start + width): width ~ U{0..max_width}, start ~ U{0..extent - width}."""
  width_key, start_key = jax.random.split(key)
  max_width = jnp.minimum(max_width, extent)
  width = jax.random.randint(width_key, (count,), 0, max_width + 1)
  start = jax.random.randint(start_key, (count,), 0, extent - width + 1)
  return start, width


def _span_mask(start: jax.Array, width: jax.Array, active: jax.Array, size: int) -> jax.Array:
  """[size] bool: positions covered by any active span."""
  positions = jnp.arange(size)[None, :]
  covered = (positions >= start[:, None]) & (positions < (start + width)[:, None])
  return jnp.any(covered & active[:, None], axis=0)


def _time_warp(key: jax.Array, mel: jax.Array, valid: jax.Array, max_warp: int) -> jax.Array:
  """Piecewise-linear time warp of mel [n_mels, T] inside its first `valid` frames (L).

  An anchor frame a ~ U{W + 1 .. L - W - 2} moves to m = a + d, d ~ U{-W .. W}; output frame
  t <= m reads input position t * a / m and later frames map [m, L - 1] onto [a, L - 1], with
  linear interpolation between neighbouring frames. The first and last valid frames stay in
  place and nothing is read from the padding. Clips with L < 2W + 3 are left alone (no room for
  an anchor).
  """
  num_frames = mel.shape[-1]
  anchor_key, shift_key = jax.random.split(key)
  can_warp = valid >= 2 * max_warp + 3
  anchor = jax.random.randint(anchor_key, (), max_warp + 1,
                              jnp.maximum(valid - max_warp - 1, max_warp + 2))
  shift = jnp.where(can_warp, jax.random.randint(shift_key, (), -max_warp, max_warp + 1), 0)
  last = jnp.maximum(valid - 1, 1).astype(jnp.float32)
  anchor_f = anchor.astype(jnp.float32)
  moved = anchor_f + shift.astype(jnp.float32)
  t = jnp.arange(num_frames, dtype=jnp.float32)
  before = t * anchor_f / jnp.maximum(moved, 1.0)
  after = last - (last - t) * (last - anchor_f) / jnp.maximum(last - moved, 1.0)
  source = jnp.clip(jnp.where(t <= moved, before, after), 0.0, last)
  lower = jnp.floor(source).astype(jnp.int32)
  upper = jnp.minimum(lower + 1, last.astype(jnp.int32))
  frac = (source - lower.astype(jnp.float32)).astype(mel.dtype)
  warped = mel[:, lower] * (1 - frac) + mel[:, upper] * frac
  inside = (jnp.arange(num_frames) < valid) & (shift != 0)
  return jnp.where(inside[None, :], warped, mel)


def _augment_clip(key: jax.Array, mel: jax.Array, valid: jax.Array, config: SpecAugmentConfig
                  ) -> jax.Array:
  n_mels, num_frames = mel.shape
  valid = jnp.clip(valid.astype(jnp.int32), 0, num_frames)
  warp_key, freq_key, time_key = jax.random.split(key, 3)
  if config.max_time_warp > 0:
    mel = _time_warp(warp_key, mel, valid, config.max_time_warp)
  inside = jnp.arange(num_frames) < valid

  masked = jnp.zeros((n_mels, num_frames), bool)
  if config.num_freq_masks > 0 and config.max_freq_width > 0:
    start, width = _random_spans(freq_key, config.num_freq_masks,
                                 jnp.asarray(config.max_freq_width), jnp.asarray(n_mels))
    active = jnp.ones((config.num_freq_masks,), bool)
    masked |= _span_mask(start, width, active, n_mels)[:, None]
  if config.num_time_masks > 0 and config.max_time_width > 0:
    max_width = jnp.minimum(
        config.max_time_width,
        jnp.floor(config.max_time_width_ratio * valid.astype(jnp.float32)).astype(jnp.int32))
    count = jnp.asarray(config.num_time_masks)
    if config.time_masks_per_frame > 0:
      count = jnp.minimum(count, jnp.floor(
          config.time_masks_per_frame * valid.astype(jnp.float32)).astype(jnp.int32))
    start, width = _random_spans(time_key, config.num_time_masks, max_width, valid)
    active = jnp.arange(config.num_time_masks) < count
    masked |= _span_mask(start, width, active, num_frames)[None, :]
  masked &= inside[None, :]

  if config.mask_value == "mean":
    total = jnp.sum(jnp.where(inside[None, :], mel, 0).astype(jnp.float32))
    fill = (total / jnp.maximum(valid * n_mels, 1).astype(jnp.float32)).astype(mel.dtype)
  else:
    fill = jnp.zeros((), mel.dtype)
  return jnp.where(masked, fill, mel)


def spec_augment(key: jax.Array, mel: jax.Array, valid_frames: jax.Array,
                 config: SpecAugmentConfig) -> jax.Array:
  """Applies SpecAugment to a batch of log-mel features, independently per clip.

  Args:
    key: PRNG key; the same key, inputs and config give the same output.
    mel: [B, n_mels, T] features (any float dtype, kept).
    valid_frames: [B] int, each clip's valid mel frames (`lengths.mel_frames(num_samples)`);
      frames at or beyond it are returned unchanged, bit for bit.
    config: the policy; treat it as static under jit (it is hashable), e.g.
      `jax.jit(spec_augment, static_argnames="config")`.

  Returns:
    The augmented features, same shape and dtype as `mel`.
  """
  if not isinstance(config, SpecAugmentConfig):
    raise TypeError(f"spec_augment: config must be a SpecAugmentConfig, got {type(config)}")
  if mel.ndim != 3:
    raise ValueError(f"spec_augment: mel must be [batch, n_mels, frames], got shape {mel.shape}")
  valid_frames = jnp.asarray(valid_frames)
  if valid_frames.shape != mel.shape[:1]:
    raise ValueError(
        f"spec_augment: valid_frames must be [batch] = [{mel.shape[0]}], got shape "
        f"{valid_frames.shape}")
  if config.is_identity:
    return mel
  keys = jax.random.split(key, mel.shape[0])
  return jax.vmap(lambda k, m, v: _augment_clip(k, m, v, config))(keys, mel, valid_frames)
