"""The published recipe: named SpecAugment policies (Park et al. 2019, Table 1), the audio
encoder's layer-wise learning-rate decay, and the `qwen_audio` presets' quoted values."""

import dataclasses
import importlib.util
import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import test_train_step as train_step_tests  # the tiny model, its batches and update comparison

from qwen_audio_jax.audio import specaugment
from qwen_audio_jax.config import get_preset
from qwen_audio_jax.configs import common
from qwen_audio_jax.convert.stacking import stack_layers, unstack_layers
from qwen_audio_jax.model import params as params_lib
from qwen_audio_jax.training import layer_decay
from qwen_audio_jax.training import optimizer as optimizer_lib
from qwen_audio_jax.training import step as step_lib
from qwen_audio_jax.training import validation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Park et al. 2019 ("SpecAugment", arXiv:1904.08779), Table 1, written out independently of the
# module: time warp W, frequency mask F, frequency masks mF, time mask T, ratio p, time masks mT.
PARK_TABLE_1 = {
    "LB": dict(W=80, F=27, mF=1, T=100, p=1.0, mT=1),
    "LD": dict(W=80, F=27, mF=2, T=100, p=1.0, mT=2),
}


def load_config(stage_file: str, preset: str):
  spec = importlib.util.spec_from_file_location("cfg", os.path.join(ROOT, "configs", stage_file))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(preset)


def stage1_demo():
  """The demo preset with the paper's stage-1 choices the demo departs from put back: the LLM
  frozen, SpecAugment on (the 'custom' defaults), the full output vocabulary."""
  config = load_config("pretrain.py", "demo")
  base = common.base_config("pretrain")
  config.trainable, config.train_llm_in_pretrain = base.trainable, base.train_llm_in_pretrain
  config.specaugment = base.specaugment
  config.loss.output_vocab, config.optim.vocab_rows = "full", "all"
  return config


# ----------------------------------------------------------------------------- SpecAugment


@pytest.mark.parametrize("name", sorted(PARK_TABLE_1))
def test_named_policies_are_park_et_al_table_1(name):
  row, got = PARK_TABLE_1[name], specaugment.policy(name)
  assert (got.max_time_warp, got.max_freq_width, got.num_freq_masks, got.max_time_width,
          got.max_time_width_ratio, got.num_time_masks) == (
              row["W"], row["F"], row["mF"], row["T"], row["p"], row["mT"])
  assert got.time_masks_per_frame == 0.0  # a fixed count, not the adaptive masks of 2020
  assert got.enabled and not got.is_identity


def test_policy_fields_override_and_custom_starts_from_the_defaults():
  assert specaugment.policy("LB", max_time_warp=0, num_time_masks=None) == dataclasses.replace(
      specaugment.policy("LB"), max_time_warp=0)
  assert specaugment.policy("custom") == specaugment.SpecAugmentConfig()
  assert specaugment.policy("custom", num_freq_masks=3).num_freq_masks == 3
  with pytest.raises(ValueError, match="'LX'.*expected one of"):
    specaugment.policy("LX")
  with pytest.raises(ValueError, match="freq_masks: unknown field"):
    specaugment.policy("LB", freq_masks=1)


def test_config_policy_reaches_the_step_and_is_validated():
  config = stage1_demo()
  # Stage 1 keeps 'custom' with nothing set: the SpecAugmentConfig defaults.
  assert step_lib.specaugment_config(config) == specaugment.SpecAugmentConfig()
  config.specaugment.policy = "LD"
  config.specaugment.max_time_warp = 40
  assert step_lib.specaugment_config(config) == dataclasses.replace(
      specaugment.policy("LD"), max_time_warp=40)
  config.specaugment.policy = "SM"
  config.specaugment.max_freq_width = -1
  with pytest.raises(validation.ConfigError) as error:
    validation.validate(config, device_count=8, process_count=1)
  assert "config.specaugment: SpecAugment policy 'SM': expected one of" in str(error.value)


# ----------------------------------------------------------------------------- layer decay

DEPTH = 4


