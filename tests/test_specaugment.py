"""SpecAugment: properties over random policies, batches and valid lengths (hypothesis)."""

import functools

from hypothesis import given, settings
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qwen_audio_jax.audio.specaugment import SpecAugmentConfig, spec_augment

PROPERTY_SETTINGS = settings(max_examples=25, deadline=None)


@functools.lru_cache(maxsize=None)
def jitted(config: SpecAugmentConfig):
  return jax.jit(functools.partial(spec_augment, config=config))


# A fixed set of policies (each compiles once per module) covering: masks wider than the clip,
# zero-width masks, adaptive count and width, time warp, both fill values.
POLICIES = [
    SpecAugmentConfig(),
    SpecAugmentConfig(num_freq_masks=3, max_freq_width=12, num_time_masks=4, max_time_width=20,
                      mask_value="zero"),
    SpecAugmentConfig(num_freq_masks=1, max_freq_width=0, num_time_masks=4, max_time_width=60,
                      time_masks_per_frame=0.05, max_time_width_ratio=0.2),
    SpecAugmentConfig(num_freq_masks=0, num_time_masks=3, max_time_width=8,
                      time_masks_per_frame=0.2, max_time_width_ratio=0.05, mask_value="zero"),
    SpecAugmentConfig(num_freq_masks=2, max_freq_width=4, num_time_masks=0, max_time_warp=4),
    SpecAugmentConfig(num_freq_masks=2, max_freq_width=6, num_time_masks=2, max_time_width=10,
                      max_time_warp=2, mask_value="zero"),
]
UNWARPED = [p for p in POLICIES if p.max_time_warp == 0]
BATCH, N_MELS, FRAMES = 3, 16, 48


@st.composite
def batches(draw):
  valid = draw(st.lists(st.integers(0, FRAMES), min_size=BATCH, max_size=BATCH))
  seed = draw(st.integers(0, 2**31 - 1))
  mel = np.random.default_rng(seed).standard_normal((BATCH, N_MELS, FRAMES)).astype(np.float32)
  return mel, np.asarray(valid, np.int32)


def augment(seed, mel, valid, config):
  return np.asarray(jitted(config)(jax.random.key(seed), jnp.asarray(mel), jnp.asarray(valid)))


@PROPERTY_SETTINGS
@given(policy=st.sampled_from(POLICIES), data=batches(), seed=st.integers(0, 2**31 - 1))
def test_padding_is_bit_identical_and_shape_kept(policy, data, seed):
  mel, valid = data
  out = augment(seed, mel, valid, policy)
  assert out.shape == mel.shape and out.dtype == mel.dtype
  for b, v in enumerate(valid):
    np.testing.assert_array_equal(out[b, :, v:], mel[b, :, v:])


@PROPERTY_SETTINGS
@given(policy=st.sampled_from(UNWARPED), data=batches(), seed=st.integers(0, 2**31 - 1))
def test_masks_fill_rows_and_columns_of_the_valid_region(policy, data, seed):
  mel, valid = data
  out = augment(seed, mel, valid, policy)
  for b, v in enumerate(valid):
    changed = out[b] != mel[b]
    assert not changed[:, v:].any()
    if policy.mask_value == "zero":
      fill = 0.0
    else:
      fill = mel[b, :, :v].mean() if v else 0.0
    np.testing.assert_allclose(out[b][changed], fill, rtol=1e-5, atol=1e-6)
    # Every masked cell lies on a fully masked mel row or a fully masked time column of the
    # valid region (up to cells whose input already equalled the fill value).
    masked = np.isclose(out[b, :, :v], fill, rtol=1e-5, atol=1e-6)
    rows = masked.all(axis=1, keepdims=True)
    cols = masked.all(axis=0, keepdims=True)
    assert not (changed[:, :v] & ~(rows | cols)).any()


