"""Generation: prefill with the audio splice, an on-device decode loop, presets of the release.

    from qwen_audio_jax import checkpoints
    from qwen_audio_jax.generate import Generator, GenerationConfig

    generator = Generator.from_loaded(checkpoints.load_model("ckpt/qwen_audio"))
    [result] = generator.generate(
        ["<audio>a.wav</audio><|startoftranscript|><|en|><|transcribe|><|en|><|notimestamps|>"
         "<|wo_itn|>"], "greedy")
    print(result.text)

- `GenerationConfig`, `get_generation_config(name, **overrides)`, `PRESETS`: greedy / sampling
  (temperature, top-k, top-p, seeded) / beam search (num_beams, length_penalty), repetition
  penalty, stop tokens, max new tokens; presets 'greedy', 'qwen_audio_base', 'qwen_audio_chat'.
- `Request` (a prompt string or a chat dialogue, optional pre-loaded waveforms) -> `Result`
  (new token ids, decoded text, finish reason).
- `Generator`: batched, shape-bucketed, sharded; every row decodes the same tokens alone or in a
  batch.
- `longform`: recordings longer than 30 s, windowed and stitched (word times shifted).
"""

from qwen_audio_jax.generate.buckets import Buckets
from qwen_audio_jax.generate.config import (CHAT_STOP_TOKENS, PRESETS, GenerationConfig,
                                            get_generation_config)
from qwen_audio_jax.generate.engine import Generator
from qwen_audio_jax.generate.requests import PreparedRequest, Request, Result, prepare

__all__ = ["Buckets", "CHAT_STOP_TOKENS", "PRESETS", "GenerationConfig", "Generator",
           "PreparedRequest", "Request", "Result", "get_generation_config", "prepare"]
