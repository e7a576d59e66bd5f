"""Optimizer pieces: stage regexes, no state for frozen leaves, decay mask, clipping, schedules,
LoRA factor shapes and merge (all checked against closed forms or numpy, no model compile)."""

import dataclasses
import importlib.util
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qwen_audio_jax.config import get_preset
from qwen_audio_jax.model import params as params_lib
from qwen_audio_jax.model.params import init_params
from qwen_audio_jax.training import lora as lora_lib
from qwen_audio_jax.training import optimizer as optimizer_lib
from qwen_audio_jax.training.trainable import trainable_mask

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(stage_file: str, preset: str = "demo"):
  spec = importlib.util.spec_from_file_location("cfg", os.path.join(ROOT, "configs", stage_file))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(preset)
  # The models here have small vocabularies: the demo's reduced output vocabulary and compact
  # tables (the demo corpus's tokens) do not fit them.
  config.loss.output_vocab, config.optim.vocab_rows = "full", "all"
  return config


def abstract_params(**overrides):
  model = dataclasses.replace(get_preset("tiny"), **overrides)
  return nn.unbox(jax.eval_shape(lambda: init_params(model, jax.random.key(0))))


def trained_paths(config, params):
  mask = trainable_mask(config, params)
  return {p for p, m in zip(jax.tree.leaves(params_lib.path_tree(params)),
                            jax.tree.leaves(mask)) if m}


def test_stage_regexes_select_what_the_recipe_trains():
  params = abstract_params()
  every = set(jax.tree.leaves(params_lib.path_tree(params)))
  stage1 = trained_paths(load_config("pretrain.py", "qwen_audio"), params)
  # Stage 1: the whole encoder (its projection included) and the audio bos/eos rows, except the
  # fixed sinusoidal positions; the LLM is frozen.
  assert stage1 == {p for p in every if p.startswith("audio_encoder/") or p == "audio_bos_eos"
                    } - {"audio_encoder/positional_embedding"}
  assert "audio_encoder/proj/kernel" in stage1
  # Stage 2: exactly the LLM.
  assert trained_paths(load_config("sft.py", "qwen_audio"), params) == {p for p in every
                                                          if p.startswith("llm/")}


def test_frozen_leaves_get_no_optimizer_state():
  params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                        abstract_params(llm=dataclasses.replace(get_preset("tiny").llm,
                                                                vocab_size=64)))
  config = load_config("pretrain.py")
  optimizer = optimizer_lib.make_optimizer(config, params)
  trainable, frozen = optimizer_lib.partition(optimizer.trainable_mask, params)
  state = optimizer.tx.init(trainable)
  # Every array in the state is a moment of a trainable leaf (same shape) or a scalar count.
  trained_shapes = sorted(x.shape for x in jax.tree.leaves(trainable))
  moments = sorted(x.shape for x in jax.tree.leaves(state) if x.ndim)
  assert moments == sorted(trained_shapes * 2)
  assert not any(p.startswith("llm") for p in jax.tree.leaves(params_lib.path_tree(state))
                 if "/mu/" in p or "/nu/" in p)
  # The partition round-trips.
  restored = optimizer_lib.combine(optimizer.trainable_mask, trainable, frozen)
  assert jax.tree.structure(restored) == jax.tree.structure(params)


def small_config(**optim):
  config = load_config("sft.py")
  config.trainable, config.frozen = ".", ""
  config.optim.schedule, config.optim.warmup_steps = "constant", 0
  config.optim.update(optim)
  return config


def test_weight_decay_skips_the_excluded_paths():
  params = {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones((2,))},
            "norm": {"scale": jnp.ones((2,))}}
  config = small_config(learning_rate=0.1, weight_decay=0.5, grad_clip_norm=0.0)
  optimizer = optimizer_lib.make_optimizer(config, params)
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = optimizer.tx.update(zero, optimizer.tx.init(params), params)
  # With zero gradients AdamW's update is the decoupled decay alone: -lr * wd * w.
  np.testing.assert_allclose(updates["dense"]["kernel"], -0.1 * 0.5 * np.ones((3, 2)), rtol=1e-6)
  np.testing.assert_array_equal(updates["dense"]["bias"], 0.0)
  np.testing.assert_array_equal(updates["norm"]["scale"], 0.0)


def test_global_norm_clipping_scales_the_gradient():
  params = {"a": jnp.zeros((2,)), "b": jnp.zeros((1,))}
  grads = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([12.0])}  # global norm 13
  config = small_config(name="sgd", b1=0.0, learning_rate=1.0, grad_clip_norm=1.0,
                        weight_decay=0.0)
  optimizer = optimizer_lib.make_optimizer(config, params)
  updates, _ = optimizer.tx.update(grads, optimizer.tx.init(params), params)
  np.testing.assert_allclose(updates["a"], [-3 / 13, -4 / 13], rtol=1e-6)
  np.testing.assert_allclose(updates["b"], [-12 / 13], rtol=1e-6)


