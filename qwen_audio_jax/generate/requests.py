"""What a caller asks for and what comes back, and turning a request into token ids + audio.

A `Request` is a prompt in the project's format: text with `<audio>PATH</audio>` spans and
Qwen-Audio's tags (`tasks.prompt(row)`, `tasks.official_asr_prompt(path)`), a ChatML string, or a
chat dialogue (`messages`, encoded by `text.chat` exactly as Qwen-Audio-Chat's context builder).
Clips are read from their paths unless pre-loaded 16 kHz waveforms are given (`audio`, one per
span, in order). Each clip must be at most 30 s: longer recordings go through
`generate.longform`, which windows them.
"""

import dataclasses
from typing import Any, List, Mapping, Optional, Sequence, Union

import numpy as np

from qwen_audio_jax.audio import io as audio_io
from qwen_audio_jax.audio import lengths
from qwen_audio_jax.text import chat as chat_lib
from qwen_audio_jax.text import specials
from qwen_audio_jax.text import tokenizer as tokenizer_lib


@dataclasses.dataclass
class Request:
  """One generation request.

  prompt: text with `<audio>PATH</audio>` spans (multitask tags or ChatML); or
  messages: a chat dialogue ([{'role', 'content'}], content a string or [{'text'} | {'audio'}]
    items) ending with a user turn; the prompt is its ChatML plus `<|im_start|>assistant\\n`.
  audio: pre-loaded 16 kHz mono float waveforms, one per clip in order of appearance (None: read
    each clip from its path).
  seed: sampling only: the request's draws come from fold_in(key(config.seed), seed), so a
    request samples the same tokens whatever else is in its batch.
  id: the caller's name for it (returned in the result).
  """
  prompt: Optional[str] = None
  messages: Optional[Sequence[Mapping[str, Any]]] = None
  audio: Optional[Sequence[np.ndarray]] = None
  seed: int = 0
  id: Optional[str] = None


@dataclasses.dataclass
class Result:
  """What one request generated.

  tokens: the new token ids, without the stop token that ended them.
  text: `tokens` decoded with special tokens kept (timestamps, tags), ready for
    `text.tasks.parse_output(task, text)`.
  finish_reason: 'stop' (a stop token was generated) or 'length' (max_new_tokens reached).
  stop_token: the id of the stop token, or None.
  prompt_tokens: length of the prompt in tokens (audio spans included).
  score: beam search only: the winning hypothesis' sum of log-probabilities divided by
    (its length ** length_penalty).
  logprobs: greedy and sampling: each token's log-probability under the distribution it was
    chosen from (after penalty, temperature, top-k / top-p), aligned with `tokens`.
  """
  tokens: np.ndarray
  text: str
  finish_reason: str
  stop_token: Optional[int]
  prompt_tokens: int
  score: Optional[float] = None
  logprobs: Optional[np.ndarray] = None
  id: Optional[str] = None


@dataclasses.dataclass
class PreparedRequest:
  """A request as token ids and waveforms (host side, before batching)."""
  ids: np.ndarray  # int32 [L]
  audio_starts: np.ndarray  # int32 [clips]: index of each clip's opening token
  waves: List[np.ndarray]  # float32 [samples] per clip (<= 30 s)
  seed: int
  id: Optional[str]

  @property
  def num_samples(self) -> List[int]:
    return [int(w.shape[0]) for w in self.waves]


def as_request(item: Union[str, Request, Mapping[str, Any]], index: int) -> Request:
  """A Request from a prompt string, a Request, or a mapping of Request fields."""
  if isinstance(item, Request):
    return item
  if isinstance(item, str):
    return Request(prompt=item)
  if isinstance(item, Mapping):
    unknown = set(item) - {f.name for f in dataclasses.fields(Request)}
    if unknown:
      raise ValueError(f"request {index}: unknown field(s) {sorted(unknown)}")
    return Request(**item)
  raise ValueError(f"request {index}: expected a prompt string, a Request or a mapping, got "
                   f"{type(item).__name__}")


