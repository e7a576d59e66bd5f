"""Audio-length buckets: the bucket choice, features over a bucket equal the prefix of the 30 s
features, and the model's logits for clips padded to a bucket equal those padded to 30 s."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qwen_audio_jax import config as C
from qwen_audio_jax.audio import buckets, lengths, mel
from qwen_audio_jax.data import batching
from qwen_audio_jax.data.global_batch import pad_audio_length
from qwen_audio_jax.data.transforms import Example
from qwen_audio_jax.model.encoder import AudioEncoder
from qwen_audio_jax.model.params import init_params
from qwen_audio_jax.model.qwen_audio import QwenAudio

SAMPLES = buckets.bucket_samples((5.0, 10.0, 15.0, 20.0, 30.0))
FIVE = 5 * lengths.SAMPLE_RATE
# m = L // 160 mel frames. 498 (even): the last valid encoder frame reads frame 498; 497 (odd):
# 2T = 498 exceeds the clip's mel length by one frame and frame 498 is read too.
EVEN_EDGE = 160 * 499 - 1  # m = 498: the longest clip of the 5 s bucket (needs 499 frames)
ODD_EDGE = 160 * 497 + 13  # m = 497


def test_bucket_is_the_smallest_that_holds_every_frame_the_encoder_reads():
  assert buckets.frames_needed(EVEN_EDGE) == 499 and buckets.frames_needed(ODD_EDGE) == 499
  assert buckets.audio_bucket_for(EVEN_EDGE, SAMPLES) == FIVE
  assert buckets.audio_bucket_for(ODD_EDGE, SAMPLES) == FIVE
  assert buckets.audio_bucket_for(EVEN_EDGE + 1, SAMPLES) == 2 * FIVE  # m = 499: 501 frames
  assert buckets.audio_bucket_for(FIVE, SAMPLES) == 2 * FIVE
  assert buckets.audio_bucket_for(lengths.N_SAMPLES, SAMPLES) == lengths.N_SAMPLES
  assert buckets.audio_bucket_for(0, SAMPLES) == FIVE  # an empty slot
  assert buckets.batch_bucket([16000, 0, 200_000], SAMPLES) == 15 * lengths.SAMPLE_RATE
  assert buckets.batch_bucket([], SAMPLES) == FIVE
  with pytest.raises(ValueError, match="longer than the 30 s window"):
    buckets.audio_bucket_for(lengths.N_SAMPLES + 1, SAMPLES)
  # The default grid: a 5.0-7.48 s clip takes the 7.5 s bucket, 20-25 s the 25 s one.
  default = buckets.bucket_samples(buckets.DEFAULT_SECONDS)
  assert buckets.audio_bucket_for(EVEN_EDGE + 1, default) == 7.5 * lengths.SAMPLE_RATE
  assert buckets.audio_bucket_for(22 * lengths.SAMPLE_RATE, default) == 25 * lengths.SAMPLE_RATE


@pytest.mark.parametrize("seconds,message", [
    ((5, 10), "largest bucket must be the whole 30 s"), ((10, 5, 30), "strictly increasing"),
    ((5.01, 30), "multiple of 20 ms"), ((), "at least one bucket")])
def test_bad_buckets_are_refused_with_the_key(seconds, message):
  with pytest.raises(ValueError, match=f"data.audio_buckets.*{message}"):
    buckets.bucket_samples(seconds, "data.audio_buckets")


@pytest.mark.parametrize("num_samples", [3_000, ODD_EDGE, EVEN_EDGE, 200_000, lengths.N_SAMPLES])
def test_bucket_features_are_the_prefix_of_the_30s_features(num_samples):
  wave = (0.1 * np.random.default_rng(num_samples).normal(size=num_samples)).astype(np.float32)
  full = mel.log_mel_spectrogram(wave)
  kept = min(lengths.N_FRAMES, mel.frames_touching_audio(num_samples))
  touching = mel.log_mel_spectrogram(wave, num_frames=kept)  # what an Example carries
  np.testing.assert_array_equal(touching, full[:, :kept])
  for bucket in SAMPLES:
    if bucket < buckets.audio_bucket_for(num_samples, SAMPLES):
      continue
    frames = bucket // lengths.HOP_LENGTH
    np.testing.assert_allclose(mel.fit_frames(touching, frames), full[:, :frames], rtol=0,
                               atol=2e-7)
    padded = np.zeros(bucket, np.float32)
    padded[:num_samples] = wave
    device = np.asarray(jax.jit(mel.log_mel_spectrogram_jax)(jnp.asarray(padded)))
    assert device.shape == (80, frames)
    np.testing.assert_allclose(device, full[:, :frames], rtol=0, atol=1e-4)


def _example(clip_samples, index=0):
  wave = (0.1 * np.random.default_rng(index).normal(size=clip_samples)).astype(np.float32)
  kept = min(lengths.N_FRAMES, mel.frames_touching_audio(clip_samples))
  return Example(task_id=0, input_ids=np.arange(6, dtype=np.int32) + 10,
                 target_mask=np.ones(6, bool), clips=[mel.log_mel_spectrogram(wave, 8, kept)],
                 clip_lengths=np.asarray([clip_samples], np.int32),
                 audio_starts=np.zeros(1, np.int32), origin=f"ex{index}"), wave


@pytest.mark.parametrize("features", ["mel", "waveform"])
def test_batch_takes_the_bucket_of_its_longest_clip(features):
  builder = batching.BatchBuilder(rows_per_batch=3, buckets=(8,), max_clips=1,
                                  features=features, n_mels=8, audio_buckets=SAMPLES)
  (short, short_wave), (long, _) = _example(16_000, 0), _example(ODD_EDGE + 1000, 1)
  if features == "waveform":
    short.clips, long.clips = [short_wave], [np.ones(ODD_EDGE + 1000, np.float32)]
  key = "audio_mel" if features == "mel" else "audio_wave"
  assert builder([[short]])[0][key].shape[-1] == FIVE // (160 if features == "mel" else 1)
  batch = builder([[short], [long]])[0]
  expected = (2 * FIVE) // (160 if features == "mel" else 1)
  assert batch[key].shape == ((3, 1, 8, expected) if features == "mel" else (3, 1, expected))
  if features == "mel":  # the short clip: the first frames of its own 30 s features
    full = mel.log_mel_spectrogram(short_wave, 8)
    np.testing.assert_allclose(batch[key][0, 0], full[:, :expected], rtol=0, atol=2e-7)
  else:
    np.testing.assert_array_equal(batch[key][0, 0, :16_000], short_wave)
    assert not batch[key][0, 0, 16_000:].any()
  assert not batch[key][2].any()  # padding row
  # Padding to a larger bucket (processes agreeing on one) keeps the same prefix property.
  wider = pad_audio_length(batch, lengths.N_SAMPLES)[key]
  np.testing.assert_array_equal(wider[..., :expected], batch[key])
  if features == "mel":
    np.testing.assert_allclose(wider[0, 0], mel.log_mel_spectrogram(short_wave, 8), atol=2e-7)
  assert not wider[2].any()


SMALL = dataclasses.replace(
    C.TINY,
    encoder=dataclasses.replace(C.TINY.encoder, width=32, heads=4, mlp_dim=64, output_dim=48),
    llm=dataclasses.replace(C.TINY.llm, vocab_size=512, width=48, heads=4, kv_heads=2,
                            head_dim=12, mlp_dim=96),
)


@pytest.mark.parametrize("cut", [True, False], ids=["qwen_audio_cut", "qwen2_audio_full"])
def test_logits_for_a_bucket_equal_logits_for_30s(cut):
  config = dataclasses.replace(
      SMALL, encoder=dataclasses.replace(SMALL.encoder, cut_mel_to_batch_max=cut))
  params = nn.unbox(init_params(config, jax.random.key(0)))
  clip_samples = [EVEN_EDGE, ODD_EDGE]
  waves = [(0.1 * np.random.default_rng(i).normal(size=n)).astype(np.float32)
           for i, n in enumerate(clip_samples)]
  full = np.stack([mel.log_mel_spectrogram(w) for w in waves])[:, None]  # [2, 1, 80, 3000]
  bucket = buckets.batch_bucket(clip_samples, SAMPLES)
  assert bucket == FIVE
  cut_mel = full[..., :bucket // lengths.HOP_LENGTH]
  spans = [lengths.audio_span(n) for n in clip_samples]
  length = max(spans) + 6
  ids = np.random.default_rng(9).integers(0, 500, (2, length)).astype(np.int32)
  segments = np.zeros((2, length), np.int32)
  for row, span in enumerate(spans):
    segments[row, :span + 4 + row] = 1
  inputs = dict(segment_ids=jnp.asarray(segments),
                audio_lengths=jnp.asarray(np.asarray(clip_samples, np.int32)[:, None]),
                audio_starts=jnp.asarray([[1], [2]], jnp.int32))
  apply = jax.jit(QwenAudio(config).apply)
  thirty = np.asarray(apply({"params": params}, jnp.asarray(ids), audio_mel=jnp.asarray(full),
                            **inputs))
  bucketed = np.asarray(apply({"params": params}, jnp.asarray(ids),
                              audio_mel=jnp.asarray(cut_mel), **inputs))
  valid = segments.astype(bool)
  np.testing.assert_allclose(bucketed[valid], thirty[valid], rtol=0, atol=1e-5)
  # Every frame up to the last one read counts: frame 2T (Qwen2-Audio) or 2T - 1 (Qwen-Audio,
  # whose cut zeroes frame 2T). Seen on the encoder's unpooled frames: equal with those frames,
  # different with one frame fewer.
  whisper = dataclasses.replace(config, encoder=dataclasses.replace(
      config.encoder, avg_pool=False, output_dim=None, audio_bos_eos=False))
  encoder = AudioEncoder(whisper)
  enc_params = nn.unbox(encoder.init(jax.random.key(1), jnp.zeros((1, 80, 3000)), None))
  n = jnp.asarray([EVEN_EDGE], jnp.int32)
  frames = int(lengths.encoder_frames(EVEN_EDGE))
  encode = jax.jit(lambda m: encoder.apply(enc_params, m, n)[0][0, :frames])
  reference = np.asarray(encode(jnp.asarray(full[:1, 0])))
  read = 2 * frames + (0 if cut else 1)
  np.testing.assert_allclose(np.asarray(encode(jnp.asarray(full[:1, 0, :, :read]))), reference,
                             rtol=0, atol=1e-5)
  fewer = np.asarray(encode(jnp.asarray(full[:1, 0, :, :read - 1])))
  assert np.abs(fewer[-1] - reference[-1]).max() > 1e-3
