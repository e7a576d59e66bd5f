"""Whisper log-mel features: one definition, a host (numpy) path and an on-device (JAX) path.

The definition (openai-whisper's `whisper/audio.py` `log_mel_spectrogram`, which
`transformers.WhisperFeatureExtractor` reproduces):
a 30 s clip (N_SAMPLES samples at 16 kHz, padded or cut first) -> centred STFT with reflect
padding, n_fft 400, hop 160, periodic Hann window -> power spectrum -> the last frame dropped
(N_FRAMES = 3000 frames) -> slaney mel filters (0-8000 Hz, slaney area normalisation, 80 or 128
bins) -> log10(max(mel, 1e-10)) -> floored at (clip max - 8) -> (x + 4) / 4. The max is taken
per clip over its whole padded spectrogram, which is why features cannot be computed on a
clip's valid part alone.

Both paths share the constants (from `lengths`), the window and the filter bank built here, so
they cannot drift apart:

* `log_mel_spectrogram` (host, numpy) for data preparation and evaluation. It frames the signal
  with a strided view and runs batched float64 `rfft`s over cache-sized chunks of frames: float32
  FFTs put bins just above the (max - 8) floor of tonal clips past the 1e-5 budget against the
  reference (a 440 Hz tone over noise 60 dB down: 1.7e-5 with numpy's float32 rfft, 1.5e-4 with
  the float32 torch path of WhisperFeatureExtractor).
* `log_mel_spectrogram_jax` (device) runs inside the jitted train step, so hosts only ship raw
  16 kHz waveforms and the featurisation cost moves from the host CPUs (often the bottleneck of
  a TPU / GPU input pipeline) to the accelerator. Its STFT is `jnp.fft.rfft` on CPU / GPU and a
  matmul against a windowed cos / sin basis on TPU (FFTs are slow there; the MXU is not), at
  `Precision.HIGHEST` so TPUs do not round it to bfloat16.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from qwen_audio_jax.audio import io as audio_io
from qwen_audio_jax.audio import lengths

N_FFT = lengths.N_FFT
HOP_LENGTH = lengths.HOP_LENGTH
N_SAMPLES = lengths.N_SAMPLES
N_FRAMES = lengths.N_FRAMES
N_FREQS = N_FFT // 2 + 1  # 201 one-sided frequency bins
MEL_FMIN = 0.0
MEL_FMAX = 8000.0
LOG_FLOOR = 1e-10  # log10(max(mel, LOG_FLOOR))
DYNAMIC_RANGE = 8.0  # floor at (clip max - 8), in log10 units
SUPPORTED_N_MELS = (80, 128)  # Whisper-large-v2 / Qwen-Audio and Whisper-large-v3 / Qwen2-Audio

_PAD = N_FFT // 2  # centred frames: reflect-pad n_fft / 2 on each side


def _check_n_mels(n_mels) -> int:
  if isinstance(n_mels, bool) or not isinstance(n_mels, (int, np.integer)) or n_mels < 1:
    raise ValueError(f"n_mels: expected a positive int (80 or 128 for Whisper), got {n_mels!r}")
  return int(n_mels)


def hann_window() -> np.ndarray:
  """Periodic Hann window of N_FFT points (float64), as torch.hann_window / Whisper use."""
  n = np.arange(N_FFT, dtype=np.float64)
  return 0.5 - 0.5 * np.cos(2.0 * np.pi * n / N_FFT)


def _hz_to_mel_slaney(hz: np.ndarray) -> np.ndarray:
  """Slaney's Auditory Toolbox scale: linear below 1 kHz, logarithmic above."""
  hz = np.asarray(hz, np.float64)
  linear = 3.0 * hz / 200.0
  log_step = np.log(6.4) / 27.0
  logarithmic = 15.0 + np.log(np.maximum(hz, 1e-12) / 1000.0) / log_step
  return np.where(hz >= 1000.0, logarithmic, linear)