def tiny(scan: bool):
  model = get_preset("tiny")
  return dataclasses.replace(
      model, scan_layers=scan, encoder=dataclasses.replace(model.encoder, depth=DEPTH),
      llm=dataclasses.replace(model.llm, vocab_size=64, depth=1))


def random_like(tree, seed=0):
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return treedef.unflatten([jax.random.normal(k, x.shape, jnp.float32)
                            for k, x in zip(keys, leaves)])


def test_layer_decay_scales_block_i_by_decay_power_depth_minus_1_minus_i():
  decay = 0.95
  unrolled_grads = random_like(nn.unbox(params_lib.abstract_params(tiny(scan=False))))
  stacked_grads = stack_layers(unrolled_grads)
  assert layer_decay.encoder_depth(stacked_grads) == layer_decay.encoder_depth(
      unrolled_grads) == DEPTH
  tx = layer_decay.scale_encoder_layers(decay, DEPTH)
  stacked, _ = tx.update(stacked_grads, tx.init(stacked_grads))
  unrolled, _ = tx.update(unrolled_grads, tx.init(unrolled_grads))

  # The reference: the unscanned tree, block by block, each leaf times a float32 scalar.
  blocks, scaled_blocks = unrolled_grads["audio_encoder"]["blocks"], unrolled["audio_encoder"]["blocks"]
  for i in range(DEPTH):
    factor = np.float32(decay ** (DEPTH - 1 - i))
    for g, u in zip(jax.tree.leaves(blocks[f"block_{i}"]),
                    jax.tree.leaves(scaled_blocks[f"block_{i}"])):
      np.testing.assert_array_equal(np.asarray(u), np.asarray(g) * factor)
  # Scanned and unscanned give the same numbers, bit for bit.
  for a, b in zip(jax.tree.leaves(unstack_layers(stacked)), jax.tree.leaves(unrolled)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  top = stacked["audio_encoder"]["blocks"]["block"]["fc1"]["kernel"][DEPTH - 1]
  np.testing.assert_array_equal(
      top, stacked_grads["audio_encoder"]["blocks"]["block"]["fc1"]["kernel"][DEPTH - 1])

  # Stem one step below block 0; ln_post, the projection, audio bos/eos and the LLM unscaled.
  for name in ("conv1", "conv2", "positional_embedding"):
    for g, u in zip(jax.tree.leaves(stacked_grads["audio_encoder"][name]),
                    jax.tree.leaves(stacked["audio_encoder"][name])):
      np.testing.assert_array_equal(np.asarray(u), np.asarray(g) * np.float32(decay ** DEPTH))
  for key in ("ln_post", "proj"):
    for g, u in zip(jax.tree.leaves(stacked_grads["audio_encoder"][key]),
                    jax.tree.leaves(stacked["audio_encoder"][key])):
      np.testing.assert_array_equal(np.asarray(u), np.asarray(g))
  for key in ("audio_bos_eos", "llm"):
    for g, u in zip(jax.tree.leaves(stacked_grads[key]), jax.tree.leaves(stacked[key])):
      np.testing.assert_array_equal(np.asarray(u), np.asarray(g))


def pretrain_config(decay: float, name: str = "adamw"):
  config = stage1_demo()
  config.optim.name, config.optim.schedule = name, "constant"
  config.optim.encoder_layer_decay = decay
  config.optim.weight_decay = 0.1
  return config


@pytest.mark.parametrize("scan", [True, False])
def test_layer_decay_in_the_optimizer_chain_with_frozen_leaves(scan):
  """AdamW (with weight decay and clipping) over the trainable subtree, the frozen positions
  left out: the decayed update is the plain update times each layer's factor."""
  decay = 0.5
  params = random_like(nn.unbox(params_lib.abstract_params(tiny(scan))), seed=1)
  grads = random_like(params, seed=2)
  updates = {}
  for d in (1.0, decay):
    optimizer = optimizer_lib.make_optimizer(pretrain_config(d), params)
    trainable, _ = optimizer_lib.partition(optimizer.trainable_mask, params)
    trained_grads, _ = optimizer_lib.partition(optimizer.trainable_mask, grads)
    state = optimizer.tx.init(trainable)
    updates[d], _ = optimizer.tx.update(trained_grads, state, trainable)
  plain = params_lib.flat_paths(updates[1.0])
  decayed = params_lib.flat_paths(updates[decay])
  assert plain.keys() == decayed.keys()
  assert "audio_encoder/positional_embedding" not in decayed  # frozen: no update at all
  assert not any(p.startswith("llm/") for p in decayed)
  for path, u in decayed.items():
    factor = np.asarray(layer_decay.path_scale(path, decay, DEPTH), np.float32)
    if factor.ndim:
      factor = factor.reshape((DEPTH,) + (1,) * (u.ndim - 1))
    np.testing.assert_allclose(np.asarray(u), np.asarray(plain[path]) * factor, rtol=1e-6,
                               err_msg=path)
  assert layer_decay.encoder_layer_decay(1.0, params) is None  # off: the chain is unchanged


def test_layer_decay_with_accumulation_in_the_train_step():
  """The train step: two accumulated micro-batches with the decay move every encoder block by
  its factor times what the whole batch moves it without the decay (SGD: the update is linear
  in the gradient), and everything else exactly as without it."""
  model = train_step_tests.MODEL
  params = jax.jit(lambda: nn.unbox(params_lib.init_params(model, jax.random.key(0))))()
  batch = train_step_tests.make_batch(rows=4, targets_from=[16, 20, 27, 33])

  def one_step(decay, accum):
    config = pretrain_config(decay, name="sgd")
    config.specaugment.enabled = False
    config.optim.grad_clip_norm, config.optim.weight_decay = 0.0, 0.0
    config.optim.learning_rate, config.optim.b1 = 1e-2, 0.0
    config.optim.grad_accum_steps = accum
    optimizer = optimizer_lib.make_optimizer(config, params)
    step = jax.jit(step_lib.make_train_step(config, model, optimizer))
    state, _ = step(step_lib.init_train_state(config, params, jax.random.key(1)), batch)
    return state.params

  decay, depth = 0.5, model.encoder.depth
  accumulated, plain = one_step(decay, 2), one_step(1.0, 1)
  expected = {}
  for path, (p0, y) in zip(params_lib.flat_paths(params),
                           zip(jax.tree.leaves(params), jax.tree.leaves(plain))):
    factor = np.asarray(layer_decay.path_scale(path, decay, depth), np.float32)
    if factor.ndim:
      factor = factor.reshape((depth,) + (1,) * (p0.ndim - 1))
    expected[path] = np.asarray(p0) + (np.asarray(y) - np.asarray(p0)) * factor
  train_step_tests.assert_same_updates(params, accumulated,
                                       jax.tree.unflatten(jax.tree.structure(params),
                                                          list(expected.values())))


def test_layer_decay_is_validated():
  config = pretrain_config(1.5)
  with pytest.raises(validation.ConfigError, match=r"config.optim.encoder_layer_decay=1.5"):
    validation.validate(config, device_count=8, process_count=1)
  with pytest.raises(ValueError, match="must be in"):
    layer_decay.scale_encoder_layers(0.0, 4)


# ----------------------------------------------------------------------------- presets


@pytest.mark.parametrize("stage_file,decay", [("pretrain.py", 0.95), ("sft.py", 1.0)])
def test_qwen_audio_presets_carry_the_quoted_values(stage_file, decay):
  config = load_config(stage_file, "qwen_audio")
  # quoted: "SpecAugment Policy: LibriSpeech Basic" (both stages); "Audio encoder learning rate
  # decay 0.95" (pretraining).
  assert config.specaugment.enabled and config.specaugment.policy == "LB"
  assert step_lib.specaugment_config(config) == specaugment.policy("LB")
  assert config.optim.encoder_layer_decay == decay
  source = open(os.path.join(ROOT, "configs", stage_file)).read() + open(
      os.path.join(ROOT, "configs", "common.py")).read()
  # Every number is marked quoted / unverified / not from the paper, none plainly "paper:".
  assert not re.search(r"#\s*paper:", source)
  assert "https://github.com/QwenLM/Qwen-Audio/issues/51" in source
