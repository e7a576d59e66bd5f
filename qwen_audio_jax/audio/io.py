"""Reading audio files into 16 kHz mono float32 waveforms.

Supported formats are those of libsndfile (>= 1.1) as exposed by `soundfile`:

* WAV / WAVEX / RF64 / W64 (PCM 8-32 bit, float, u-law, a-law, IMA / MS ADPCM), AIFF, AU, CAF;
* FLAC;
* Ogg Vorbis and Ogg Opus;
* MP3 (MPEG-1/2 layer III, and layers I / II).

Formats libsndfile cannot read (e.g. AAC / M4A, WMA) raise `AudioError`: convert them first
(e.g. `ffmpeg -i x.m4a -ar 16000 -ac 1 x.flac`).

Files are opened through `etils.epath`, so local paths and any epath-backed location (gs://,
s3:// ...) work alike. When a [start, end) segment is asked for, only that part is decoded: the
reader seeks to `start` and reads `end - start` frames for PCM (WAV, AIFF ...) and FLAC, whose
seeks are sample-exact. Lossy streams (Vorbis, Opus, MP3) are decoded from the beginning up to
`end` in one read and cut, because libsndfile's seeks in them are not sample-exact (measured
with libsndfile 1.2.2: Vorbis lands tens of samples off, MP3 can return silence after a seek);
their decoders run at hundreds to thousands of times real time, so this costs little. Channels
are averaged to mono and the result is resampled with soxr.

A file cut short of the length its container states (an interrupted copy) raises AudioError
with "truncated audio" in the message, also when what survived still decodes (`truncation`).
"""

import io
import math
import os
from typing import BinaryIO, Optional, Tuple, Union

from etils import epath
import numpy as np
import soundfile as sf
import soxr

from qwen_audio_jax.audio import lengths, truncation

PathLike = Union[str, os.PathLike]

RESAMPLE_QUALITY = "HQ"


class AudioError(ValueError):
  """A clip that cannot be used: the message names the file and what is wrong with it."""


def _check_rate(sample_rate, name: str) -> int:
  if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or (
      sample_rate <= 0):
    raise AudioError(f"{name}: sample_rate must be a positive int, got {sample_rate!r}")
  return int(sample_rate)


def _segment_frames(name: str, native_rate: int, total_frames: int,
                    start: Optional[float], end: Optional[float]) -> Tuple[int, int]:
  """[first, last) frame indices at the file's rate for a [start, end) request in seconds."""
  duration = total_frames / native_rate
  for label, value in (("start", start), ("end", end)):
    if value is not None and (isinstance(value, bool) or not isinstance(
        value, (int, float, np.integer, np.floating)) or not math.isfinite(value)):
      raise AudioError(f"{name}: {label} must be a finite number of seconds, got {value!r}")
  first = 0 if start is None else int(round(start * native_rate))
  last = total_frames if end is None else int(round(end * native_rate))
  if start is not None and (start < 0 or first >= total_frames):
    raise AudioError(
        f"{name}: start={start} s is outside the file (duration {duration:.3f} s)")
  if end is not None and (end <= 0 or last > total_frames):
    raise AudioError(
        f"{name}: end={end} s is outside the file (duration {duration:.3f} s)")
  if last <= first:
    raise AudioError(
        f"{name}: empty segment: start={start} s must be before end={end} s "
        f"(at least one sample at {native_rate} Hz)")
  return first, last


# Sample encodings whose seek is sample-exact in libsndfile (PCM in any container, and FLAC,
# whose subtype is PCM_*). Compressed streams are decoded from the start with ONE read call
# instead: with libsndfile 1.2.2, a Vorbis seek can land tens of samples off, and MP3 reads after
# a seek or across several read calls can return silence where the bit reservoir spans frames.
_EXACT_SEEK_SUBTYPES = frozenset({
    "PCM_S8", "PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE", "ULAW", "ALAW"})


def _open(path: PathLike, name: str) -> BinaryIO:
  try:
    return epath.Path(path).open("rb")
  except FileNotFoundError as e:
    raise AudioError(f"{name}: no such file") from e
  except IsADirectoryError as e:
    raise AudioError(f"{name}: is a directory, not an audio file") from e
  except OSError as e:
    raise AudioError(f"{name}: cannot open ({e})") from e


def _check_not_empty(fileobj: BinaryIO, name: str) -> None:
  if not fileobj.read(1):
    raise AudioError(f"{name}: empty file (0 bytes)")
  fileobj.seek(0)