def _mel_to_hz_slaney(mel: np.ndarray) -> np.ndarray:
  mel = np.asarray(mel, np.float64)
  linear = 200.0 * mel / 3.0
  log_step = np.log(6.4) / 27.0
  logarithmic = 1000.0 * np.exp(log_step * (mel - 15.0))
  return np.where(mel >= 15.0, logarithmic, linear)


@functools.lru_cache(maxsize=None)
def _mel_filters_cached(n_mels: int) -> np.ndarray:
  fft_hz = np.linspace(0.0, lengths.SAMPLE_RATE / 2, N_FREQS)
  mel_edges = np.linspace(_hz_to_mel_slaney(MEL_FMIN), _hz_to_mel_slaney(MEL_FMAX), n_mels + 2)
  hz_edges = _mel_to_hz_slaney(mel_edges)
  widths = np.diff(hz_edges)  # [n_mels + 1]
  offsets = hz_edges[:, None] - fft_hz[None, :]  # [n_mels + 2, N_FREQS]
  rising = -offsets[:-2] / widths[:-1, None]
  falling = offsets[2:] / widths[1:, None]
  filters = np.maximum(0.0, np.minimum(rising, falling))
  filters *= (2.0 / (hz_edges[2:] - hz_edges[:-2]))[:, None]  # slaney: unit area per filter
  filters.setflags(write=False)
  return filters


def mel_filters(n_mels: int) -> np.ndarray:
  """Slaney mel filter bank [n_mels, 201] (float64, read-only), computed once per n_mels.

  Equal to librosa.filters.mel(sr=16000, n_fft=400, n_mels=n_mels) (the bank Whisper ships in
  mel_filters.npz), so no asset has to be downloaded or packaged.
  """
  return _mel_filters_cached(_check_n_mels(n_mels))


def _as_waves(wave, what: str) -> np.ndarray:
  wave = np.asarray(wave)
  if wave.ndim not in (1, 2) or wave.shape[-1] == 0:
    raise ValueError(
        f"{what}: expected a waveform [samples] or a batch [batch, samples] with at least one "
        f"sample, got shape {wave.shape}")
  if not (np.issubdtype(wave.dtype, np.floating) or np.issubdtype(wave.dtype, np.integer)):
    raise ValueError(f"{what}: expected real-valued samples, got dtype {wave.dtype}")
  return wave


def _floor_and_scale(log_mel, xp):
  """Per-clip dynamic-range floor and Whisper's affine scaling, on [..., n_mels, frames]."""
  clip_max = xp.max(log_mel, axis=(-2, -1), keepdims=True)
  log_mel = xp.maximum(log_mel, clip_max - DYNAMIC_RANGE)
  return (log_mel + 4.0) / 4.0


_HOST_CHUNK_FRAMES = 200  # frames per rfft call: keeps the float64 working set in L2 (2x faster)


def _reflect_pad(clip: np.ndarray) -> np.ndarray:
  """float64 copy of a 1-D clip reflect-padded by N_FFT / 2 (as np.pad(mode="reflect"))."""
  padded = np.empty(clip.shape[0] + 2 * _PAD, np.float64)
  padded[_PAD:-_PAD] = clip
  padded[:_PAD] = clip[_PAD:0:-1]
  padded[-_PAD:] = clip[-2:-_PAD - 2:-1]
  return padded


def _frames_source(clip: np.ndarray, num_frames: int) -> np.ndarray:
  """The float64 samples that the first `num_frames` centred frames of a clip's 30 s window
  read: the window (the clip, cut at 30 s, zero after it) reflect-padded by N_FFT / 2 at both
  ends, as its first (num_frames - 1) * HOP_LENGTH + N_FFT samples.

  Only that prefix is built. The frames that touch a short clip never reach the window's
  reflect-padded right edge, so neither the 30 s window nor its padded copy (2 MB + 4 MB per
  clip, most of the host mel's time on demo clips) is needed.
  """
  needed = (num_frames - 1) * HOP_LENGTH + N_FFT
  clip = clip[:N_SAMPLES]
  if needed > N_SAMPLES + _PAD or needed <= N_FFT:  # the right edge is read, or one frame only
    return _reflect_pad(audio_io.pad_or_trim(clip, N_SAMPLES))[:needed]
  source = np.zeros(needed, np.float64)
  kept = min(clip.shape[0], needed - _PAD)
  source[_PAD:_PAD + kept] = clip[:kept]
  source[:_PAD] = source[2 * _PAD:_PAD:-1]  # reflect about the window's first sample
  return source


