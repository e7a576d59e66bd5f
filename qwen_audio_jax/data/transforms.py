"""Per-example transform: source row -> decoded, checked, featurised and tokenised `Example`.

    read (file, shard bytes or TFDS array) -> decode + resample to 16 kHz -> checks -> features
    (host log-mel, or the raw waveform for the on-device mel) -> tagged and tokenised text ->
    truncation rules

This is the expensive step of the pipeline and runs in grain's worker processes and threads. It
never raises for bad data: broken or non-fitting examples come back as a `Rejection` (counted
and named downstream). It raises only for configuration errors and broken contracts.
"""

import dataclasses
import threading
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from qwen_audio_jax.audio import lengths
from qwen_audio_jax.data import manifest as manifest_lib
from qwen_audio_jax.data.feature_cache import FeatureCache
from qwen_audio_jax.data.sources import SourceExample
from qwen_audio_jax.data.stats import Rejection

_TOKENIZERS: Dict[str, Any] = {}
_TOKENIZER_LOCK = threading.Lock()


@dataclasses.dataclass
class Example:
  """One example ready to be placed in a row (unpadded)."""
  task_id: int
  input_ids: np.ndarray  # int32 [n]
  target_mask: np.ndarray  # bool [n]: True where input_ids[t] is predicted from position t-1
  # per clip: log-mel float32 [n_mels, F] of the frames that touch audio, or waveform float32 [L]
  clips: List[np.ndarray]
  clip_lengths: np.ndarray  # int32 [c]: valid samples of each clip
  audio_starts: np.ndarray  # int32 [c]: index of each clip's `<audio>` token
  origin: str
  truncated: bool = False  # text cut to the largest bucket, or audio trimmed (long_audio='trim')
  # Examples of the same task rejected since the previous delivered one (set downstream, so that
  # their counts travel to the main process with this example's batch).
  rejections: Tuple[Rejection, ...] = ()

  @property
  def num_tokens(self) -> int:
    return int(self.input_ids.shape[0])

  @property
  def num_clips(self) -> int:
    return len(self.clips)


class ClipOverflowError(ValueError):
  """A row needs more clips than max_clips_per_row and clip_overflow is 'error'."""


def load_tokenizer(path: Optional[str]):
  """The Qwen-Audio tokenizer, loaded once per process and path."""
  key = path or ""
  with _TOKENIZER_LOCK:
    if key not in _TOKENIZERS:
      from qwen_audio_jax.text import tokenizer  # pylint: disable=g-import-not-at-top
      _TOKENIZERS[key] = tokenizer.QwenAudioTokenizer.load(path or None)
    return _TOKENIZERS[key]


def waveform_from_array(samples: np.ndarray, sample_rate: int, start: Optional[float] = None,
                        end: Optional[float] = None) -> np.ndarray:
  """Decoded audio (any integer or float dtype, mono or [n, channels]) -> float32 16 kHz mono."""
  import soxr  # pylint: disable=g-import-not-at-top
  samples = np.asarray(samples)
  if np.issubdtype(samples.dtype, np.integer):
    scale = float(2 ** (8 * samples.dtype.itemsize - 1))
    samples = samples.astype(np.float32) / scale
  samples = samples.astype(np.float32, copy=False)
  if samples.ndim == 2:
    samples = samples.mean(axis=1)
  elif samples.ndim != 1:
    raise ValueError(f"audio array must be [n] or [n, channels], got shape {samples.shape}")
  first = 0 if start is None else int(round(start * sample_rate))
  last = samples.shape[0] if end is None else int(round(end * sample_rate))
  samples = samples[first:last]
  if sample_rate != lengths.SAMPLE_RATE and samples.size:
    samples = soxr.resample(samples, sample_rate, lengths.SAMPLE_RATE).astype(np.float32)
  return np.ascontiguousarray(samples)


# Fragments of audio.io's AudioError messages that say why a clip is unusable (anything else is
# 'unreadable').
_AUDIO_ERROR_REASONS = (
    ("truncated audio", "truncated_audio"),
    ("NaN or infinite", "non_finite"),
    ("holds no audio samples", "empty"),
    ("no samples could be decoded", "empty"),
    ("empty file", "empty"),
    ("empty segment", "empty"),
)


def audio_error_reason(error: Exception) -> str:
  """The bad-data reason of a failed read."""
  message = str(error)
  for fragment, reason in _AUDIO_ERROR_REASONS:
    if fragment in message:
      return reason
  return "unreadable"


