"""Model core: shapes and counts of the released presets, sharding invariance, layer stacking,
rematerialisation, KV-cache decoding, the audio splice and the long-context options.

Numerical parity against the transformers references lives in tests/test_parity.py.
"""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.sharding import NamedSharding, PartitionSpec

from qwen_audio_jax import config as C
from qwen_audio_jax import sharding
from qwen_audio_jax.model import llm as llm_lib
from qwen_audio_jax.model.params import count_params, init_params
from qwen_audio_jax.model.qwen_audio import QwenAudio

SMALL = dataclasses.replace(
    C.TINY,
    encoder=dataclasses.replace(C.TINY.encoder, width=32, heads=4, mlp_dim=64, output_dim=48),
    llm=dataclasses.replace(C.TINY.llm, vocab_size=512, width=48, heads=4, kv_heads=2,
                            head_dim=12, mlp_dim=96),
)


def _batch(config, rng=0, batch=2, length=48, slots=2):
  """Random ids, mel and two clips per row (one slot of row 0 empty), text padding in row 1."""
  r = np.random.default_rng(rng)
  ids = r.integers(0, config.llm.vocab_size, (batch, length)).astype(np.int32)
  mel = r.normal(size=(batch, slots, config.encoder.n_mels, 3000)).astype(np.float32)
  lengths = np.array([[16000, 0], [8000, 24000]], np.int32)[:batch, :slots]
  starts = np.array([[2, 0], [1, 10]], np.int32)[:batch, :slots]
  segments = np.ones((batch, length), np.int32)
  segments[-1, length - 5:] = 0
  positions = np.broadcast_to(np.arange(length, dtype=np.int32), (batch, length)).copy()
  return dict(input_ids=ids, audio_mel=mel, audio_lengths=lengths, audio_starts=starts,
              segment_ids=segments, positions=positions)


@pytest.fixture(scope="module")
def small_params():
  return nn.unbox(init_params(SMALL, jax.random.key(0)))


def _apply(config, params, batch, **kw):
  inputs = dict(batch)
  ids = inputs.pop("input_ids")
  return QwenAudio(config).apply({"params": params}, ids, **inputs, **kw)


# ----------------------------------------------------------------------------- presets


def test_qwen_audio_7b_parameter_count_matches_official_layout():
  """Sum of the official checkpoint's tensor shapes (sizes from the release's config.json, QwenLM/Qwen-Audio) equals our count."""
  d, n_mels, n_ctx, enc_layers, ffn = 1280, 80, 1500, 32, 5120
  w, vocab, layers, mlp = 4096, 155947, 32, 11008
  block = (3 * (d * d + d) - d) + (d * d + d) + 2 * d + (d * ffn + ffn) + (ffn * d + d) + 2 * d
  audio = (n_mels * d * 3 + d) + (d * d * 3 + d) + n_ctx * d + enc_layers * block + 2 * d \
      + (d * w + w) + 2 * w
  qwen_block = (w * 3 * w + 3 * w) + w * w + 2 * w + 3 * w * mlp
  lm = 2 * vocab * w + layers * qwen_block + w
  counts = count_params(C.QWEN_AUDIO_7B)
  assert counts["audio_encoder"] == audio
  assert counts["llm"] == lm
  assert counts["total"] == audio + lm
  assert 8.3e9 < counts["total"] < 8.5e9  # "about 8.4B parameters"
  assert 6.3e8 < counts["audio_encoder"] < 6.5e8  # "encoder about 640M"


# The text_config of the released Qwen2-Audio-7B config.json, key for key; everything else comes
# from transformers' defaults, exactly as when the release is loaded.
RELEASED_QWEN2_AUDIO_TEXT_CONFIG = dict(
    model_type="qwen2", vocab_size=156032, intermediate_size=11008, rms_norm_eps=1e-5,
    max_position_embeddings=8192, use_mrope=False, bos_token_id=151643, eos_token_id=151645)