def _power_spectrum_host(clip: np.ndarray, num_frames: int = N_FRAMES) -> np.ndarray:
  """|rfft(frame * window)|^2 of the first `num_frames` centred frames of the clip's 30 s
  window: [num_frames, N_FREQS]."""
  frames = np.lib.stride_tricks.sliding_window_view(
      _frames_source(clip, num_frames), N_FFT)[::HOP_LENGTH]
  window = hann_window()
  power = np.empty((num_frames, N_FREQS), np.float32)
  windowed = np.empty((_HOST_CHUNK_FRAMES, N_FFT), np.float64)
  for first in range(0, num_frames, _HOST_CHUNK_FRAMES):
    last = min(first + _HOST_CHUNK_FRAMES, num_frames)
    chunk = windowed[:last - first]
    np.multiply(frames[first:last], window, out=chunk)
    spectrum = np.fft.rfft(chunk, axis=-1)
    chunk_power = np.square(spectrum.real)
    chunk_power += np.square(spectrum.imag)
    power[first:last] = chunk_power
  return power


def frames_touching_audio(num_samples: int) -> int:
  """Frames of a 30 s window whose STFT window overlaps the first `num_samples` samples.

  Every later frame sees only the zero padding (also in its reflect-padded right edge, as long as
  the clip ends more than N_FFT samples before 30 s), so its power spectrum is exactly zero and
  its log-mel exactly log10(LOG_FLOOR) before the floor: those frames need no FFT.
  """
  if num_samples >= N_SAMPLES - N_FFT:
    return N_FRAMES
  return min(N_FRAMES, (num_samples + _PAD) // HOP_LENGTH + 2)


def _check_num_frames(num_frames) -> int:
  if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) or not (
      0 < num_frames <= N_FRAMES):
    raise ValueError(f"num_frames: expected an int in [1, {N_FRAMES}], got {num_frames!r}")
  return int(num_frames)


def silent_level(mel):
  """Feature value of a frame that sees only zero padding, per clip of [..., n_mels, frames]
  features: log10(LOG_FLOOR) floored at (clip max - 8), scaled (equal to within 1 ulp)."""
  xp = jnp if isinstance(mel, jax.Array) else np
  floor = (np.log10(np.float32(LOG_FLOOR)) + 4.0) / 4.0
  return xp.maximum(xp.max(mel, axis=(-2, -1), keepdims=True) - DYNAMIC_RANGE / 4.0, floor)


def fit_frames(mel: np.ndarray, num_frames: int) -> np.ndarray:
  """Host features [..., n_mels, F] cut or extended to `num_frames` frames.

  Extension fills each clip's silent level, so given the frames that touch audio
  (`frames_touching_audio`, as `ExampleBuilder` keeps them) the result is exactly the first
  `num_frames` frames of the clip's 30 s features.
  """
  frames = mel.shape[-1]
  if num_frames <= frames:
    return mel[..., :num_frames]
  out = np.empty(mel.shape[:-1] + (num_frames,), mel.dtype)
  out[..., :frames] = mel
  out[..., frames:] = silent_level(mel)
  return out