def _clip_paths(request: Request, where: str) -> List[str]:
  if request.messages is not None:
    text = chat_lib.dialogue_text(request.messages, generation_prompt=True)
  else:
    text = request.prompt
  return [m.group(1) for m in tokenizer_lib.AUDIO_SPAN.finditer(text)]


def _waves(request: Request, paths: Sequence[str], where: str) -> List[np.ndarray]:
  if request.audio is None:
    waves = [audio_io.load_audio(path) for path in paths]
  else:
    if len(request.audio) != len(paths):
      raise ValueError(f"{where}: the prompt names {len(paths)} clip(s) but {len(request.audio)} "
                       "waveform(s) were given in 'audio'")
    waves = []
    for path, wave in zip(paths, request.audio):
      wave = np.asarray(wave)
      if wave.ndim != 1 or not np.issubdtype(wave.dtype, np.floating):
        raise ValueError(f"{where}: clip {path!r}: expected a 1-D float waveform at 16 kHz, got "
                         f"{wave.dtype} of shape {wave.shape}")
      waves.append(wave.astype(np.float32, copy=False))
  for path, wave in zip(paths, waves):
    if wave.shape[0] > lengths.N_SAMPLES:
      raise ValueError(
          f"{where}: clip {path!r} is {wave.shape[0] / lengths.SAMPLE_RATE:.2f} s long; the "
          f"encoder takes at most {lengths.CHUNK_SECONDS} s: window longer recordings with "
          "qwen_audio_jax.generate.longform (the infer command does this itself)")
    if not np.all(np.isfinite(wave)):
      raise ValueError(f"{where}: clip {path!r} holds NaN or infinite samples")
  return waves


def prepare(request: Request, tokenizer, index: int = 0) -> PreparedRequest:
  """Token ids (audio spans sized to their clips) and waveforms of a request."""
  where = f"request {index}" + (f" ({request.id})" if request.id is not None else "")
  if (request.prompt is None) == (request.messages is None):
    raise ValueError(f"{where}: give exactly one of 'prompt' (a string) or 'messages' (a chat "
                     "dialogue)")
  if request.prompt is not None and not isinstance(request.prompt, str):
    raise ValueError(f"{where}: 'prompt' must be a string, got {type(request.prompt).__name__}")
  paths = _clip_paths(request, where)
  waves = _waves(request, paths, where)
  num_samples = [int(w.shape[0]) for w in waves]
  try:
    if request.messages is not None:
      encoded = chat_lib.encode_chat_prompt(request.messages, tokenizer, num_samples)
      ids, starts = encoded.input_ids, encoded.audio_starts
    else:
      encoded = tokenizer.encode_with_audio(request.prompt, num_samples)
      ids, starts = encoded.ids, encoded.audio_starts
  except ValueError as e:
    raise ValueError(f"{where}: {e}") from e
  ids = np.asarray(ids, np.int32)
  if ids.size == 0:
    raise ValueError(f"{where}: the prompt is empty")
  return PreparedRequest(ids, np.asarray(starts, np.int32).reshape(-1), waves, int(request.seed),
                         request.id)


def resolve_stop_tokens(stop_tokens: Sequence[Union[int, str]], tokenizer) -> List[int]:
  """Ids of stop tokens given as ids or special-token surface forms."""
  ids = []
  for token in stop_tokens:
    if isinstance(token, str):
      if token == specials.ENDOFTEXT:
        ids.append(int(tokenizer.eot_id))
        continue
      try:
        ids.append(int(tokenizer.special_id(token)))
      except KeyError as e:
        raise ValueError(f"GenerationConfig.stop_tokens: {e.args[0]}") from None
    else:
      if not 0 <= token < tokenizer.vocab_size:
        raise ValueError(f"GenerationConfig.stop_tokens: id {token} is outside the vocabulary "
                         f"(0 ... {tokenizer.vocab_size - 1})")
      ids.append(int(token))
  return sorted(set(ids))
