"""The parameter tree a configuration expects, computed abstractly (nothing is allocated)."""

import dataclasses
from typing import Dict, Iterable, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from qwen_audio_jax.audio import lengths
from qwen_audio_jax.config import QwenAudioConfig
from qwen_audio_jax.model.encoder import AudioEncoder
from qwen_audio_jax.model.params import path_str  # noqa: F401  (the convert modules' import)
from qwen_audio_jax.model.qwen_audio import QwenAudio

Path = Tuple[str, ...]
PARTS = ("audio_encoder", "audio_bos_eos", "llm")


def expected_shapes(config: QwenAudioConfig,
                    parts: Optional[Iterable[str]] = None) -> Dict[Path, Tuple[int, ...]]:
  """{path: shape} of the scanned parameter tree of `config`, restricted to `parts` (top-level
  keys; default all). The encoder and the LLM are traced separately, so a configuration whose
  parts do not join (a plain Whisper encoder) still has its shapes."""
  parts = tuple(PARTS if parts is None else parts)
  unknown = set(parts) - set(PARTS)
  if unknown:
    raise ValueError(f"unknown parameter groups {sorted(unknown)}; expected some of {PARTS}")
  config = dataclasses.replace(config, scan_layers=True)
  key = jax.random.key(0)
  shapes: Dict[Path, Tuple[int, ...]] = {}
  if "audio_encoder" in parts:
    mel = jnp.zeros((1, config.encoder.n_mels, lengths.N_FRAMES), jnp.float32)
    tree = jax.eval_shape(lambda: AudioEncoder(config).init(key, mel, jnp.ones((1,), jnp.int32)))
    for path, leaf in traverse_util.flatten_dict(nn.unbox(tree["params"])).items():
      shapes[("audio_encoder",) + path] = tuple(leaf.shape)
  if "llm" in parts:
    ids = jnp.zeros((1, 4), jnp.int32)
    tree = jax.eval_shape(lambda: QwenAudio(config).init(key, ids))
    for path, leaf in traverse_util.flatten_dict(nn.unbox(tree["params"]["llm"])).items():
      shapes[("llm",) + path] = tuple(leaf.shape)
  if "audio_bos_eos" in parts:
    if not config.encoder.audio_bos_eos:
      raise ValueError("audio_bos_eos requested but config.encoder.audio_bos_eos is False")
    shapes[("audio_bos_eos",)] = (2, config.encoder.output_dim)
  return shapes


def flatten(tree) -> Dict[Path, object]:
  return traverse_util.flatten_dict(tree)


def unflatten(flat: Dict[Path, object]):
  return traverse_util.unflatten_dict(flat)
