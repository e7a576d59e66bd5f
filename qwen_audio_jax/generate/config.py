"""How to decode: `GenerationConfig` and the named presets of the release.

Presets (`get_generation_config(name)`):

  greedy            argmax at every step, stop at `<|endoftext|>`; what the released evaluation
                    scripts use (do_sample false, one beam, length and repetition penalty 1.0)
  qwen_audio_base   Qwen-Audio's `generation_config.json`: nucleus sampling with top_p 0.8,
                    top_k 0 (off), max_new_tokens 512, stop at `<|endoftext|>`
  qwen_audio_chat   Qwen-Audio-Chat's `generation_config.json`: nucleus sampling with top_p 0.5,
                    top_k 0, max_new_tokens 512, max_window_size 6144 (chat history), stop at
                    `<|endoftext|>`, `<|im_end|>` and `<|im_start|>` (the chat's stop words)

The two release presets follow the generation configs of the official Qwen-Audio release
(`base_generation_config.json`, `chat_generation_config.json`) and the chat stop words of its
`qwen_generation_utils.py`, as documented for that release; the files themselves were not
available to check against here (unverified).
"""

import dataclasses
from typing import Optional, Tuple, Union

from qwen_audio_jax.text import specials

StopToken = Union[int, str]


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
  """Decoding settings; every field is checked by `validate` (ValueError naming it).

  Sampling (do_sample=True) applies, in this order as transformers does: repetition penalty,
  temperature, top-k (0 = off), top-p (1.0 = off), then draws from the result. With
  do_sample=False and num_beams=1 decoding is greedy; num_beams > 1 is beam search, scored by
  sum of log-probabilities / (generated length ** length_penalty), the length counting the stop
  token.
  """
  max_new_tokens: int = 256
  do_sample: bool = False
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  num_beams: int = 1
  length_penalty: float = 1.0
  repetition_penalty: float = 1.0
  # Generation of a row ends at the first of these (ids, or special tokens by surface form).
  stop_tokens: Tuple[StopToken, ...] = (specials.ENDOFTEXT,)
  seed: int = 0  # sampling: each request draws from fold_in(key(seed), request.seed)
  # Chat only: history turns are dropped, oldest first, while the context exceeds this many
  # tokens (Qwen-Audio-Chat's `make_context`); None keeps all history.
  max_window_size: Optional[int] = None

  def __post_init__(self):
    validate(self)

  def replace(self, **changes) -> "GenerationConfig":
    return dataclasses.replace(self, **changes)

  @property
  def greedy(self) -> bool:
    return not self.do_sample and self.num_beams == 1


def validate(config: GenerationConfig) -> None:
  checks = [
      (isinstance(config.max_new_tokens, int) and config.max_new_tokens >= 1,
       f"max_new_tokens must be an int >= 1, got {config.max_new_tokens!r}"),
      (config.temperature > 0, f"temperature must be > 0, got {config.temperature}"),
      (isinstance(config.top_k, int) and config.top_k >= 0,
       f"top_k must be an int >= 0 (0 = off), got {config.top_k!r}"),
      (0 < config.top_p <= 1, f"top_p must be in (0, 1], got {config.top_p}"),
      (isinstance(config.num_beams, int) and config.num_beams >= 1,
       f"num_beams must be an int >= 1, got {config.num_beams!r}"),
      (not (config.num_beams > 1 and config.do_sample),
       "num_beams > 1 with do_sample=True (beam sampling) is not supported: pick one"),
      (config.repetition_penalty > 0,
       f"repetition_penalty must be > 0 (1.0 = off), got {config.repetition_penalty}"),
      (isinstance(config.stop_tokens, tuple) and all(
          isinstance(t, (int, str)) and not isinstance(t, bool) for t in config.stop_tokens),
       f"stop_tokens must be a tuple of token ids or special-token strings, got "
       f"{config.stop_tokens!r}"),
      (config.max_window_size is None or (isinstance(config.max_window_size, int)
                                           and config.max_window_size > 0),
       f"max_window_size must be None or an int > 0, got {config.max_window_size!r}"),
  ]
  for ok, message in checks:
    if not ok:
      raise ValueError(f"GenerationConfig: {message}")


CHAT_STOP_TOKENS = (specials.ENDOFTEXT, specials.IM_END, specials.IM_START)

PRESETS = {
    "greedy": GenerationConfig(),
    "qwen_audio_base": GenerationConfig(
        max_new_tokens=512, do_sample=True, top_k=0, top_p=0.8),
    "qwen_audio_chat": GenerationConfig(
        max_new_tokens=512, do_sample=True, top_k=0, top_p=0.5, max_window_size=6144,
        stop_tokens=CHAT_STOP_TOKENS),
}


def get_generation_config(preset: Union[str, GenerationConfig, None] = "greedy",
                          **overrides) -> GenerationConfig:
  """A preset by name (or a config as given), with field overrides."""
  if preset is None:
    preset = "greedy"
  if isinstance(preset, str):
    if preset not in PRESETS:
      raise ValueError(f"unknown generation preset {preset!r}; expected one of "
                       f"{sorted(PRESETS)}")
    preset = PRESETS[preset]
  if not isinstance(preset, GenerationConfig):
    raise ValueError(f"expected a preset name or a GenerationConfig, got {preset!r}")
  unknown = set(overrides) - {f.name for f in dataclasses.fields(GenerationConfig)}
  if unknown:
    raise ValueError(f"unknown GenerationConfig field(s) {sorted(unknown)}")
  return dataclasses.replace(preset, **overrides) if overrides else preset
