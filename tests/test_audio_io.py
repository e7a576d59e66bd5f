"""Audio reading: formats, resampling, channel mixing, segments, and every failure mode."""

import numpy as np
import pytest
import soundfile as sf

from qwen_audio_jax.audio import io as audio_io
from qwen_audio_jax.audio import lengths
from qwen_audio_jax.audio.io import AudioError

RATE = lengths.SAMPLE_RATE


def tone(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
  t = np.arange(int(round(seconds * rate))) / rate
  return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(wave: np.ndarray, rate: int) -> float:
  spectrum = np.abs(np.fft.rfft(wave * np.hanning(wave.shape[0])))
  return float(np.argmax(spectrum) * rate / wave.shape[0])


def write(path, data, rate, **kwargs):
  sf.write(str(path), data, rate, **kwargs)
  return str(path)


def expected_length(num_samples: int, rate: int) -> int:
  return int(round(num_samples * RATE / rate))


# One entry per format: (file name, soundfile kwargs, source rate, lossless).
FORMATS = [
    ("int16.wav", dict(format="WAV", subtype="PCM_16"), 16_000, True),
    ("clip.flac", dict(format="FLAC", subtype="PCM_16"), 22_050, True),
    ("clip.ogg", dict(format="OGG", subtype="VORBIS"), 44_100, False),
    ("clip.opus", dict(format="OGG", subtype="OPUS"), 48_000, False),
    ("clip.mp3", dict(format="MP3", subtype="MPEG_LAYER_III"), 44_100, False),
    ("low.wav", dict(format="WAV", subtype="PCM_16"), 8_000, True),
]


@pytest.mark.parametrize("name, kwargs, rate, lossless", FORMATS,
                         ids=[f[0] for f in FORMATS])
def test_formats_keep_frequency_and_length(tmp_path, name, kwargs, rate, lossless):
  source = tone(1000.0, 1.0, rate)
  path = write(tmp_path / name, source, rate, **kwargs)
  wave = audio_io.load_audio(path)
  assert wave.dtype == np.float32 and wave.ndim == 1
  assert abs(wave.shape[0] - expected_length(source.shape[0], rate)) <= 1
  assert peak_hz(wave, RATE) == pytest.approx(1000.0, abs=2.0)
  if lossless and rate == RATE:
    np.testing.assert_allclose(wave, source, atol=1.0 / 32768)
  native = audio_io.load_audio(path, sample_rate=rate)
  assert native.shape[0] == source.shape[0]
  assert audio_io.duration_seconds(path) == pytest.approx(1.0, abs=1e-3)


def test_int16_wav_is_exact(tmp_path):
  samples = np.random.default_rng(0).integers(-32768, 32767, 4000, dtype=np.int16)
  path = write(tmp_path / "pcm.wav", samples, RATE, subtype="PCM_16")
  np.testing.assert_array_equal(audio_io.load_audio(path), samples.astype(np.float32) / 32768)


def test_stereo_44k_is_averaged_then_resampled(tmp_path):
  rate = 44_100
  left, right = tone(440.0, 1.0, rate, 0.6), tone(2000.0, 1.0, rate, 0.2)
  path = write(tmp_path / "stereo.wav", np.stack([left, right], axis=1), rate, subtype="FLOAT")
  native = audio_io.load_audio(path, sample_rate=rate)
  np.testing.assert_allclose(native, (left + right) / 2, atol=1e-7)
  wave = audio_io.load_audio(path)
  assert abs(wave.shape[0] - expected_length(left.shape[0], rate)) <= 1
  assert peak_hz(wave, RATE) == pytest.approx(440.0, abs=2.0)
  # Both tones survive with their relative levels (0.3 and 0.1 after averaging).
  spectrum = np.abs(np.fft.rfft(wave)) * 2 / wave.shape[0]
  assert spectrum[440] == pytest.approx(0.3, rel=0.02)
  assert spectrum[2000] == pytest.approx(0.1, rel=0.02)


def test_multichannel_average(tmp_path):
  data = np.stack([tone(300.0 * (c + 1), 0.25, RATE, 0.1 * (c + 1)) for c in range(4)], axis=1)
  path = write(tmp_path / "quad.wav", data, RATE, subtype="FLOAT")
  np.testing.assert_allclose(audio_io.load_audio(path), data.mean(axis=1), atol=1e-7)


def test_resampling_is_band_limited(tmp_path):
  # A 10 kHz tone cannot exist at 16 kHz: a proper resampler removes it instead of aliasing it
  # to 6 kHz.
  path = write(tmp_path / "high.wav", tone(10_000.0, 1.0, 44_100), 44_100, subtype="FLOAT")
  wave = audio_io.load_audio(path)
  assert np.sqrt(np.mean(wave[1000:-1000] ** 2)) < 1e-4


@pytest.mark.parametrize("name, kwargs, rate", [
    ("seg.wav", dict(subtype="PCM_16"), 16_000),
    ("seg.flac", dict(format="FLAC"), 44_100),
    ("seg.ogg", dict(format="OGG", subtype="VORBIS"), 44_100),
    ("seg.opus", dict(format="OGG", subtype="OPUS"), 48_000),
    ("seg.mp3", dict(format="MP3"), 44_100),
], ids=["wav", "flac", "vorbis", "opus", "mp3"])
def test_segment_equals_slice_of_full_read(tmp_path, name, kwargs, rate):
  # A pure tone is the hard case for MP3, whose seek is not sample-accurate in libsndfile.
  source = tone(440.0, 3.0, rate)
  source[rate:] += tone(3000.0, 2.0, rate, 0.2)
  path = write(tmp_path / name, source, rate, **kwargs)
  full = audio_io.load_audio(path, sample_rate=rate)
  for start, end in [(0.5, 1.25), (1.0, None), (None, 0.75), (2.2, 2.9)]:
    segment = audio_io.load_audio(path, start=start, end=end, sample_rate=rate)
    first = 0 if start is None else round(start * rate)
    last = full.shape[0] if end is None else round(end * rate)
    np.testing.assert_allclose(segment, full[first:last], atol=1e-6,
                               err_msg=f"{name} [{start}, {end})")
  resampled = audio_io.load_audio(path, start=0.5, end=1.25)
  assert abs(resampled.shape[0] - round(0.75 * RATE)) <= 1


def test_decode_audio_matches_load_audio(tmp_path):
  rate = 22_050
  data = np.stack([tone(440.0, 1.0, rate), tone(550.0, 1.0, rate)], axis=1)
  path = write(tmp_path / "x.flac", data, rate)
  blob = (tmp_path / "x.flac").read_bytes()
  for start, end in [(None, None), (0.1, 0.6)]:
    np.testing.assert_array_equal(
        audio_io.decode_audio(blob, name="x.flac", start=start, end=end),
        audio_io.load_audio(path, start=start, end=end))


def test_pad_or_trim():
  wave = np.arange(1, 6, dtype=np.float32)
  np.testing.assert_array_equal(audio_io.pad_or_trim(wave, 8), [1, 2, 3, 4, 5, 0, 0, 0])
  np.testing.assert_array_equal(audio_io.pad_or_trim(wave, 3), [1, 2, 3])
  assert audio_io.pad_or_trim(wave, 5) is wave
  batch = np.ones((2, 3, 7), np.int16)
  padded = audio_io.pad_or_trim(batch, 10)
  assert padded.shape == (2, 3, 10) and padded.dtype == np.int16
  assert padded[..., 7:].sum() == 0 and padded[..., :7].sum() == 42
  assert audio_io.pad_or_trim(np.zeros(10)).shape == (lengths.N_SAMPLES,)
  assert audio_io.pad_or_trim(np.zeros(lengths.N_SAMPLES + 7)).shape == (lengths.N_SAMPLES,)
  with pytest.raises(ValueError, match="length"):
    audio_io.pad_or_trim(wave, 0)
  with pytest.raises(ValueError, match="scalar"):
    audio_io.pad_or_trim(np.float32(1.0))


# ----------------------------------------------------------------------------- failures


def assert_audio_error(match, fn, *args, **kwargs):
  with pytest.raises(AudioError, match=match) as info:
    fn(*args, **kwargs)
  return str(info.value)


def test_missing_file(tmp_path):
  path = str(tmp_path / "nope.wav")
  message = assert_audio_error("no such file", audio_io.load_audio, path)
  assert "nope.wav" in message
  assert "nope.wav" in assert_audio_error("no such file", audio_io.duration_seconds, path)


def test_garbage_bytes(tmp_path):
  path = tmp_path / "garbage.wav"
  path.write_bytes(np.random.default_rng(0).bytes(2000))
  message = assert_audio_error("unreadable or unsupported", audio_io.load_audio, str(path))
  assert "garbage.wav" in message
  assert_audio_error("clip-7.flac: unreadable", audio_io.decode_audio, path.read_bytes(),
                     name="clip-7.flac")


def test_empty_file_and_no_samples(tmp_path):
  empty = tmp_path / "empty.flac"
  empty.write_bytes(b"")
  assert "empty.flac" in assert_audio_error("empty file", audio_io.load_audio, str(empty))
  assert_audio_error("empty.flac: empty file", audio_io.duration_seconds, str(empty))
  assert_audio_error("mem: empty file", audio_io.decode_audio, b"", name="mem")
  header_only = write(tmp_path / "header.wav", np.zeros((0,), np.float32), RATE)
  assert "header.wav" in assert_audio_error("no audio samples", audio_io.load_audio, header_only)


def test_non_finite_samples(tmp_path):
  data = tone(440.0, 0.1, RATE)
  data[10], data[20] = np.nan, np.inf
  path = write(tmp_path / "nan.wav", data, RATE, subtype="FLOAT")
  message = assert_audio_error("2 NaN or infinite samples", audio_io.load_audio, path)
  assert "nan.wav" in message
  # A segment that avoids the bad samples is fine.
  assert audio_io.load_audio(path, start=0.05).shape[0] == 800


def test_directory(tmp_path):
  assert_audio_error(str(tmp_path), audio_io.load_audio, tmp_path)


@pytest.mark.parametrize("start, end, match", [
    (-0.5, None, "start=-0.5 s is outside"),
    (1.0, None, "start=1.0 s is outside"),
    (2.5, 3.0, "start=2.5 s is outside"),
    (None, 1.5, "end=1.5 s is outside"),
    (0.2, 1.2, "end=1.2 s is outside"),
    (0.5, 0.5, "empty segment"),
    (0.6, 0.4, "empty segment"),
    (0.5, 0.50001, "empty segment"),
    (float("nan"), None, "start must be a finite number"),
    (None, "1.0", "end must be a finite number"),
])
def test_bad_segments(tmp_path, start, end, match):
  path = write(tmp_path / "one_second.wav", tone(440.0, 1.0, RATE), RATE)
  message = assert_audio_error(match, audio_io.load_audio, path, start=start, end=end)
  assert "one_second.wav" in message


def test_bad_sample_rate(tmp_path):
  path = write(tmp_path / "r.wav", tone(440.0, 0.1, RATE), RATE)
  assert_audio_error("r.wav: sample_rate must be a positive int", audio_io.load_audio, path,
                     sample_rate=0)
  assert_audio_error("blob: sample_rate", audio_io.decode_audio, b"xx", name="blob",
                     sample_rate=16000.0)


def test_errors_are_value_errors():
  assert issubclass(AudioError, ValueError)
