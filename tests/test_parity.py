"""float32 parity of our model, loaded through the converter, against reference implementations.

Every reference is a tiny random model built offline (tests/_reference_models.py), saved as a
safetensors checkpoint and converted with qwen_audio_jax.convert. Tolerance: max abs difference
<= 1e-4 over valid positions, and <= 1e-4 relative to the largest reference value.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import WhisperFeatureExtractor

import _reference_models as ref
from qwen_audio_jax.audio import lengths
from qwen_audio_jax.config import EncoderConfig
from qwen_audio_jax.convert import convert_checkpoint
from qwen_audio_jax.model.encoder import AudioEncoder
from qwen_audio_jax.model.qwen_audio import QwenAudio

ABS_TOL = 1e-4
REL_TOL = 1e-4
# An unused tiny encoder for running the LLM alone (no audio_bos_eos parameter to look up).
UNUSED_ENCODER = EncoderConfig(n_mels=8, width=16, depth=1, heads=2, mlp_dim=32, output_dim=None,
                               audio_bos_eos=False)


def _check(name, ours, expected, valid=None):
  abs_err, rel_err = ref.max_errors(ours, expected, valid)
  print(f"{name}: max abs error {abs_err:.3e}, relative to max |ref| {rel_err:.3e}")
  assert abs_err <= ABS_TOL, f"{name}: max abs error {abs_err}"
  assert rel_err <= REL_TOL, f"{name}: relative error {rel_err}"


def _llm_only(config):
  return dataclasses.replace(config, encoder=UNUSED_ENCODER)


@pytest.fixture(scope="module")
def text_batch():
  rng = np.random.default_rng(0)
  rows = [rng.integers(3, 500, 12).tolist(), rng.integers(3, 500, 7).tolist()]
  return ref.padded_rows(rows)


def _llm_logits(config, params, ids, mask):
  model = QwenAudio(_llm_only(config))
  return np.asarray(jax.jit(model.apply)({"params": params}, jnp.asarray(ids, jnp.int32),
                                         segment_ids=jnp.asarray(mask, jnp.int32)))


# ----------------------------------------------------------------------------- Whisper


def test_whisper_encoder_hidden_states_match_transformers(tmp_path_factory):
  whisper = ref.tiny_whisper(seed=1)
  source = str(tmp_path_factory.mktemp("whisper"))
  whisper.save_pretrained(source, safe_serialization=True)
  params, config, report = convert_checkpoint(source, "whisper", progress=False)
  assert not config.encoder.avg_pool and config.encoder.output_dim is None
  assert any(n.startswith("decoder.") for n in report.skipped)

  mel = np.random.default_rng(1).normal(size=(2, 80, lengths.N_FRAMES)).astype(np.float32)
  with torch.no_grad():
    expected = whisper.encoder(torch.from_numpy(mel)).last_hidden_state.numpy()
  ours, counts = jax.jit(AudioEncoder(config).apply)({"params": params["audio_encoder"]},
                                                     jnp.asarray(mel), None)
  assert ours.shape == expected.shape == (2, 1500, 64)
  np.testing.assert_array_equal(counts, [1500, 1500])
  _check("whisper encoder", ours, expected)


# ----------------------------------------------------------------------------- Qwen2


@pytest.mark.parametrize("kv_heads,tie", [(2, False), (4, False), (2, True)],
                         ids=["gqa", "mha", "gqa_tied"])
def test_qwen2_logits_match_transformers(tmp_path_factory, text_batch, kv_heads, tie):
  model = ref.tiny_qwen2(seed=2, kv_heads=kv_heads, tie=tie)
  source = str(tmp_path_factory.mktemp(f"qwen2_{kv_heads}_{tie}"))
  model.save_pretrained(source, safe_serialization=True)
  params, config, _ = convert_checkpoint(source, "qwen2", progress=False)
  assert config.llm.kv_heads == kv_heads and config.llm.heads == 4
  assert config.llm.tie_embeddings == tie and ("lm_head" in params["llm"]) != tie

  ids, mask = text_batch
  with torch.no_grad():
    expected = model(input_ids=torch.from_numpy(ids),
                     attention_mask=torch.from_numpy(mask)).logits.numpy()
  ours = _llm_logits(config, params, ids, mask)
  _check(f"qwen2 logits (kv_heads={kv_heads}, tied={tie})", ours, expected, mask.astype(bool))


# ----------------------------------------------------------------------------- Qwen2-Audio


def test_qwen2_audio_logits_match_transformers(tmp_path_factory):
  model = ref.tiny_qwen2_audio(seed=3)
  source = str(tmp_path_factory.mktemp("qwen2_audio"))
  model.save_pretrained(source, safe_serialization=True)
  params, config, report = convert_checkpoint(source, "qwen2_audio", progress=False)
  assert config.encoder.avg_pool and not config.encoder.audio_bos_eos
  assert not config.encoder.cut_mel_to_batch_max
  assert report.token_ids["audio_token_index"] == ref.QWEN2_AUDIO_TOKENS["audio"]

  # Two clips (2 s and 5 s) as Qwen2-Audio's processor prepares them.
  rng = np.random.default_rng(3)
  num_samples = [2 * lengths.SAMPLE_RATE, 5 * lengths.SAMPLE_RATE]
  audio = [rng.uniform(-0.5, 0.5, n).astype(np.float32) for n in num_samples]
  extractor = WhisperFeatureExtractor(feature_size=128)
  features = extractor(audio, sampling_rate=lengths.SAMPLE_RATE, return_tensors="np",
                       padding="max_length", return_attention_mask=True)
  mel = features["input_features"].astype(np.float32)
  feature_mask = features["attention_mask"]
  np.testing.assert_array_equal(feature_mask.sum(-1), [lengths.mel_frames(n) for n in num_samples])

  tok = ref.QWEN2_AUDIO_TOKENS
  n_audio = [int(lengths.audio_tokens(n)) for n in num_samples]
  prefixes, suffixes = [[7, 8, 9], [11, 12]], [[20, 21, 22, 23], [30, 31, 32, 33, 34, 35]]
  rows = [p + [tok["bos"]] + [tok["audio"]] * n + [tok["eos"]] + s
          for p, n, s in zip(prefixes, n_audio, suffixes)]
  ids, mask = ref.padded_rows(rows)
  starts = np.array([[len(p)] for p in prefixes], np.int32)  # the <|audio_bos|> tokens

  with torch.no_grad():
    expected = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                     input_features=torch.from_numpy(mel),
                     feature_attention_mask=torch.from_numpy(feature_mask)).logits.numpy()
  ours = jax.jit(QwenAudio(config).apply)(
      {"params": params}, jnp.asarray(ids, jnp.int32), segment_ids=jnp.asarray(mask, jnp.int32),
      audio_mel=jnp.asarray(mel)[:, None], audio_lengths=jnp.asarray([[n] for n in num_samples]),
      audio_starts=jnp.asarray(starts))
  _check("qwen2-audio logits", ours, expected, mask.astype(bool))


# ----------------------------------------------------------------------------- official layout


@pytest.fixture(scope="module")
def official(tmp_path_factory):
  """A Qwen-Audio checkpoint in the official names, its references and its conversion."""
  qwen2 = ref.tiny_qwen2(seed=4, kv_heads=4)
  whisper = ref.tiny_whisper(seed=5)
  torch.manual_seed(6)
  width = qwen2.config.hidden_size
  proj_weight = 0.05 * torch.randn(width, whisper.config.d_model)
  proj_bias = 0.05 * torch.randn(width)
  bos_eos = 0.05 * torch.randn(2, width)
  tensors = ref.official_state_dict(qwen2, whisper, proj_weight, proj_bias, bos_eos)
  source = str(tmp_path_factory.mktemp("official"))
  ref.save_official(source, tensors, ref.official_config(qwen2, whisper))
  params, config, report = convert_checkpoint(source, "qwen_audio", progress=False)
  return dict(qwen2=qwen2, tensors=tensors, params=params, config=config, report=report)


def test_official_llm_logits_match_qwen2_reference(official, text_batch):
  config = official["config"]
  assert config.llm.use_dynamic_ntk and config.llm.use_logn_attn  # inactive at this length
  assert config.llm.mlp_dim == official["qwen2"].config.intermediate_size
  ids, mask = text_batch
  with torch.no_grad():
    expected = official["qwen2"](input_ids=torch.from_numpy(ids),
                                 attention_mask=torch.from_numpy(mask)).logits.numpy()
  params = {"llm": official["params"]["llm"]}
  _check("official qwen llm logits", _llm_logits(config, params, ids, mask), expected,
         mask.astype(bool))


def test_official_audio_logits_match_reference_encoder(official):
  config, params = official["config"], official["params"]
  assert config.encoder.audio_bos_eos and config.encoder.cut_mel_to_batch_max
  qwen2 = official["qwen2"]
  audio_sd = {k[len("transformer.audio."):]: v for k, v in official["tensors"].items()
              if k.startswith("transformer.audio.")}

  # The longer clip has an odd mel length: 2 * T_max = mel_len + 1, so one padding frame enters
  # the convs. Large random padding frames make any difference in the batch-max cut visible.
  num_samples = [160 * 201, 160 * 120]
  mel = np.random.default_rng(7).normal(size=(2, 80, lengths.N_FRAMES)).astype(np.float32)
  for clip, n in enumerate(num_samples):
    mel[clip, :, lengths.mel_frames(n):] *= 100.0
  with torch.no_grad():
    spans = ref.qwen_audio_encoder_reference(audio_sd, torch.from_numpy(mel), num_samples,
                                             n_head=config.encoder.heads)
  n_audio = [int(lengths.audio_tokens(n)) for n in num_samples]
  assert [s.shape[0] for s in spans] == [n + 2 for n in n_audio]

  frames, counts = jax.jit(AudioEncoder(config).apply)(
      {"params": params["audio_encoder"]}, jnp.asarray(mel), jnp.asarray(num_samples))
  np.testing.assert_array_equal(counts, n_audio)
  bos, eos = np.asarray(params["audio_bos_eos"])
  ours_spans = np.concatenate([np.concatenate([bos[None], np.asarray(frames[i, :n]), eos[None]])
                               for i, n in enumerate(n_audio)])
  _check("official qwen-audio encoder spans", ours_spans,
         np.concatenate([s.numpy() for s in spans]))

  audio_start, audio_end, pad_token = 480, 481, 482  # <audio>, </audio>, audio pad ids
  prefixes, suffixes = [[5, 6], [9, 10, 11, 12]], [[40, 41, 42], [50, 51]]
  rows = [p + [audio_start] + [pad_token] * n + [audio_end] + s
          for p, n, s in zip(prefixes, n_audio, suffixes)]
  ids, mask = ref.padded_rows(rows)
  starts = [len(p) for p in prefixes]  # the <audio> tokens: the span is n_audio + 2 long
  with torch.no_grad():
    embeds = qwen2.model.embed_tokens(torch.from_numpy(ids)).clone()
    for b, (start, span) in enumerate(zip(starts, spans)):
      embeds[b, start:start + span.shape[0]] = span
    expected = qwen2(inputs_embeds=embeds, attention_mask=torch.from_numpy(mask)).logits.numpy()

  ours = jax.jit(QwenAudio(config).apply)(
      {"params": params}, jnp.asarray(ids, jnp.int32), segment_ids=jnp.asarray(mask, jnp.int32),
      audio_mel=jnp.asarray(mel)[:, None], audio_lengths=jnp.asarray([[n] for n in num_samples]),
      audio_starts=jnp.asarray([[s] for s in starts]))
  _check("official qwen-audio logits", ours, expected, mask.astype(bool))
