"""Log-mel features: parity with transformers' WhisperFeatureExtractor, host vs device paths."""

import jax
import numpy as np
import pytest
from transformers import WhisperFeatureExtractor
from transformers import audio_utils
import transformers.models.whisper.feature_extraction_whisper as whisper_fe

from qwen_audio_jax.audio import lengths
from qwen_audio_jax.audio import mel
from qwen_audio_jax.audio.io import pad_or_trim

HOST_TOLERANCE = 1e-5
DEVICE_TOLERANCE = 1e-4


def speech_like(num_samples: int, seed: int) -> np.ndarray:
  """Band-limited noise with a syllable-rate envelope, a tone, a quiet lead-in; float32."""
  rng = np.random.default_rng(seed)
  t = np.arange(num_samples) / lengths.SAMPLE_RATE
  noise = np.convolve(rng.standard_normal(num_samples), np.hanning(24), mode="same")
  envelope = 0.2 + np.abs(np.sin(2 * np.pi * 3.1 * t))
  wave = 0.05 * noise * envelope + 0.1 * np.sin(2 * np.pi * (180 + 40 * seed) * t)
  wave[: num_samples // 10] *= 1e-3
  return wave.astype(np.float32)


@pytest.fixture
def numpy_reference(monkeypatch):
  """WhisperFeatureExtractor forced onto its numpy path (it prefers torch when installed)."""
  monkeypatch.setattr(whisper_fe, "is_torch_available", lambda: False)

  def no_torch(*args, **kwargs):
    raise AssertionError("the torch path of WhisperFeatureExtractor ran")

  monkeypatch.setattr(WhisperFeatureExtractor, "_torch_extract_fbank_features", no_torch)

  def features(waves, n_mels):
    extractor = WhisperFeatureExtractor(feature_size=n_mels)
    return extractor(waves, sampling_rate=lengths.SAMPLE_RATE,
                     return_tensors="np").input_features
  return features


@pytest.mark.parametrize("n_mels", [80, 128])
def test_filter_bank_matches_transformers(n_mels):
  reference = audio_utils.mel_filter_bank(
      num_frequency_bins=mel.N_FREQS, num_mel_filters=n_mels, min_frequency=0.0,
      max_frequency=8000.0, sampling_rate=lengths.SAMPLE_RATE, norm="slaney",
      mel_scale="slaney").T
  ours = mel.mel_filters(n_mels)
  assert ours.shape == (n_mels, 201)
  np.testing.assert_allclose(ours, reference, rtol=1e-12, atol=1e-15)
  assert mel.mel_filters(n_mels) is ours  # cached
  assert not ours.flags.writeable


def test_window_is_periodic_hann():
  np.testing.assert_allclose(mel.hann_window(), np.hanning(mel.N_FFT + 1)[:-1], atol=1e-15)


@pytest.mark.parametrize("n_mels", [80, 128])
@pytest.mark.parametrize("seconds", [3, 30, 37])
def test_host_matches_whisper_feature_extractor(numpy_reference, n_mels, seconds):
  wave = speech_like(seconds * lengths.SAMPLE_RATE, seed=seconds)
  reference = numpy_reference(wave, n_mels)[0]
  ours = mel.log_mel_spectrogram(wave, n_mels=n_mels)
  assert ours.shape == (n_mels, lengths.N_FRAMES) and ours.dtype == np.float32
  diff = float(np.max(np.abs(ours - reference)))
  print(f"n_mels={n_mels} {seconds} s clip: max abs diff vs WhisperFeatureExtractor {diff:.2e}")
  assert diff <= HOST_TOLERANCE


@pytest.mark.parametrize("n_mels", [80, 128])
def test_host_batch_matches_whisper_feature_extractor(numpy_reference, n_mels):
  clips = [speech_like(n, seed=i) for i, n in enumerate([16_000, 100_000, 520_000])]
  reference = numpy_reference(clips, n_mels)
  ours = mel.log_mel_spectrogram(np.stack([pad_or_trim(c) for c in clips]), n_mels=n_mels)
  assert ours.shape == (3, n_mels, lengths.N_FRAMES)
  diff = float(np.max(np.abs(ours - reference)))
  print(f"n_mels={n_mels} batch of 3: max abs diff vs WhisperFeatureExtractor {diff:.2e}")
  assert diff <= HOST_TOLERANCE


def test_max_floor_is_per_clip():
  loud = speech_like(lengths.N_SAMPLES // 2, seed=1)
  quiet = 1e-2 * loud
  batch = mel.log_mel_spectrogram(np.stack([loud, quiet]))
  np.testing.assert_array_equal(batch[1], mel.log_mel_spectrogram(quiet))
  assert batch[0].max() - batch[1].max() == pytest.approx(1.0, abs=1e-3)  # 40 dB = 4 / 4
  # Each clip's own max sets its floor; its zero padding (log10 of the 1e-10 clamp = -10) sits
  # on it: (max(max - 8, -10) + 4) / 4.
  for clip in batch:
    assert clip.min() == pytest.approx(max(clip.max() - 2.0, -1.5), abs=1e-6)


def test_silence_and_dtypes():
  silence = mel.log_mel_spectrogram(np.zeros(1000, np.float32))
  np.testing.assert_allclose(silence, np.full((80, 3000), (-10.0 + 4.0) / 4.0), atol=1e-6)
  ints = np.round(speech_like(32_000, seed=3) * 32767).astype(np.int16)
  np.testing.assert_array_equal(mel.log_mel_spectrogram(ints),
                                mel.log_mel_spectrogram(ints.astype(np.float32)))


@pytest.mark.parametrize("dft", ["fft", "matmul"])
@pytest.mark.parametrize("n_mels", [80, 128])
def test_device_matches_host(n_mels, dft):
  waves = np.stack([pad_or_trim(speech_like(n, seed=i))
                    for i, n in enumerate([48_000, lengths.N_SAMPLES])])
  device_fn = jax.jit(lambda w: mel.log_mel_spectrogram_jax(w, n_mels=n_mels, dft=dft))
  device = np.asarray(device_fn(waves))
  host = mel.log_mel_spectrogram(waves, n_mels=n_mels)
  assert device.shape == (2, n_mels, lengths.N_FRAMES) and device.dtype == np.float32
  diff = float(np.max(np.abs(device - host)))
  print(f"n_mels={n_mels} dft={dft}: max abs diff device vs host {diff:.2e}")
  assert diff <= DEVICE_TOLERANCE


def test_device_leading_axes():
  waves = np.stack([pad_or_trim(speech_like(n, seed=i)) for i, n in enumerate([8000, 24_000])])
  flat = np.asarray(jax.jit(mel.log_mel_spectrogram_jax)(waves))
  nested = np.asarray(jax.jit(mel.log_mel_spectrogram_jax)(waves[:, None, :]))
  single = np.asarray(jax.jit(mel.log_mel_spectrogram_jax)(waves[1]))
  assert nested.shape == (2, 1, 80, 3000)
  np.testing.assert_array_equal(nested[:, 0], flat)
  np.testing.assert_allclose(single, flat[1], atol=1e-6)


def test_bad_arguments():
  with pytest.raises(ValueError, match="n_mels"):
    mel.mel_filters(0)
  with pytest.raises(ValueError, match="n_mels"):
    mel.log_mel_spectrogram(np.zeros(10), n_mels=80.0)
  with pytest.raises(ValueError, match="shape"):
    mel.log_mel_spectrogram(np.zeros((2, 3, 4)))
  with pytest.raises(ValueError, match="at least one sample"):
    mel.log_mel_spectrogram(np.zeros((2, 0)))
  with pytest.raises(ValueError, match="480000"):
    mel.log_mel_spectrogram_jax(np.zeros((2, 1000), np.float32))
  with pytest.raises(ValueError, match="dft"):
    mel.log_mel_spectrogram_jax(np.zeros(lengths.N_SAMPLES, np.float32), dft="cufft")


@pytest.mark.parametrize("num_samples", [100, 401, 16_000, 479_500, 479_700, 480_000])
def test_skipping_padding_frames_changes_nothing(num_samples, monkeypatch):
  wave = (np.random.default_rng(num_samples).normal(size=num_samples) * 0.1).astype(np.float32)
  fast = mel.log_mel_spectrogram(wave)
  monkeypatch.setattr(mel, "frames_touching_audio", lambda n: lengths.N_FRAMES)
  np.testing.assert_allclose(fast, mel.log_mel_spectrogram(wave), rtol=0, atol=1e-6)


@pytest.mark.parametrize("samples", [1, 150, 201, 399, 16_000, 479_599, 479_601, 480_000,
                                     500_000])
def test_frames_source_is_the_padded_windows_prefix(samples):
  """The host STFT reads only the prefix of the reflect-padded 30 s window that its frames
  touch; that prefix equals the whole padded window's, from tiny clips (the left reflection
  reaching into the zeros) to clips at the window's right edge and past 30 s."""
  clip = np.random.default_rng(samples).normal(size=samples).astype(np.float32)
  full = np.pad(pad_or_trim(clip).astype(np.float64), mel.N_FFT // 2, mode="reflect")
  for frames in {1, 2, mel.frames_touching_audio(min(samples, mel.N_SAMPLES)), mel.N_FRAMES}:
    source = mel._frames_source(clip, frames)  # pylint: disable=protected-access
    needed = (frames - 1) * mel.HOP_LENGTH + mel.N_FFT
    np.testing.assert_array_equal(source, full[:needed], err_msg=f"{frames} frames")
