"""Blockwise (flash) attention against the plain path: values and gradients, encoder key padding
and LLM causal + segment masks, grouped KV heads, rows without keys, blocks that do not divide
the length; and the whole model with attention_impl='flash'."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qwen_audio_jax import config as C
from qwen_audio_jax.model import attention
from qwen_audio_jax.model.flash_attention import flash_attention


def _qkv(batch, length, heads, kv_heads, dim=8, seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(keys[0], (batch, length, heads, dim)),
          jax.random.normal(keys[1], (batch, length, kv_heads, dim)),
          jax.random.normal(keys[2], (batch, length, kv_heads, dim)))


def _masks(length):
  index = jnp.broadcast_to(jnp.arange(length), (3, length))
  # Row 0: two packed segments then padding; row 1: one segment; row 2: all padding.
  segments = jnp.asarray([[1] * 20 + [2] * 10 + [0] * (length - 30), [1] * length,
                          [0] * length], jnp.int32)
  causal = attention.causal_segment_mask(segments, segments, index, index)
  valid = jnp.arange(length)[None] < jnp.asarray([[length], [9], [0]])
  return {"causal_segments": causal, "key_padding": attention.key_padding_mask(valid, length)}


@pytest.mark.parametrize("mask_name,heads,kv_heads,block_q,block,keys_only", [
    ("causal_segments", 4, 2, 8, 8, False), ("causal_segments", 2, 1, 16, 64, False),
    ("causal_segments", 2, 2, 64, 16, False), ("key_padding", 4, 4, 8, 16, True),
    ("key_padding", 4, 2, 8, 16, False)])  # the general segment mask on the same input
def test_flash_matches_plain_values_and_gradients(mask_name, heads, kv_heads, block_q, block,
                                                  keys_only):
  length = 37  # no block size here divides it
  q, k, v = _qkv(3, length, heads, kv_heads)
  mask = _masks(length)[mask_name]
  probe = jnp.cos(jnp.arange(q.shape[-1], dtype=jnp.float32))

  def plain(q, k, v):
    return attention.attend(q, k, v, mask, impl="plain")

  def flash(q, k, v):
    return flash_attention(q, k, v, mask.q_segments, mask.kv_segments, mask.q_index,
                           mask.kv_index, causal=mask.causal, scale=q.shape[-1] ** -0.5,
                           block_q=block_q, block_k=block, keys_only=keys_only)

  assert mask.keys_only == (mask_name == "key_padding")
  np.testing.assert_allclose(flash(q, k, v), plain(q, k, v), rtol=1e-5, atol=1e-5)
  loss = lambda f: lambda *a: jnp.sum(f(*a) * probe)  # noqa: E731
  want = jax.grad(loss(plain), (0, 1, 2))(q, k, v)
  got = jax.jit(jax.grad(loss(flash), (0, 1, 2)))(q, k, v)
  for name, a, b in zip("qkv", got, want):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=f"d{name}")
  # The all-padding row (no key in the key-padding mask): zeros, and no gradient through it.
  if mask_name == "causal_segments" or keys_only:
    assert not np.asarray(flash(q, k, v)[2]).any() and not np.asarray(got[0][2]).any()


def test_only_tile_pairs_that_may_attend_are_live():
  """The skipped tile pairs: a causal row's upper triangle, padding, other packed sequences."""
  from qwen_audio_jax.model.flash_attention import _live_tiles, _tiles
  index = jnp.arange(32)[None]
  tiles = lambda x: _tiles(x, 8, axis=1)  # noqa: E731  4 tiles of 8
  one_sequence = jnp.ones((1, 32), jnp.int32)
  live = _live_tiles(*(tiles(x) for x in (one_sequence, one_sequence, index, index)), True)
  np.testing.assert_array_equal(live, np.tril(np.ones((4, 4), bool)))
  packed = jnp.asarray([[1] * 16 + [2] * 8 + [0] * 8], jnp.int32)  # two sequences, then padding
  live = _live_tiles(*(tiles(x) for x in (packed, packed, index, index)), True)
  np.testing.assert_array_equal(live, [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]])
  # Key padding (bidirectional): every query tile, the key tiles that hold a valid key.
  valid = (jnp.arange(32)[None] < 12).astype(jnp.int32)
  queries = jnp.ones((1, 32), jnp.int32)
  live = _live_tiles(tiles(queries), tiles(valid), tiles(index * 0), tiles(index * 0), False)
  np.testing.assert_array_equal(live, np.tile([[1, 1, 0, 0]], (4, 1)).astype(bool))


def test_flash_needs_segment_ids():
  q, k, v = _qkv(1, 4, 2, 2)
  with pytest.raises(ValueError, match="flash.*MaskInfo"):
    attention.attend(q, k, v, jnp.ones((1, 1, 4, 4), bool), impl="flash")


def test_auto_picks_flash_on_cpu():
  assert jax.default_backend() == "cpu" and attention.resolve_impl("auto") == "flash"
  assert attention.resolve_impl("plain") == "plain"


SMALL = dataclasses.replace(
    C.TINY,
    encoder=dataclasses.replace(C.TINY.encoder, width=32, heads=4, mlp_dim=64, output_dim=48,
                                depth=1),
    llm=dataclasses.replace(C.TINY.llm, vocab_size=256, width=48, heads=4, kv_heads=2,
                            head_dim=12, mlp_dim=96, depth=1),
)


def test_model_with_flash_attention_matches_plain_logits_and_gradients():
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from qwen_audio_jax.model.params import init_params  # pylint: disable=g-import-not-at-top
  from qwen_audio_jax.model.qwen_audio import QwenAudio  # pylint: disable=g-import-not-at-top
  params = nn.unbox(init_params(SMALL, jax.random.key(0)))
  from _model_inputs import packed_rows  # pylint: disable=g-import-not-at-top
  ids, segments, audio = packed_rows(256)

  def loss(impl, p):
    logits = QwenAudio(dataclasses.replace(SMALL, attention_impl=impl)).apply(
        {"params": p}, ids, segment_ids=segments, train=True, **audio)
    return jnp.sum(jax.nn.log_softmax(logits)[..., 3] * (segments > 0))

  (want, want_g), (got, got_g) = [jax.jit(jax.value_and_grad(lambda p, i=impl: loss(i, p)))(
      params) for impl in ("plain", "flash")]
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(got_g), jax.tree.leaves(want_g)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