@pytest.mark.parametrize("name", ["adamw", "adafactor", "sgd"])
def test_every_named_optimizer_takes_a_step(name):
  params = {"w": jnp.ones((4, 4))}
  optimizer = optimizer_lib.make_optimizer(small_config(name=name, learning_rate=0.1), params)
  updates, _ = optimizer.tx.update({"w": jnp.ones((4, 4))}, optimizer.tx.init(params), params)
  assert float(jnp.max(updates["w"])) < 0  # downhill


def test_unknown_names_are_rejected_with_the_key():
  params = {"w": jnp.ones((2,))}
  with pytest.raises(ValueError, match="config.optim.name='lamb'"):
    optimizer_lib.make_optimizer(small_config(name="lamb"), params)
  with pytest.raises(ValueError, match="config.optim.schedule='step'"):
    optimizer_lib.make_optimizer(small_config(schedule="step"), params)


def test_a_trainable_regex_that_matches_nothing_is_named():
  config = load_config("pretrain.py")
  config.trainable = "^decoder/"
  with pytest.raises(ValueError, match="config.trainable='\\^decoder/'"):
    optimizer_lib.make_optimizer(config, abstract_params())


def test_schedules_follow_their_closed_forms():
  optim = load_config("pretrain.py").optim
  optim.learning_rate, optim.warmup_steps, optim.end_learning_rate_ratio = 1e-3, 10, 0.1
  optim.schedule = "warmup_cosine"
  schedule = optimizer_lib.make_schedule(optim, total_steps=110)
  for step in (0, 5, 10, 35, 60, 110, 150):
    if step <= 10:
      expected = 1e-3 * step / 10
    else:
      progress = min(step - 10, 100) / 100
      expected = 1e-4 + 0.5 * (1e-3 - 1e-4) * (1 + math.cos(math.pi * progress))
    np.testing.assert_allclose(schedule(step), expected, rtol=1e-5, atol=1e-10)
  optim.schedule = "warmup_linear"
  schedule = optimizer_lib.make_schedule(optim, total_steps=110)
  for step in (5, 10, 60, 110):
    expected = 1e-3 * step / 10 if step <= 10 else 1e-3 - (1e-3 - 1e-4) * (step - 10) / 100
    np.testing.assert_allclose(schedule(step), expected, rtol=1e-5)
  optim.schedule = "constant"
  assert optimizer_lib.make_schedule(optim, total_steps=110)(77) == pytest.approx(1e-3)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_lora_factors_match_the_kernels_and_merge_as_w_plus_scaled_ab(scan_layers):
  model = dataclasses.replace(get_preset("tiny"), scan_layers=scan_layers,
                              llm=dataclasses.replace(get_preset("tiny").llm, vocab_size=64))
  params = jax.jit(lambda: nn.unbox(init_params(model, jax.random.key(0))))()
  config = load_config("sft.py")
  config.lora.rank, config.lora.alpha = 2, 6.0
  factors = lora_lib.init_lora(config, params, jax.random.key(1))
  kernels = lora_lib.targets(params, config.lora.target)
  assert set(factors) == set(kernels) and len(kernels) == 4 * (1 if scan_layers else 2)
  rng = np.random.default_rng(0)
  factors = {p: {"b": rng.normal(size=f["b"].shape).astype(np.float32), "a": f["a"]}
             for p, f in factors.items()}
  merged = lora_lib.merge(config, params, factors)
  for path, kernel in kernels.items():
    a, b = np.asarray(factors[path]["a"]), factors[path]["b"]
    kernel = np.asarray(kernel)
    layers = kernel.shape[:1] if scan_layers else ()
    n_in = math.prod(kernel.shape[len(layers):len(layers) + (2 if "/out/" in path else 1)])
    assert a.shape == layers + (n_in, 2) and b.shape[:-1] == layers + (2,)
    expected = kernel + 3.0 * np.matmul(a, b).reshape(kernel.shape)
    got = np.asarray(lora_lib.targets(merged, f"^{path}$")[path])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  # Everything else is untouched.
  untouched = {p: v for p, v in zip(jax.tree.leaves(params_lib.path_tree(params)),
                                    jax.tree.leaves(merged)) if p not in kernels}
  for path, value in untouched.items():
    np.testing.assert_array_equal(value, lora_lib.targets(params, f"^{path}$")[path])


def test_lora_target_that_matches_nothing_is_named():
  config = load_config("sft.py")
  config.lora.rank, config.lora.target = 2, "^llm/nothing$"
  with pytest.raises(ValueError, match="config.lora.target='\\^llm/nothing\\$'"):
    lora_lib.init_lora(config, abstract_params(), jax.random.key(0))
