"""The Pallas TPU flash attention ('tpu_flash') against the plain path, run by Pallas's interpreter
on CPU: values and gradients (the kernel's own backward), encoder key padding and LLM causal +
segment masks, grouped KV heads, rows without keys, lengths padded to the kernel's blocks, under
a mesh (shard_map) and without; the whole model with attention_impl='tpu_flash'. And compiled
by XLA's TPU compiler for a virtual TPU slice (libtpu, no TPU), with smaller temporaries than
the 'xla' path."""

import dataclasses
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qwen_audio_jax import config as C
from qwen_audio_jax import sharding
from qwen_audio_jax.model import attention, tpu_attention

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
from tpu_attention_memory import attention_step, virtual_tpu_devices  # noqa: E402


@pytest.mark.parametrize("length,max_block,block,padded", [
    (1500, 512, 512, 1536), (2048, 512, 512, 2048), (640, 512, 128, 640), (130, 512, 256, 256),
    (150, 128, 128, 256), (1, 512, 128, 128)])
def test_blocks_tile_the_padded_length(length, max_block, block, padded):
  assert tpu_attention.block_size(length, max_block) == block
  assert tpu_attention.padded_length(length, max_block) == padded


def test_bad_block_and_dense_mask_refused():
  with pytest.raises(ValueError, match="max_block=100 must be a positive multiple of 128"):
    tpu_attention.block_size(200, 100)
  q = jnp.ones((1, 4, 2, 8))
  with pytest.raises(ValueError, match="tpu_flash.*MaskInfo"):
    attention.attend(q, q, q, jnp.ones((1, 1, 4, 4), bool), impl="tpu_flash")
  with pytest.raises(ValueError, match="needs as many queries as keys"):
    tpu_attention.tpu_flash_attention(q, jnp.ones((1, 6, 2, 8)), jnp.ones((1, 6, 2, 8)),
                                      jnp.ones((1, 4)), jnp.ones((1, 6)), causal=True, scale=1.0)


def _case(name, length=150):
  batch = 4
  index = jnp.broadcast_to(jnp.arange(length), (batch, length))
  if name == "causal_segments":  # packed row, padded row, one segment, all padding
    segments = jnp.asarray([[1] * 90 + [2] * 40 + [0] * 20, [1] * 100 + [0] * 50,
                            [3] * length, [0] * length], jnp.int32)
    return attention.causal_segment_mask(segments, segments, index, index)
  valid = jnp.arange(length)[None] < jnp.asarray([[length], [9], [0], [77]])  # [0]: no keys
  return attention.key_padding_mask(valid, length)


@pytest.mark.parametrize("mask_name,heads,kv_heads,mesh_shape", [
    ("causal_segments", 4, 2, None), ("key_padding", 2, 2, (2, 1, 2))])
def test_matches_plain_values_and_gradients(mask_name, heads, kv_heads, mesh_shape):
  length, dim = 150, 64  # 2 x 2 blocks of 128 after padding to 256; Whisper's head dim
  keys = jax.random.split(jax.random.key(0), 4)
  q = jax.random.normal(keys[0], (4, length, heads, dim))
  k, v = (jax.random.normal(key, (4, length, kv_heads, dim)) for key in keys[1:3])
  probe = jax.random.normal(keys[3], q.shape)
  mask = _case(mask_name, length)
  mesh = sharding.make_mesh(mesh_shape, jax.devices()[:4]) if mesh_shape else None

  def tpu_flash(q, k, v):
    with sharding.activation_sharding(mesh):
      return tpu_attention.tpu_flash_attention(q, k, v, mask.q_segments, mask.kv_segments,
                                               causal=mask.causal, scale=dim ** -0.5,
                                               max_block=128)

  def out_and_grads(f):
    out, vjp = jax.vjp(f, q, k, v)
    return out, vjp(probe)

  got, got_grads = jax.jit(lambda: out_and_grads(tpu_flash))()
  want, want_grads = out_and_grads(
      lambda q, k, v: attention.attend(q, k, v, mask, impl="plain"))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  for name, a, b in zip("qkv", got_grads, want_grads):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4, err_msg=f"d{name}")
  no_keys = 3 if mask_name == "causal_segments" else 2  # zeros, and no gradient through them
  assert not np.asarray(got[no_keys]).any() and not np.asarray(got_grads[0][no_keys]).any()