def test_qwen2_audio_7b_parameter_count_matches_transformers():
  from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration
  ours = C.QWEN2_AUDIO_7B
  hf_config = Qwen2AudioConfig(
      audio_config=dict(num_mel_bins=128, encoder_layers=32, d_model=1280,
                        encoder_attention_heads=20, encoder_ffn_dim=5120),
      text_config=dict(RELEASED_QWEN2_AUDIO_TEXT_CONFIG))
  text = hf_config.text_config
  assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads,
          text.num_key_value_heads) == (ours.llm.width, ours.llm.depth, ours.llm.heads,
                                        ours.llm.kv_heads)
  with torch.device("meta"):
    reference = Qwen2AudioForConditionalGeneration(hf_config)
  expected = sum(p.numel() for p in reference.parameters())
  assert count_params(ours)["total"] == expected
  assert 8.3e9 < expected < 8.5e9  # the release's "8.4B parameters"


def test_bad_config_names_the_field():
  with pytest.raises(ValueError, match="llm.heads"):
    dataclasses.replace(C.TINY, llm=dataclasses.replace(C.TINY.llm, heads=5))
  with pytest.raises(ValueError, match="remat_policy"):
    dataclasses.replace(C.TINY, remat_policy="sometimes")
  with pytest.raises(ValueError, match="unknown model preset"):
    C.get_preset("qwen_audio_70b")


# ----------------------------------------------------------------------------- sharding


@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (1, 8, 1), (1, 4, 2), (2, 2, 2)])
def test_sharded_forward_equals_single_device(small_params, mesh_shape):
  batch = _batch(SMALL, batch=2)
  batch = {k: np.concatenate([v] * 4) for k, v in batch.items()}  # 8 rows
  expected = jax.jit(lambda p, b: _apply(SMALL, p, b))(small_params, batch)

  mesh = sharding.make_mesh(mesh_shape)
  abstract = jax.eval_shape(lambda: init_params(SMALL, jax.random.key(0)))
  param_sh = sharding.param_shardings(abstract, mesh)
  params = jax.device_put(small_params, param_sh)
  data = {k: jax.device_put(v, sharding.batch_sharding(mesh, v.ndim)) for k, v in batch.items()}
  with sharding.activation_sharding(mesh):
    fn = jax.jit(lambda p, b: _apply(SMALL, p, b), in_shardings=(param_sh, None))
    got = fn(params, data)
  if mesh_shape[1] > 1:  # fsdp really shards the width dimension of big kernels
    kernel = params["llm"]["layers"]["block"]["gate"]["kernel"]
    assert kernel.sharding.spec[1] is not None
  np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=2e-5, rtol=1e-5)


def test_rules_drop_mesh_axes_that_do_not_divide():
  mesh = sharding.make_mesh((1, 4, 2))
  assert sharding.logical_to_spec(("vocab", "embed"), (155947, 96), mesh) == \
      PartitionSpec(None, "fsdp")
  assert sharding.logical_to_spec(("act_batch", None), (8, 3), mesh) == \
      PartitionSpec(("data", "fsdp"), None)
  assert sharding.logical_to_spec(("act_batch", None), (2, 3), mesh) == \
      PartitionSpec("data", None)
  with pytest.raises(ValueError, match="needs 6 devices"):
    sharding.make_mesh((3, 2, 1))
  assert dict(sharding.make_mesh((2, -1, 1)).shape) == {"data": 2, "fsdp": 4, "tensor": 1}


# ----------------------------------------------------------------------------- structure


def _unstack(tree):
  """Scanned {'block': stacked} -> {'block_i': slice} for every LayerStack in the tree."""
  if not isinstance(tree, dict):
    return tree
  out = {}
  for key, value in tree.items():
    if key == "block" and isinstance(value, dict):
      depth = jax.tree.leaves(value)[0].shape[0]
      for i in range(depth):
        out[f"block_{i}"] = jax.tree.map(lambda x, i=i: x[i], value)
    else:
      out[key] = _unstack(value)
  return out