def log_mel_spectrogram(wave, n_mels: int = 80, num_frames: int = N_FRAMES) -> np.ndarray:
  """Host log-mel features of one clip [samples] -> [n_mels, F] or a batch -> [B, n_mels, F].

  Each clip is padded / cut to 30 s first (the 30 s rule), so inputs of any length are accepted.
  Matches `transformers.WhisperFeatureExtractor(feature_size=n_mels)` (numpy path) to ~1e-6.
  Samples are taken as float32 first, as every reference does.

  num_frames: F, the first frames of the 30 s features to return (all 3000 by default; an audio
  bucket's frames, see `audio.buckets`). The per-clip max behind the (max - 8) floor is still
  that of the whole window, so the values are those of the full features.
  """
  n_mels = _check_n_mels(n_mels)
  num_frames = _check_num_frames(num_frames)
  wave = _as_waves(wave, "log_mel_spectrogram: wave")
  single = wave.ndim == 1
  # Each clip's 30 s window is read through `_frames_source`, which pads or cuts it.
  waves = wave.astype(np.float32, copy=False).reshape(-1, wave.shape[-1])
  filters = mel_filters(n_mels).astype(np.float32)
  # Frames past the clip's samples see only zero padding: their value is known without an FFT,
  # and it is the window's minimum, so the max runs over the frames that touch audio alone.
  active = frames_touching_audio(min(wave.shape[-1], N_SAMPLES))
  silent = np.log10(np.maximum(np.zeros((), np.float32), LOG_FLOOR))
  kept = min(active, num_frames)
  out = np.empty((waves.shape[0], n_mels, num_frames), np.float32)
  for i, clip in enumerate(waves):
    log_mel = np.log10(np.maximum(filters @ _power_spectrum_host(clip, active).T, LOG_FLOOR))
    floor = max(float(log_mel.max()), float(silent)) - DYNAMIC_RANGE
    out[i, :, :kept] = np.maximum(log_mel[:, :kept], np.float32(floor))
    out[i, :, kept:] = max(silent, np.float32(floor))
  out += 4.0
  out /= 4.0
  return out[0] if single else out


@functools.lru_cache(maxsize=None)
def _dft_basis() -> np.ndarray:
  """Windowed real DFT basis [N_FFT, 2 * N_FREQS]: frames @ basis = [Re | Im] of the rfft."""
  n = np.arange(N_FFT, dtype=np.float64)[:, None]
  k = np.arange(N_FREQS, dtype=np.float64)[None, :]
  phase = 2.0 * np.pi * ((n * k) % N_FFT) / N_FFT  # reduced mod N_FFT: exact angles
  window = hann_window()[:, None]
  basis = np.concatenate([window * np.cos(phase), -window * np.sin(phase)], axis=1)
  basis.setflags(write=False)
  return basis


def _frames_jax(waves: jax.Array, num_frames: int = N_FRAMES) -> jax.Array:
  """The first `num_frames` centred STFT frames [..., num_frames, N_FFT] of the 30 s window
  that starts with `waves` [..., S] (zero beyond), without a gather.

  Frame t covers padded samples [160 t, 160 t + 400): hop-sized blocks t, t + 1 and the first
  80 samples of block t + 2, so three shifted slices of a [blocks, 160] reshape and a concat
  build all frames with contiguous copies only (gathers are slow on TPU). Only the window's last
  frames reach its right edge (reflect padding); earlier ones see the zeros after the clip.
  """
  n_blocks = num_frames + 2
  total = n_blocks * HOP_LENGTH
  lead = [(0, 0)] * (waves.ndim - 1)
  left = jnp.flip(waves[..., 1:_PAD + 1], axis=-1)  # reflect padding at the window's start
  if total - _PAD >= N_SAMPLES:  # the frames reach the window's reflect-padded right edge
    window = jnp.pad(waves, lead + [(0, N_SAMPLES - waves.shape[-1])])
    padded = jnp.pad(window, lead + [(_PAD, _PAD)], mode="reflect")
  else:
    padded = jnp.concatenate([left, waves], axis=-1)
  padded = jnp.pad(padded, lead + [(0, max(0, total - padded.shape[-1]))])[..., :total]
  blocks = padded.reshape(*padded.shape[:-1], n_blocks, HOP_LENGTH)
  rest = N_FFT - 2 * HOP_LENGTH
  return jnp.concatenate(
      [blocks[..., 0:num_frames, :], blocks[..., 1:num_frames + 1, :],
       blocks[..., 2:num_frames + 2, :rest]], axis=-1)


