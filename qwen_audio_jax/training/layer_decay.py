"""Layer-wise learning-rate decay for the audio encoder, as an optax transformation.

Encoder block i of `depth` (0 = the block nearest the input) has its update scaled by
decay^(depth - 1 - i): the top block keeps the full learning rate, each block below it gets
`decay` times the rate of the block above. The parts of the encoder that are not blocks follow
the convention of BEiT (Bao et al. 2021, arXiv:2106.08254, Sec. 2.6 / their
`optim_factory.get_layer_id_for_vit`) and MAE (He et al. 2021, facebookresearch/mae
`util/lr_decay.py`), where the input embedding sits one layer below the first block and the head
above the last:
  - the stem (`conv1`, `conv2`, `positional_embedding`): decay^depth, one step below block 0;
  - the output side (`ln_post`, the projection `proj`): 1.0, like the top block.
Parameters outside the encoder (the LLM, the audio bos/eos rows) are not scaled.

With `nn.scan` the blocks' parameters are stacked along a leading 'layers' axis
(`audio_encoder/blocks/block/...`, shape [depth, ...]); the scale is then a [depth] vector
broadcast along that axis. Unrolled blocks (`audio_encoder/blocks/block_<i>/...`) get the
scalar of their index, so both layouts produce the same numbers.

The transform scales whatever reaches it, so placed after the optimizer core (`optax.chain(...,
adamw, scale_encoder_layers(...))`) it scales the learning rate of each layer: AdamW's decoupled
weight decay, part of the update, is scaled with it, as with per-layer learning rates in
PyTorch parameter groups.
"""

import re
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from qwen_audio_jax.model.params import flat_paths, key_path_str

ENCODER = "audio_encoder/"
_STACKED = re.compile(r"^audio_encoder/blocks/block/")
_UNROLLED = re.compile(r"^audio_encoder/blocks/block_(\d+)/")
_STEM = re.compile(r"^audio_encoder/(conv1|conv2|positional_embedding)(/|$)")


def encoder_depth(params) -> Optional[int]:
  """Number of encoder blocks in a parameter tree (stacked or unrolled); None without them."""
  depths = set()
  for path, leaf in flat_paths(params).items():
    if _STACKED.search(path):
      depths.add(int(leaf.shape[0]))
    match = _UNROLLED.search(path)
    if match:
      depths.add(int(match.group(1)) + 1)
  if not depths:
    return None
  return max(depths)


def layer_scales(decay: float, depth: int) -> np.ndarray:
  """[depth] float64: decay^(depth - 1 - i) for block i (the top block 1.0)."""
  return np.array([float(decay) ** (depth - 1 - i) for i in range(depth)], np.float64)


def path_scale(path: str, decay: float, depth: int):
  """The update scale of the parameter at `path`: a [depth] vector for stacked blocks, a float
  otherwise."""
  if _STACKED.search(path):
    return layer_scales(decay, depth)
  match = _UNROLLED.search(path)
  if match:
    return float(layer_scales(decay, depth)[int(match.group(1))])
  if _STEM.search(path):
    return float(decay) ** depth
  return 1.0


class ScaleEncoderLayersState(NamedTuple):
  """No state: the scales are fixed by the parameter paths."""


def scale_encoder_layers(decay: float, depth: int) -> optax.GradientTransformation:
  """Scales each encoder parameter's update by its layer's decay factor (see module doc)."""
  if not 0.0 < decay <= 1.0:
    raise ValueError(f"encoder layer decay {decay}: must be in (0, 1]")
  if depth < 1:
    raise ValueError(f"encoder depth {depth}: must be >= 1")

  def init(params):
    del params
    return ScaleEncoderLayersState()

  def update(updates, state, params=None):
    del params

    def scale(key_path, u):
      path = key_path_str(key_path)
      if not path.startswith(ENCODER):
        return u
      factor = path_scale(path, decay, depth)
      if isinstance(factor, np.ndarray):
        if u.shape[:1] != factor.shape:
          raise ValueError(f"{path}: stacked encoder update of shape {u.shape} does not lead with "
                           f"the {depth} layers")
        factor = factor.reshape((depth,) + (1,) * (u.ndim - 1))
      return u * jnp.asarray(factor, u.dtype)

    return jax.tree_util.tree_map_with_path(scale, updates), state

  return optax.GradientTransformation(init, update)


def encoder_layer_decay(decay: float, params) -> Optional[optax.GradientTransformation]:
  """The transformation for a model's parameter tree, or None when it changes nothing (decay 1,
  or no encoder blocks)."""
  depth = encoder_depth(params)
  if decay == 1.0 or depth is None:
    return None
  return scale_encoder_layers(decay, depth)