@PROPERTY_SETTINGS
@given(policy=st.sampled_from(POLICIES), data=batches(), seed=st.integers(0, 2**31 - 1))
def test_same_key_same_output(policy, data, seed):
  mel, valid = data
  np.testing.assert_array_equal(augment(seed, mel, valid, policy),
                                augment(seed, mel, valid, policy))


STRONG = SpecAugmentConfig(num_freq_masks=4, max_freq_width=8, num_time_masks=4,
                           max_time_width=16, max_time_warp=3)


@PROPERTY_SETTINGS
@given(seeds=st.lists(st.integers(0, 2**31 - 1), min_size=2, max_size=2, unique=True))
def test_different_keys_different_masks(seeds):
  rng = np.random.default_rng(0)
  mel = rng.standard_normal((2, 16, 64)).astype(np.float32)
  valid = np.array([64, 40], np.int32)
  first, second = (augment(s, mel, valid, STRONG) for s in seeds)
  for b in range(2):
    assert not np.array_equal(first[b], second[b])


@PROPERTY_SETTINGS
@given(policy=st.sampled_from(POLICIES), data=batches(), seed=st.integers(0, 2**31 - 1))
def test_disabled_is_identity(policy, data, seed):
  mel, valid = data
  disabled = SpecAugmentConfig(**{**policy.__dict__, "enabled": False})
  assert disabled.is_identity
  out = spec_augment(jax.random.key(seed), jnp.asarray(mel), jnp.asarray(valid), disabled)
  np.testing.assert_array_equal(np.asarray(out), mel)


def test_jit_matches_eager_on_a_batch():
  mel = np.random.default_rng(1).standard_normal((4, 80, 300)).astype(np.float32)
  valid = np.array([300, 17, 0, 150], np.int32)
  key = jax.random.key(7)
  masks_only = SpecAugmentConfig(**{**STRONG.__dict__, "max_time_warp": 0})
  eager = spec_augment(key, jnp.asarray(mel), jnp.asarray(valid), masks_only)
  compiled = jax.jit(spec_augment, static_argnames="config")(key, mel, valid, config=masks_only)
  np.testing.assert_array_equal(np.asarray(compiled), np.asarray(eager))
  assert not np.array_equal(np.asarray(compiled)[0], mel[0])
  np.testing.assert_array_equal(np.asarray(compiled)[2], mel[2])  # nothing valid
  bf16 = jax.jit(spec_augment, static_argnames="config")(
      key, jnp.asarray(mel, jnp.bfloat16), valid, config=STRONG)
  assert bf16.dtype == jnp.bfloat16


@PROPERTY_SETTINGS
@given(warp=st.sampled_from([1, 3, 6]), valid=st.integers(0, 48), seed=st.integers(0, 2**31 - 1))
def test_time_warp_is_monotone_and_keeps_the_ends(warp, valid, seed):
  # On a time ramp the warped output is the source position each frame reads.
  ramp = np.broadcast_to(np.arange(48, dtype=np.float32), (1, 4, 48)).copy()
  config = SpecAugmentConfig(num_freq_masks=0, num_time_masks=0, max_time_warp=warp)
  out = augment(seed, ramp, np.array([valid], np.int32), config)[0]
  np.testing.assert_array_equal(out, np.broadcast_to(out[0], out.shape))  # same for every bin
  positions = out[0, :valid]
  assert (np.diff(positions) >= -1e-5).all()
  if valid:
    assert positions[0] == 0.0 and positions[-1] == valid - 1
  if valid < 2 * warp + 3:
    np.testing.assert_array_equal(out, ramp[0])
  moved = np.abs(positions - np.arange(valid, dtype=np.float32)).max(initial=0.0)
  assert moved <= warp + 1e-4


def test_time_warp_moves_something():
  ramp = np.broadcast_to(np.arange(64, dtype=np.float32), (8, 2, 64)).copy()
  config = SpecAugmentConfig(num_freq_masks=0, num_time_masks=0, max_time_warp=5)
  out = augment(3, ramp, np.full(8, 64, np.int32), config)
  assert sum(not np.array_equal(out[b], ramp[b]) for b in range(8)) >= 4