class ExampleBuilder:
  """Callable grain map: SourceExample -> Example | Rejection, for one task of the mixture."""

  def __init__(self, *, task_id: int, features: str = "mel", n_mels: int = 80,
               max_clips: int = 1, max_tokens: int = 2048, text_overflow: str = "truncate",
               clip_overflow: str = "drop", max_audio_samples: int = lengths.N_SAMPLES,
               long_audio: str = "skip", tokenizer=None, tokenizer_path: Optional[str] = None,
               feature_cache: Optional[FeatureCache] = None):
    if features not in ("mel", "waveform"):
      raise ValueError(f"features must be 'mel' or 'waveform', got {features!r}")
    if not 0 < max_audio_samples <= lengths.N_SAMPLES:
      raise ValueError(f"max_audio_samples must be in (0, {lengths.N_SAMPLES}], got "
                       f"{max_audio_samples}")
    self.task_id = task_id
    self.features = features
    self.n_mels = n_mels
    self.max_clips = max_clips
    self.max_tokens = max_tokens
    self.text_overflow = text_overflow
    self.clip_overflow = clip_overflow
    self.max_audio_samples = max_audio_samples
    self.long_audio = long_audio
    self.min_audio_samples = lengths.min_samples_for_one_token()
    self._tokenizer = tokenizer
    self._tokenizer_injected = tokenizer is not None
    self._tokenizer_path = tokenizer_path
    self.feature_cache = feature_cache

  @property
  def tokenizer(self):
    if self._tokenizer is None:
      self._tokenizer = load_tokenizer(self._tokenizer_path)
    return self._tokenizer

  def __getstate__(self):
    state = dict(self.__dict__)
    if not self._tokenizer_injected:
      state["_tokenizer"] = None  # loaded (once) by each worker process
    return state

  def _reject(self, reason: str, origin: str, detail: str = "") -> Rejection:
    return Rejection(self.task_id, reason, origin, detail)

  def __call__(self, source: SourceExample) -> Union[Example, Rejection]:
    if source.row is None:
      return self._reject("malformed", source.origin, source.error)
    try:
      manifest_lib.validate_row(source.row, source.origin)
      refs = manifest_lib.clip_refs(source.row)
    except ValueError as e:
      return self._reject("malformed", source.origin, str(e).split(": ", 1)[-1])
    if len(refs) > self.max_clips:
      if self.clip_overflow == "error":
        raise ClipOverflowError(f"{source.origin}: the row has {len(refs)} clips, "
                                f"max_clips_per_row is {self.max_clips}")
      return self._reject("too_many_clips", source.origin,
                          f"{len(refs)} clips > max_clips_per_row {self.max_clips}")
    clips, num_samples, trimmed = [], [], False
    for ref in refs:
      clip = self._clip(source, ref)
      if isinstance(clip, Rejection):
        return clip
      clips.append(clip[0])
      num_samples.append(clip[1])
      trimmed |= clip[2]
    try:
      encoded = self._encode(source.row, num_samples)
    except ValueError as e:
      return self._reject("malformed", source.origin, str(e))
    input_ids = np.asarray(encoded.input_ids, np.int32)
    target_mask = np.asarray(encoded.target_mask, bool)
    audio_starts = np.asarray(encoded.audio_starts, np.int32).reshape(-1)
    self._check_contract(source.origin, input_ids, target_mask, audio_starts, num_samples)
    truncated = trimmed
    if input_ids.shape[0] > self.max_tokens:
      cut = self._truncation_point(input_ids, target_mask, audio_starts, num_samples)
      if cut is None:
        return self._reject("text_too_long", source.origin,
                            f"{input_ids.shape[0]} tokens > {self.max_tokens}")
      input_ids, target_mask, truncated = input_ids[:cut], target_mask[:cut], True
    return Example(
        task_id=self.task_id, input_ids=input_ids, target_mask=target_mask,
        clips=clips,
        clip_lengths=np.asarray(num_samples, np.int32), audio_starts=audio_starts,
        origin=source.origin, truncated=truncated)

  def _clip(self, source: SourceExample, ref: manifest_lib.ClipRef
            ) -> Union[Tuple[np.ndarray, int, bool], Rejection]:
    """(features, samples, trimmed) of one clip: read, checked and featurised, or from the
    feature cache when this clip file and segment were featurised before."""
    from_file = ref.path not in source.audio_bytes and ref.path not in source.audio_arrays
    key = None
    if self.feature_cache is not None and from_file:
      key = (ref.path, ref.start, ref.end)
      cached = self.feature_cache.get(key)
      if cached is not None:
        return cached
    wave = self._read(source, ref)
    if isinstance(wave, Rejection):
      return wave
    trimmed = False
    if wave.shape[0] > self.max_audio_samples:
      seconds = wave.shape[0] / lengths.SAMPLE_RATE
      if self.long_audio == "skip":
        return self._reject("too_long", source.origin, f"{ref.path}: {seconds:.2f} s > "
                            f"{self.max_audio_samples / lengths.SAMPLE_RATE:g} s")
      wave, trimmed = wave[:self.max_audio_samples], True
    if wave.shape[0] < self.min_audio_samples:
      return self._reject("too_short", source.origin, f"{ref.path}: {wave.shape[0]} samples "
                          f"< {self.min_audio_samples}")
    features = self._features(wave)
    if key is not None:
      self.feature_cache.put(key, features, wave.shape[0], trimmed)
    return features, int(wave.shape[0]), trimmed

  def _read(self, source: SourceExample, ref: manifest_lib.ClipRef
            ) -> Union[np.ndarray, Rejection]:
    import soundfile  # pylint: disable=g-import-not-at-top
    from qwen_audio_jax.audio import io  # pylint: disable=g-import-not-at-top
    try:
      if ref.path in source.audio_bytes:
        wave = io.decode_audio(source.audio_bytes[ref.path], name=ref.path, start=ref.start,
                               end=ref.end, sample_rate=lengths.SAMPLE_RATE)
      elif ref.path in source.audio_arrays:
        samples, rate = source.audio_arrays[ref.path]
        wave = waveform_from_array(samples, rate, ref.start, ref.end)
      else:
        wave = io.load_audio(ref.path, start=ref.start, end=ref.end,
                             sample_rate=lengths.SAMPLE_RATE)
    except (io.AudioError, soundfile.SoundFileError, OSError, EOFError) as e:
      return self._reject(audio_error_reason(e), source.origin, str(e))
    wave = np.asarray(wave, np.float32).reshape(-1)
    if wave.shape[0] == 0:
      return self._reject("empty", source.origin, f"{ref.path}: no samples")
    if not np.isfinite(wave).all():
      return self._reject("non_finite", source.origin, f"{ref.path}: NaN or infinite samples")
    return wave

  def _encode(self, row: Dict[str, Any], num_samples: Sequence[int]):
    if row["task"] == manifest_lib.CHAT_TASK:
      from qwen_audio_jax.text import chat  # pylint: disable=g-import-not-at-top
      return chat.encode_dialogue(row, self.tokenizer, num_samples)
    from qwen_audio_jax.text import tasks  # pylint: disable=g-import-not-at-top
    return tasks.encode_example(row, self.tokenizer, num_samples,
                                clip_seconds=num_samples[0] / lengths.SAMPLE_RATE)

  def _check_contract(self, origin, input_ids, target_mask, audio_starts, num_samples):
    ok = (input_ids.ndim == 1 and target_mask.shape == input_ids.shape
          and audio_starts.shape[0] == len(num_samples))
    if ok:
      for start, n in zip(audio_starts, num_samples):
        last = start + lengths.audio_span(n) - 1
        ok &= (0 <= start and last < input_ids.shape[0]
               and input_ids[start] == self.tokenizer.audio_start_id
               and input_ids[last] == self.tokenizer.audio_end_id)
    if not ok:
      raise RuntimeError(
          f"{origin}: the text encoder returned an example whose audio spans do not match its "
          f"clips (audio_starts {audio_starts.tolist()}, clip samples {list(num_samples)}, "
          f"{input_ids.shape[0]} tokens)")

  def _truncation_point(self, input_ids, target_mask, audio_starts, num_samples
                        ) -> Optional[int]:
    """Tokens to keep under text_overflow='truncate', or None when the row must be dropped."""
    if self.text_overflow != "truncate":
      return None
    cut = self.max_tokens
    for start, n in zip(audio_starts, num_samples):
      if start + lengths.audio_span(n) > cut:
        return None  # an audio span would be cut
    if not target_mask[:cut].any():
      return None  # nothing left to learn from
    return cut

  def _features(self, wave: np.ndarray) -> np.ndarray:
    if self.features == "waveform":
      return wave
    from qwen_audio_jax.audio import mel  # pylint: disable=g-import-not-at-top
    # The frames that touch the audio; every later frame of the 30 s features holds the clip's
    # silent level, filled in when the batch is padded to its audio bucket (`mel.fit_frames`).
    frames = min(lengths.N_FRAMES, mel.frames_touching_audio(wave.shape[0]))
    return mel.log_mel_spectrogram(wave, n_mels=self.n_mels, num_frames=frames)