def _decode(fileobj: BinaryIO, name: str, start: Optional[float], end: Optional[float],
            sample_rate: int) -> np.ndarray:
  """Decodes an open binary file object; every failure becomes an AudioError naming `name`."""
  _check_not_empty(fileobj, name)
  cut = truncation.ogg_problem(fileobj) if truncation.is_ogg(fileobj) else None
  try:
    with sf.SoundFile(fileobj) as f:
      if f.channels < 1:
        raise AudioError(f"{name}: the file declares {f.channels} channels")
      if f.samplerate <= 0:
        raise AudioError(f"{name}: the file declares a sample rate of {f.samplerate} Hz")
      if f.frames <= 0:
        raise AudioError(f"{name}: the file holds no audio samples")
      cut = cut or truncation.pcm_problem(f.format, f.extra_info, f.channels)
      if cut and (end is None or end * f.samplerate > f.frames):  # the clip needs what is lost
        raise AudioError(f"{name}: truncated audio: {cut}")
      first, last = _segment_frames(name, f.samplerate, f.frames, start, end)
      if f.seekable() and f.subtype in _EXACT_SEEK_SUBTYPES:
        if first:
          f.seek(first)
        samples = f.read(last - first, dtype="float32", always_2d=True)
      else:
        samples = f.read(last, dtype="float32", always_2d=True)[first:]
      native_rate = f.samplerate
      short = truncation.short_read_problem(last, first + samples.shape[0], native_rate)
      if short:
        raise AudioError(f"{name}: truncated audio: {short}")
  except AudioError:
    raise
  except (sf.SoundFileError, RuntimeError) as e:
    raise AudioError(
        f"{name}: unreadable or unsupported audio ({e}); readable formats are WAV, FLAC, "
        f"Ogg Vorbis/Opus, MP3, AIFF and the rest of libsndfile's list") from e
  if samples.shape[0] == 0:
    raise AudioError(f"{name}: no samples could be decoded")
  if not np.isfinite(samples).all():
    bad = int(np.count_nonzero(~np.isfinite(samples)))
    raise AudioError(f"{name}: {bad} NaN or infinite samples")
  wave = samples.mean(axis=1, dtype=np.float32) if samples.shape[1] > 1 else samples[:, 0]
  if native_rate != sample_rate:
    wave = soxr.resample(wave, native_rate, sample_rate, quality=RESAMPLE_QUALITY)
  return np.ascontiguousarray(wave, dtype=np.float32)


def load_audio(path: PathLike, *, start: Optional[float] = None, end: Optional[float] = None,
               sample_rate: int = lengths.SAMPLE_RATE) -> np.ndarray:
  """Reads `path` (local or epath: gs:// ...) as a float32 mono waveform at `sample_rate`.

  Args:
    path: the audio file.
    start: optional segment start in seconds (inclusive); only [start, end) is decoded.
    end: optional segment end in seconds (exclusive); defaults to the end of the file.
    sample_rate: output rate. Channels are averaged, then the signal is resampled with soxr
      (quality "HQ") when the file's rate differs. soxr because it is a proper band-limited
      resampler (no aliasing from naive interpolation, ~flat passband), a fast C implementation
      (well under the decode cost, so it never bottlenecks a data loader) and ships wheels on
      PyPI for every platform we train on.

  Returns:
    float32 array [samples]; not padded or cut (see `pad_or_trim`).

  Raises:
    AudioError: naming the file, for a missing / empty / unreadable file, an unsupported format,
      NaN or infinite samples, or a bad [start, end) segment.
  """
  name = os.fspath(path)
  sample_rate = _check_rate(sample_rate, name)
  with _open(path, name) as fileobj:
    return _decode(fileobj, name, start, end, sample_rate)


def decode_audio(data: bytes, *, name: str, start: Optional[float] = None,
                 end: Optional[float] = None, sample_rate: int = lengths.SAMPLE_RATE
                 ) -> np.ndarray:
  """Like `load_audio`, for the encoded bytes of a file already in memory (e.g. a record).

  `name` (the clip's original path or key) only serves to name the clip in errors.
  """
  sample_rate = _check_rate(sample_rate, name)
  if not isinstance(data, (bytes, bytearray, memoryview)):
    raise AudioError(f"{name}: expected the encoded file as bytes, got {type(data).__name__}")
  return _decode(io.BytesIO(bytes(data)), name, start, end, sample_rate)


def duration_seconds(path: PathLike) -> float:
  """Duration of `path` in seconds, from its header (nothing is decoded for PCM / FLAC / Ogg).

  For MP3 the frame count is libsndfile's estimate, which can differ from the decoded length by
  the encoder delay (a few ms).
  """
  name = os.fspath(path)
  with _open(path, name) as fileobj:
    _check_not_empty(fileobj, name)
    try:
      with sf.SoundFile(fileobj) as f:
        if f.samplerate <= 0:
          raise AudioError(f"{name}: the file declares a sample rate of {f.samplerate} Hz")
        return f.frames / f.samplerate
    except AudioError:
      raise
    except (sf.SoundFileError, RuntimeError) as e:
      raise AudioError(f"{name}: unreadable or unsupported audio ({e})") from e


def pad_or_trim(wave: np.ndarray, length: int = lengths.N_SAMPLES) -> np.ndarray:
  """Zero-pads or cuts `wave` along its last axis to `length` samples (Whisper's 30 s rule).

  Longer clips keep their first `length` samples; shorter ones get zeros at the end. The
  dtype is kept; an input of the right length is returned as is.
  """
  if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length <= 0:
    raise ValueError(f"pad_or_trim: length must be a positive int, got {length!r}")
  wave = np.asarray(wave)
  if wave.ndim == 0:
    raise ValueError("pad_or_trim: wave must have at least one axis (samples), got a scalar")
  n = wave.shape[-1]
  if n > length:
    return wave[..., :length]
  if n < length:
    return np.pad(wave, [(0, 0)] * (wave.ndim - 1) + [(0, length - n)])
  return wave