def test_cached_decoding_falls_back_to_xla():
  q, k = jnp.ones((1, 1, 2, 8)), jax.random.normal(jax.random.key(0), (1, 6, 2, 8))
  segments = jnp.ones((1, 6), jnp.int32)
  mask = attention.causal_segment_mask(segments[:, :1], segments, jnp.full((1, 1), 3),
                                       jnp.arange(6)[None])
  np.testing.assert_allclose(attention.attend(q, k, k, mask, impl="tpu_flash"),
                             attention.attend(q, k, k, mask, impl="xla"), rtol=1e-6)


def test_model_with_tpu_flash_matches_plain_logits():
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from qwen_audio_jax.model.params import init_params  # pylint: disable=g-import-not-at-top
  from qwen_audio_jax.model.qwen_audio import QwenAudio  # pylint: disable=g-import-not-at-top
  small = dataclasses.replace(
      C.TINY, encoder=dataclasses.replace(C.TINY.encoder, width=32, depth=1, output_dim=48),
      llm=dataclasses.replace(C.TINY.llm, vocab_size=256, width=48, head_dim=12, depth=1))
  params = nn.unbox(init_params(small, jax.random.key(0)))
  from _model_inputs import packed_rows  # pylint: disable=g-import-not-at-top
  ids, segments, audio = packed_rows(256)

  def forward(impl):
    model = QwenAudio(dataclasses.replace(small, attention_impl=impl))
    return jax.jit(lambda p: model.apply({"params": p}, ids, segment_ids=segments, train=True,
                                         **audio))(params)

  logits = {impl: forward(impl) for impl in ("plain", "tpu_flash")}
  valid = np.asarray(segments > 0)
  np.testing.assert_allclose(np.asarray(logits["tpu_flash"])[valid],
                             np.asarray(logits["plain"])[valid], rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def tpu_mesh():
  return sharding.make_mesh((1, 2, 2), virtual_tpu_devices("v5e:2x2"))


@pytest.mark.parametrize("name,shape", [
    ("encoder", dict(batch=4, length=1500, heads=20, kv_heads=20, head_dim=64, causal=False)),
    ("llm", dict(batch=2, length=2048, heads=16, kv_heads=8, head_dim=128, causal=True))])
def test_compiles_for_virtual_tpu_with_smaller_temporaries(tpu_mesh, name, shape):
  with jax.default_matmul_precision("default"):  # bf16 operands (conftest asks for 'highest')
    flash = attention_step("tpu_flash", tpu_mesh, **shape)
    xla = attention_step("xla", tpu_mesh, **shape)
  assert "tpu_custom_call" in flash.as_text()  # the Mosaic kernel, not its interpretation
  flash_temp = flash.memory_analysis().temp_size_in_bytes
  xla_temp = xla.memory_analysis().temp_size_in_bytes
  # 'xla' holds the [T, S] probabilities of every local head (and their gradient).
  logits_bytes = (shape["batch"] // 2) * (shape["heads"] // 2) * shape["length"] ** 2 * 2
  assert xla_temp > logits_bytes > 4 * flash_temp, (name, xla_temp, flash_temp)


def test_auto_choices_follow_the_platform_compiled_for():
  """A step traced for a virtual TPU slice from this CPU host makes the TPU's trace-time choices
  (attention implementation, DFT method, the Pallas kernel compiled rather than interpreted)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.sharding import Mesh  # pylint: disable=g-import-not-at-top
  from qwen_audio_jax import sharding  # pylint: disable=g-import-not-at-top
  from qwen_audio_jax.audio import mel  # pylint: disable=g-import-not-at-top
  from qwen_audio_jax.model import attention  # pylint: disable=g-import-not-at-top
  from qwen_audio_jax.plan import hardware, planner  # pylint: disable=g-import-not-at-top
  assert attention.resolve_impl("auto") == "flash" and mel._resolve_dft("auto") == "fft"
  tpu_mesh = Mesh(np.array(planner.virtual_tpu_devices(hardware.parse_tpu("v5e-1"))), ("data",))
  with sharding.activation_sharding(tpu_mesh):
    assert sharding.compile_platform() == "tpu"
    assert attention.resolve_impl("auto") == "xla" and mel._resolve_dft("auto") == "matmul"
  cpu_mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
  with sharding.activation_sharding(cpu_mesh):
    assert attention.resolve_impl("auto") == "flash"