DFT_METHODS = ("auto", "fft", "matmul")


def _resolve_dft(dft: str) -> str:
  if dft not in DFT_METHODS:
    raise ValueError(f"dft: expected one of {DFT_METHODS}, got {dft!r}")
  if dft == "auto":
    from qwen_audio_jax import sharding  # pylint: disable=g-import-not-at-top
    return "matmul" if sharding.compile_platform() == "tpu" else "fft"
  return dft


def _power_spectrum_jax(frames: jax.Array, dft: str) -> jax.Array:
  """|rfft(frames * window)|^2 in float32: [..., N_FRAMES, N_FFT] -> [..., N_FRAMES, N_FREQS]."""
  if dft == "fft":
    spectrum = jnp.fft.rfft(frames * jnp.asarray(hann_window(), jnp.float32), axis=-1)
    return jnp.square(spectrum.real) + jnp.square(spectrum.imag)
  spectrum = jnp.matmul(frames, jnp.asarray(_dft_basis(), jnp.float32),
                        precision=jax.lax.Precision.HIGHEST)
  return jnp.square(spectrum[..., :N_FREQS]) + jnp.square(spectrum[..., N_FREQS:])


def log_mel_spectrogram_jax(waves: jax.Array, n_mels: int = 80, *, dft: str = "auto"
                            ) -> jax.Array:
  """On-device log-mel features: [..., S] -> [..., n_mels, S // 160] float32, jit-able.

  `waves` holds the first S samples of each clip's 30 s window (zero after the clip, as
  `io.pad_or_trim` pads): S = N_SAMPLES (the whole window) or an audio bucket's length (a
  multiple of 160 samples, see `audio.buckets`). The result is the first S // 160 frames of the
  30 s features: the per-clip max behind the (max - 8) floor runs over every frame that touches
  the S samples (three past the bucket; later frames see only zeros and hold the window's
  minimum), over each clip's own block, so clips in a batch never influence each other.

  `dft` picks how the STFT is computed: "fft" (`jnp.fft.rfft`; fastest and most accurate on CPU
  and GPU), "matmul" (a windowed cos / sin basis at Precision.HIGHEST; on TPU FFTs are slow and
  the MXU makes the 0.5 GFLOP per 30 s clip cheap) or "auto" (matmul on TPU, fft elsewhere),
  decided at trace time.

  Accuracy against the float64 host path: ~1e-5 on speech and noise. Any float32 STFT (this one,
  or the torch path of `WhisperFeatureExtractor`) can differ by ~1e-4 on bins just above the
  (max - 8) floor when a loud pure tone sits over a noise floor ~60 dB down: rounding of the
  tone's energy leaks into those nearly-empty bins. That is far below what bfloat16 encoder
  activations resolve.
  """
  n_mels = _check_n_mels(n_mels)
  dft = _resolve_dft(dft)
  waves = jnp.asarray(waves)
  samples = waves.shape[-1] if waves.ndim else 0
  if waves.ndim < 1 or not 0 < samples <= N_SAMPLES or samples % HOP_LENGTH or (
      samples <= _PAD):
    raise ValueError(
        f"log_mel_spectrogram_jax: waves: expected shape [..., S] with S a multiple of "
        f"{HOP_LENGTH} samples, at most {N_SAMPLES} (30 s at 16 kHz; padded beforehand), got "
        f"{waves.shape}")
  num_frames = samples // HOP_LENGTH
  with_max = min(N_FRAMES, frames_touching_audio(samples))  # frames that may hold the max
  power = _power_spectrum_jax(_frames_jax(waves.astype(jnp.float32), with_max), dft)
  filters = jnp.asarray(mel_filters(n_mels), jnp.float32)
  mel = jnp.einsum("mf,...tf->...mt", filters, power, precision=jax.lax.Precision.HIGHEST)
  log_mel = jnp.log10(jnp.maximum(mel, LOG_FLOOR))
  return _floor_and_scale(log_mel, jnp)[..., :num_frames]