def test_scan_and_unrolled_layers_agree(small_params):
  batch = _batch(SMALL)
  scanned = _apply(SMALL, small_params, batch)
  unrolled_cfg = dataclasses.replace(SMALL, scan_layers=False)
  unrolled = _apply(unrolled_cfg, _unstack(small_params), batch)
  np.testing.assert_allclose(np.asarray(unrolled), np.asarray(scanned), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("policy", ["full", "dots", "minimal"])
def test_remat_policies_keep_gradients(small_params, policy):
  batch = _batch(SMALL)

  def loss(config, params):
    return jnp.mean(jax.nn.log_softmax(_apply(config, params, batch, train=True))[..., 7])

  base = jax.jit(jax.grad(lambda p: loss(SMALL, p)))(small_params)
  remat_cfg = dataclasses.replace(SMALL, remat_policy=policy)
  got = jax.jit(jax.grad(lambda p: loss(remat_cfg, p)))(small_params)
  for a, b in zip(jax.tree.leaves(base), jax.tree.leaves(got)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6, rtol=1e-5)


def test_plain_and_xla_attention_agree(small_params):
  batch = _batch(SMALL)
  xla = _apply(SMALL, small_params, batch)
  plain = _apply(dataclasses.replace(SMALL, attention_impl="plain"), small_params, batch)
  np.testing.assert_allclose(np.asarray(plain), np.asarray(xla), atol=1e-5, rtol=1e-5)


def test_bfloat16_compute_tracks_float32(small_params):
  batch = _batch(SMALL)
  f32 = np.asarray(_apply(SMALL, small_params, batch))
  bf16 = np.asarray(_apply(dataclasses.replace(SMALL, dtype="bfloat16"), small_params, batch))
  assert bf16.dtype == np.float32  # logits always come back in float32
  valid = batch["segment_ids"] > 0
  rel = np.abs(bf16 - f32)[valid].max() / np.abs(f32[valid]).max()
  assert rel < 0.05, rel


# ----------------------------------------------------------------------------- audio splice


def test_audio_only_changes_logits_from_its_span_on(small_params):
  batch = _batch(SMALL)
  other = dict(batch, audio_mel=batch["audio_mel"] + 1.0)
  a = np.asarray(_apply(SMALL, small_params, batch))
  b = np.asarray(_apply(SMALL, small_params, other))
  # Row 1: first clip starts at token 1: tokens before it see no audio.
  np.testing.assert_array_equal(a[1, :1], b[1, :1])
  assert np.abs(a[1, 1:] - b[1, 1:]).max() > 1e-4
  # Row 0: the clip starts at token 2; the empty second slot never matters.
  np.testing.assert_array_equal(a[0, :2], b[0, :2])
  emptied = dict(batch)
  emptied["audio_mel"] = batch["audio_mel"].copy()
  emptied["audio_mel"][0, 1] = 123.0  # slot 1 of row 0 is empty (length 0)
  np.testing.assert_array_equal(np.asarray(_apply(SMALL, small_params, emptied))[0], a[0])


def test_splice_places_bos_frames_eos():
  from qwen_audio_jax.model.qwen_audio import splice_audio
  text = jnp.zeros((1, 12, 3))
  frames = jnp.arange(1, 2 * 4 * 3 + 1, dtype=jnp.float32).reshape(1, 2, 4, 3)
  counts = jnp.array([[3, 2]])
  starts = jnp.array([[1, 6]])
  bos, eos = jnp.full((3,), -1.0), jnp.full((3,), -2.0)
  out = np.asarray(splice_audio(text, frames, counts, starts, bos, eos))[0, :, 0]
  # span 1: positions 1..5 = bos, f0, f1, f2, eos; span 2: 6..9 = bos, g0, g1, eos.
  np.testing.assert_array_equal(out, [0, -1, 1, 4, 7, -2, -1, 13, 16, -2, 0, 0])
  keep = np.asarray(splice_audio(text + 5, frames, counts, starts))[0, :, 0]
  np.testing.assert_array_equal(keep, [5, 5, 1, 4, 7, 5, 5, 13, 16, 5, 5, 5])


# ----------------------------------------------------------------------------- decoding


def test_kv_cache_decoding_matches_full_forward(small_params):
  batch = _batch(SMALL, batch=2, length=24)
  # Spans inside the 16-token prompt: 4000 samples -> 6 frames (positions 2..9); 3200 -> 5.
  batch["audio_lengths"] = np.array([[4000, 0], [3200, 3200]], np.int32)
  batch["audio_starts"] = np.array([[2, 0], [1, 9]], np.int32)
  model = QwenAudio(SMALL)
  full = np.asarray(_apply(SMALL, small_params, batch))
  prompt = 16
  cache = model.init_cache(batch_size=2, max_length=24)
  prefill = {k: (v[:, :prompt] if v.ndim == 2 and k not in ("audio_lengths", "audio_starts")
                 else v) for k, v in batch.items()}
  logits, state = model.apply({"params": small_params, "cache": cache},
                              prefill.pop("input_ids"), **prefill, decode=True,
                              mutable=["cache"])
  np.testing.assert_allclose(np.asarray(logits), full[:, :prompt], atol=2e-5, rtol=1e-5)
  for t in range(prompt, 24):
    step, state = model.apply(
        {"params": small_params, "cache": state["cache"]}, batch["input_ids"][:, t:t + 1],
        positions=batch["positions"][:, t:t + 1], segment_ids=batch["segment_ids"][:, t:t + 1],
        decode=True, mutable=["cache"])
    valid = batch["segment_ids"][:, t] > 0
    np.testing.assert_allclose(np.asarray(step)[valid, 0], full[valid, t], atol=2e-5, rtol=1e-5)


def test_decode_without_cache_is_a_clear_error(small_params):
  with pytest.raises(ValueError, match="init_cache"):
    QwenAudio(SMALL).apply({"params": small_params}, jnp.zeros((1, 4), jnp.int32), decode=True,
                           mutable=["cache"])


# ----------------------------------------------------------------------------- long context


def _reference_ntk_alpha(true_seq_len, seq_length):
  """Qwen-7B's get_ntk_alpha, transcribed."""
  context_value = math.log(true_seq_len / seq_length, 2) + 1
  return max(2 ** math.ceil(context_value) - 1, 1)


def test_ntk_alpha_and_logn_follow_reference_formulas():
  lengths = np.array([1, 100, 2048, 2049, 4096, 5000, 9000])
  got = np.asarray(llm_lib.ntk_alpha(jnp.asarray(lengths), 2048))
  np.testing.assert_array_equal(got, [_reference_ntk_alpha(int(n), 2048) for n in lengths])
  positions = np.arange(4100)
  reference = [math.log(i, 2048) if i > 2048 else 1 for i in range(1, 4101)]
  np.testing.assert_allclose(np.asarray(llm_lib.logn_scale(jnp.asarray(positions), 2048)),
                             reference, rtol=1e-6)


def test_long_context_options_only_act_past_seq_length(small_params):
  long_cfg = dataclasses.replace(
      SMALL, llm=dataclasses.replace(SMALL.llm, seq_length=16, use_dynamic_ntk=True,
                                     use_logn_attn=True))
  batch = _batch(SMALL, length=12)
  batch.pop("audio_mel"), batch.pop("audio_lengths"), batch.pop("audio_starts")
  short_plain = _apply(SMALL, small_params, batch)
  short_long = _apply(long_cfg, small_params, batch)
  np.testing.assert_allclose(np.asarray(short_long), np.asarray(short_plain), atol=1e-6)
  batch = _batch(SMALL, length=40)
  batch.pop("audio_mel"), batch.pop("audio_lengths"), batch.pop("audio_starts")
  plain = np.asarray(_apply(SMALL, small_params, batch))
  inference = np.asarray(_apply(long_cfg, small_params, batch))
  training = np.asarray(_apply(long_cfg, small_params, batch, train=True))
  np.testing.assert_allclose(training, plain, atol=1e-6)  # off while training, as the reference
  # Positions up to seq_length keep logn = 1, but NTK (from the row length 40 > 16) rotates
  # differently everywhere: the whole sequence changes at inference.
  assert np.abs(inference[:, 16:] - plain[:, 16:]).max() > 1e-4
