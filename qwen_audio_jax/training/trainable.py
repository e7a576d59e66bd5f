"""Which parameters a training config trains: the one reading of `trainable`, `frozen` and LoRA.

Parameters are named by their '/'-joined paths (`audio_encoder/blocks/block/query/kernel`). A
config trains the paths matching `config.trainable` (re.search) and not matching
`config.frozen`; with LoRA (`config.lora.rank > 0`) the base weights stay fixed and the LoRA
factors of the kernels matching `config.lora.target` are trained instead. Validation, the
optimizer, the FLOPs count and the model summary all ask this module.
"""

import re
from typing import Any, Callable, List

import flax.linen as nn
import jax

from qwen_audio_jax.model import params as params_lib


def param_paths(model_config) -> List[str]:
  """'/'-joined paths of every parameter of the model (abstract, nothing allocated)."""
  return list(params_lib.flat_paths(nn.unbox(params_lib.abstract_params(model_config))))


def _is_trained(config) -> Callable[[str], bool]:
  """Path -> whether the optimizer updates it (with LoRA: whether it carries LoRA factors)."""
  if config.lora.rank > 0:
    target = re.compile(config.lora.target)
    return lambda path: bool(target.search(path))
  trainable = re.compile(config.trainable)
  frozen = re.compile(config.frozen) if config.frozen else None
  return lambda path: bool(trainable.search(path)) and not (frozen and frozen.search(path))


def trained_paths(config, paths: List[str]) -> List[str]:
  """The paths a stage updates: trainable minus frozen; with LoRA, the LoRA targets."""
  is_trained = _is_trained(config)
  return [p for p in paths if is_trained(p)]


def trainable_mask(config, params) -> Any:
  """Bool tree over `params`: the leaves the optimizer updates (all False with LoRA, whose
  factors are trained instead)."""
  if config.lora.rank > 0:
    return jax.tree.map(lambda _: False, params)
  is_trained = _is_trained(config)
  mask = jax.tree.map(is_trained, params_lib.path_tree(params))
  if not any(jax.tree.leaves(mask)):
    raise ValueError(f"config.trainable={config.trainable!r} (minus config.frozen="
                     f"{config.frozen!r}) matches no parameter; paths look like "
                     f"{list(params_lib.flat_paths(params))[:3]}")
  return mask