def time_mask_runs(out, mel, v):
  """Lengths of the runs of fully changed time columns in [0, v) (touching masks merge)."""
  changed = (out != mel)[:, :v].all(axis=0).astype(np.int8)
  edges = np.diff(np.concatenate([[0], changed, [0]]))
  return (np.nonzero(edges == -1)[0] - np.nonzero(edges == 1)[0]).tolist()


def test_adaptive_time_mask_count():
  mel = np.random.default_rng(2).standard_normal((2, 8, 400)).astype(np.float32)
  valid = np.array([400, 40], np.int32)
  config = SpecAugmentConfig(num_freq_masks=0, num_time_masks=8, max_time_width=4,
                             time_masks_per_frame=0.02)
  for seed in range(5):
    out = augment(seed, mel, valid, config)
    # floor(0.02 * 40) = 0 masks for the short clip; up to min(8, 8) for the long one.
    np.testing.assert_array_equal(out[1], mel[1])
    assert len(time_mask_runs(out[0], mel[0], 400)) <= 8
  counts = [len(time_mask_runs(augment(s, mel, valid, config)[0], mel[0], 400))
            for s in range(5)]
  assert max(counts) >= 4


def test_adaptive_time_mask_width():
  mel = np.random.default_rng(3).standard_normal((2, 8, 300)).astype(np.float32)
  valid = np.array([300, 50], np.int32)
  config = SpecAugmentConfig(num_freq_masks=0, num_time_masks=1, max_time_width=100,
                             max_time_width_ratio=0.1)
  widths = {0: [], 1: []}
  for seed in range(30):
    out = augment(seed, mel, valid, config)
    for b in range(2):
      widths[b] += time_mask_runs(out[b], mel[b], valid[b])
  assert max(widths[0]) <= 30 and max(widths[1]) <= 5  # floor(0.1 * valid)
  assert max(widths[0]) > 5


def test_mean_fill_value():
  mel = np.zeros((1, 4, 20), np.float32)
  mel[0, :, :10] = 2.0
  mel[0, :, 10:] = -7.0  # padding: must not enter the mean
  config = SpecAugmentConfig(num_freq_masks=0, num_time_masks=3, max_time_width=5)
  out = augment(0, mel, np.array([10], np.int32), config)
  np.testing.assert_array_equal(out, mel)  # the mean of the valid region is 2.0 itself
  mel[0, :2, :10] = 0.0  # mean becomes 1.0
  out = augment(0, mel, np.array([10], np.int32), config)
  assert set(np.unique(out[0, :, :10])) <= {0.0, 1.0, 2.0}
  assert (out[0, :, :10] == 1.0).any()


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_freq_masks=-1), "num_freq_masks"),
    (dict(max_time_width=2.5), "max_time_width"),
    (dict(max_time_warp=True), "max_time_warp"),
    (dict(time_masks_per_frame=1.5), "time_masks_per_frame"),
    (dict(max_time_width_ratio=-0.1), "max_time_width_ratio"),
    (dict(mask_value="noise"), "mask_value"),
    (dict(enabled=1), "enabled"),
])
def test_config_validation(kwargs, match):
  with pytest.raises(ValueError, match=match):
    SpecAugmentConfig(**kwargs)


def test_argument_validation():
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="mel must be"):
    spec_augment(key, jnp.zeros((8, 10)), jnp.zeros(8, jnp.int32), SpecAugmentConfig())
  with pytest.raises(ValueError, match="valid_frames"):
    spec_augment(key, jnp.zeros((2, 8, 10)), jnp.zeros(3, jnp.int32), SpecAugmentConfig())
  with pytest.raises(TypeError, match="SpecAugmentConfig"):
    spec_augment(key, jnp.zeros((2, 8, 10)), jnp.zeros(2, jnp.int32), {"enabled": True})
  assert hash(SpecAugmentConfig()) == hash(SpecAugmentConfig())
  assert SpecAugmentConfig(num_freq_masks=0, num_time_masks=0).is_identity
