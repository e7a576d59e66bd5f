"""Train step core: freezing, accumulation, loss, non-finite guard, SpecAugment, LoRA, layouts."""

import dataclasses
import importlib.util
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qwen_audio_jax import sharding
from qwen_audio_jax.audio import lengths
from qwen_audio_jax.config import get_preset
from qwen_audio_jax.model.params import init_params
from qwen_audio_jax.model.llm import project_to_vocab
from qwen_audio_jax.model.qwen_audio import QwenAudio
from qwen_audio_jax.training import loss as loss_lib
from qwen_audio_jax.training import optimizer as optimizer_lib
from qwen_audio_jax.training import step as step_lib
from qwen_audio_jax.training.trainable import trainable_mask

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = 512
AUDIO_START, AUDIO_PAD, AUDIO_END = 500, 501, 502
CLIP = 8000  # 0.5 s


def load_config(stage_file: str, preset: str = "demo"):
  spec = importlib.util.spec_from_file_location("cfg", os.path.join(ROOT, "configs", stage_file))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(preset)
  # The model below has a 512-token vocabulary: the demo's reduced output vocabulary (the demo
  # corpus's target tokens) does not fit it.
  config.loss.output_vocab, config.optim.vocab_rows = "full", "all"
  config.specaugment.enabled = False
  config.optim.warmup_steps = 0
  config.optim.schedule = "constant"
  config.optim.learning_rate = 1e-2
  return config


MODEL = dataclasses.replace(
    get_preset("tiny"), llm=dataclasses.replace(get_preset("tiny").llm, vocab_size=VOCAB))


@pytest.fixture(scope="module")
def params():
  return jax.jit(lambda: nn.unbox(init_params(MODEL, jax.random.key(0))))()


def make_batch(rows=4, length=40, seed=0, targets_from=None):
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, 400, (rows, length)).astype(np.int32)
  span = lengths.audio_span(CLIP)
  ids[:, 0], ids[:, 1:span - 1], ids[:, span - 1] = AUDIO_START, AUDIO_PAD, AUDIO_END
  target = np.zeros((rows, length), bool)
  for r in range(rows):  # rows hold different numbers of target tokens
    first = targets_from[r] if targets_from else span + 2 + 3 * r
    target[r, first:] = True
  mel = rng.normal(size=(rows, 1, MODEL.encoder.n_mels, lengths.N_FRAMES)).astype(np.float32)
  return dict(input_ids=ids, target_mask=target, segment_ids=np.ones((rows, length), np.int32),
              positions=np.tile(np.arange(length, dtype=np.int32), (rows, 1)),
              task_ids=np.tile((np.arange(rows) % 2)[:, None], (1, length)).astype(np.int32),
              audio_mel=mel, audio_lengths=np.full((rows, 1), CLIP, np.int32),
              audio_starts=np.zeros((rows, 1), np.int32))


_TRAIN_STEPS = {}  # config -> jitted step, so tests with the same config and shapes compile once


def run_steps(config, params, batch, steps=2):
  key = config.to_json()
  if key not in _TRAIN_STEPS:
    optimizer = optimizer_lib.make_optimizer(config, params)
    _TRAIN_STEPS[key] = jax.jit(step_lib.make_train_step(config, MODEL, optimizer))
  train_step = _TRAIN_STEPS[key]
  state = step_lib.init_train_state(config, params, jax.random.key(1))
  metrics = []
  for _ in range(steps):
    state, m = train_step(state, batch)
    metrics.append(jax.device_get(m))
  return state, metrics


@pytest.mark.parametrize("stage_file,trained,frozen", [
    ("pretrain.py", ("audio_encoder", "audio_bos_eos"), ("llm",)),
    ("sft.py", ("llm",), ("audio_encoder", "audio_bos_eos")),
])
def test_stage_freezes_what_the_recipe_freezes(params, stage_file, trained, frozen):
  config = load_config(stage_file)
  # The paper's freezing (the demo preset of stage 1 trains the LLM too).
  recipe = load_config(stage_file, "qwen_audio")
  config.trainable, config.frozen = recipe.trainable, recipe.frozen
  config.train_llm_in_pretrain = False
  state, metrics = run_steps(config, params, make_batch())
  for part in frozen:
    same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), params[part], state.params[part])
    assert all(jax.tree.leaves(same)), part
  for part in trained:
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), params[part],
                           state.params[part])
    assert any(jax.tree.leaves(changed)), part
  # No optimizer state at all for frozen leaves: the moments cover the trainable tree only.
  moments = sum(x.size for x in jax.tree.leaves(state.opt_state))
  trainable = sum(x.size for x in jax.tree.leaves(
      optimizer_lib.partition(trainable_mask(config, params), params)[0]))
  assert trainable < sum(x.size for x in jax.tree.leaves(params))
  assert 2 * trainable <= moments <= 2 * trainable + 16
  assert metrics[-1]["loss"] < metrics[0]["loss"] or stage_file == "pretrain.py"
  # The encoder's fixed sinusoids are never trained.
  np.testing.assert_array_equal(params["audio_encoder"]["positional_embedding"],
                                state.params["audio_encoder"]["positional_embedding"])


def test_accumulated_micro_batches_equal_one_big_batch(params):
  config = load_config("sft.py")
  # Rows with 24, 20, 13 and 7 target tokens: the two micro-batches (rows 0, 2 and 1, 3) hold
  # different numbers of them, so a mean of per-micro-batch means would differ.
  # Plain SGD: each update is the gradient times the learning rate, so comparing updates
  # compares gradients (Adam's first step, lr * g / |g|, would amplify rounding in tiny g).
  config.optim.name, config.optim.grad_clip_norm, config.optim.weight_decay = "sgd", 0.0, 0.0
  batch = make_batch(rows=4, targets_from=[16, 20, 27, 33])
  big, big_metrics = run_steps(config, params, batch, steps=1)
  assert big_metrics[0]["target_tokens"] == 64 and big_metrics[0]["grad_norm"] > 0
  config.optim.grad_accum_steps = 2
  accumulated, acc_metrics = run_steps(config, params, batch, steps=1)
  np.testing.assert_allclose(acc_metrics[0]["loss"], big_metrics[0]["loss"], rtol=1e-6)
  np.testing.assert_allclose(acc_metrics[0]["grad_norm"], big_metrics[0]["grad_norm"], rtol=1e-5)
  assert_same_updates(params, accumulated.params, big.params)


def assert_same_updates(start, a, b):
  """Updates (new - start) equal leaf by leaf within 1e-4 of the largest update of the leaf,
  plus the float32 rounding of the parameters they were added to."""
  for p0, x, y in zip(jax.tree.leaves(start), jax.tree.leaves(a), jax.tree.leaves(b)):
    p0 = np.asarray(p0)
    dx, dy = np.asarray(x) - p0, np.asarray(y) - p0
    rounding = 2 * np.spacing(np.abs(p0).max())
    np.testing.assert_allclose(dx, dy, atol=1e-4 * np.abs(dy).max() + rounding)


def test_loss_matches_a_numpy_reference(params):
  batch = make_batch()
  batch["segment_ids"][1, 28:] = 2  # a packed second example: no prediction across the boundary
  batch["segment_ids"][2, 33:] = 0  # padding
  forward = jax.jit(lambda p, b: QwenAudio(MODEL).apply(
      {"params": p}, b["input_ids"], positions=b["positions"], segment_ids=b["segment_ids"],
      audio_mel=b["audio_mel"], audio_lengths=b["audio_lengths"], audio_starts=b["audio_starts"]))
  logits = forward(params, batch)
  sums = jax.device_get(loss_lib.loss_sums(logits, batch, num_tasks=2))
  logits = np.asarray(logits, np.float64)
  total, z, count, correct = 0.0, 0.0, 0, 0
  task_loss = np.zeros(2)
  for b in range(logits.shape[0]):
    for t in range(logits.shape[1] - 1):
      seg = batch["segment_ids"][b]
      if not (batch["target_mask"][b, t + 1] and seg[t + 1] == seg[t] and seg[t + 1] != 0):
        continue
      row = logits[b, t]
      log_z = np.log(np.sum(np.exp(row - row.max()))) + row.max()
      label = batch["input_ids"][b, t + 1]
      total += log_z - row[label]
      task_loss[batch["task_ids"][b, t + 1]] += log_z - row[label]
      z += log_z ** 2
      count += 1
      correct += int(np.argmax(row) == label)
  # 78 target positions, less the boundary of row 1 and the 7 padding positions of row 2.
  assert batch["target_mask"][:, 1:].sum() == 78 and sums["target_tokens"] == count == 70
  np.testing.assert_allclose(sums["loss_sum"], total, rtol=1e-5)
  np.testing.assert_allclose(sums["z_loss_sum"], z, rtol=1e-5)
  np.testing.assert_allclose(sums["task_loss_sum"], task_loss, rtol=1e-5)
  assert sums["correct"] == correct


@pytest.mark.parametrize("chunk_length", [7, 64])  # 7 does not divide the 39 positions
def test_chunked_loss_equals_full_logits_loss(params, chunk_length):
  batch = make_batch()
  batch["segment_ids"][1, 28:] = 2
  batch["segment_ids"][2, 33:] = 0
  full = jax.jit(lambda h, b: loss_lib.loss_sums(project_to_vocab(h, b["head"]), b, 2))
  chunked = jax.jit(lambda h, b: loss_lib.chunked_loss_sums(h, b["head"], b, 2, chunk_length))
  hidden = jax.random.normal(jax.random.key(3), (4, 40, 96))
  batch["head"] = params["llm"]["lm_head"]
  want, got = jax.device_get(full(hidden, batch)), jax.device_get(chunked(hidden, batch))
  assert want["target_tokens"] == got["target_tokens"] == 70
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, err_msg=k)
  # Gradients through the chunked scan (hidden states and the head) equal the full ones.
  grad = lambda f, key: jax.grad(lambda h, w: f(h, dict(batch, head=w))[key], (0, 1))  # noqa
  for a, b in zip(grad(full, "loss_sum")(hidden, batch["head"]),
                  grad(chunked, "objective")(hidden, batch["head"])):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("z_loss_weight", [0.0, 0.25])
def test_chunked_loss_gradient_formed_in_the_forward_equals_autodiff(params, z_loss_weight):
  """The objective's gradients (formed chunk by chunk in the forward pass) equal autodiff of the
  full logits, for the hidden states and the head together or alone (a frozen head: only the
  hidden states are perturbed), and asking for the gradient of another sum is refused."""
  batch = make_batch()
  batch["segment_ids"][2, 33:] = 0
  hidden = jax.random.normal(jax.random.key(5), (4, 40, 96))
  head = params["llm"]["lm_head"]

  def full(h, w):
    sums = loss_lib.loss_sums(project_to_vocab(h, w), batch, 2)
    return sums["loss_sum"] + z_loss_weight * sums["z_loss_sum"]

  def chunked(h, w):
    return loss_lib.chunked_loss_sums(h, w, batch, 2, 16, z_loss_weight=z_loss_weight)[
        "objective"]

  np.testing.assert_allclose(jax.jit(chunked)(hidden, head), full(hidden, head), rtol=1e-5)
  want = jax.grad(full, (0, 1))(hidden, head)
  for argnums in [(0, 1), (0,), (1,)]:
    got = jax.jit(jax.grad(chunked, argnums))(hidden, head)
    for index, g in zip(argnums, got):
      np.testing.assert_allclose(g, want[index], rtol=1e-4, atol=1e-6, err_msg=str(argnums))
  with pytest.raises(ValueError, match="only 'objective' has a gradient, got one for 'loss_sum'"):
    jax.grad(lambda h: loss_lib.chunked_loss_sums(h, head, batch, 2, 16)["loss_sum"])(hidden)


def test_chunked_loss_projects_only_chunks_that_hold_targets(params):
  """Seven targets per row, chunks of 7: only the first chunk is computed, so hidden states of
  every other position (NaN here) never reach the loss or its gradients."""
  batch = make_batch(targets_from=[33, 33, 33, 33])  # positions 32..38 predict targets
  hidden = jax.random.normal(jax.random.key(4), (4, 40, 96))
  head = params["llm"]["lm_head"]
  poisoned = hidden.at[:, :32].set(jnp.nan)
  full = jax.jit(lambda h, w: loss_lib.loss_sums(project_to_vocab(h, w), batch, 2)["loss_sum"])
  chunked = jax.jit(
      lambda h, w: loss_lib.chunked_loss_sums(h, w, batch, 2, 7)["objective"])
  np.testing.assert_allclose(chunked(poisoned, head), full(hidden, head), rtol=1e-5)
  (gh, gw), (fh, fw) = jax.grad(chunked, (0, 1))(poisoned, head), jax.grad(full, (0, 1))(
      hidden, head)
  np.testing.assert_allclose(gw, fw, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(gh[:, 32:], fh[:, 32:], rtol=1e-4, atol=1e-6)
  assert not np.asarray(gh[:, :32]).any()


def test_train_step_with_chunked_loss_matches_the_full_one(params):
  config = load_config("sft.py")
  config.optim.name, config.optim.grad_clip_norm, config.optim.weight_decay = "sgd", 0.0, 0.0
  batch = make_batch()
  full, full_metrics = run_steps(config, params, batch, steps=1)
  config.loss.chunk_length = 16
  chunked, chunked_metrics = run_steps(config, params, batch, steps=1)
  np.testing.assert_allclose(chunked_metrics[0]["loss"], full_metrics[0]["loss"], rtol=1e-6)
  np.testing.assert_allclose(chunked_metrics[0]["grad_norm"], full_metrics[0]["grad_norm"],
                             rtol=1e-5)
  assert_same_updates(params, chunked.params, full.params)


def test_nonfinite_step_is_skipped(params):
  config = load_config("sft.py")
  batch = make_batch()
  batch["audio_mel"][0, 0, 0, 0] = np.nan
  state, metrics = run_steps(config, params, batch, steps=1)
  assert metrics[0]["nonfinite"] == 1.0
  assert int(state.step) == 1
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)


def test_nonfinite_update_is_skipped_like_a_nonfinite_gradient(params):
  # Finite loss and gradients, but an update that overflows: Adam's first moment near the
  # float32 maximum (as after a huge gradient) makes its bias-corrected step infinite. The
  # step must keep parameters and optimizer state as they were. (Same config and shapes as
  # the test above: no second compilation.)
  config = load_config("sft.py")
  batch = make_batch()
  run_steps(config, params, batch, steps=0)  # compiles (or reuses) the step
  train_step = _TRAIN_STEPS[config.to_json()]
  state = step_lib.init_train_state(config, params, jax.random.key(1))
  huge = jax.tree_util.tree_map_with_path(
      lambda path, x: jnp.full_like(x, 3e38) if "mu" in jax.tree_util.keystr(path) else x,
      state.opt_state)
  state = state.replace(opt_state=huge)
  new_state, metrics = train_step(state, batch)
  metrics = jax.device_get(metrics)
  assert np.isfinite(metrics["loss"]) and np.isfinite(metrics["grad_norm"])
  assert metrics["nonfinite"] == 1.0 and metrics["nonfinite_update"] == 1.0
  assert int(new_state.step) == 1
  for a, b in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(new_state.opt_state), jax.tree.leaves(huge)):
    np.testing.assert_array_equal(a, b)
  _, normal = train_step(step_lib.init_train_state(config, params, jax.random.key(1)), batch)
  assert float(normal["nonfinite"]) == 0.0 and float(normal["nonfinite_update"]) == 0.0


def test_lora_trains_only_its_factors_and_starts_from_the_base(params):
  config = load_config("sft.py")
  config.lora.rank = 4
  batch = make_batch()
  state = step_lib.init_train_state(config, params, jax.random.key(1))
  assert state.lora and all(k.startswith("llm/") for k in state.lora)
  merged = step_lib.eval_params(config, state)
  for a, b in zip(jax.tree.leaves(merged), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)  # B = 0 at the start
  state, metrics = run_steps(config, params, batch, steps=3)
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)  # the base is frozen
  assert any(float(jnp.abs(f["b"]).max()) > 0 for f in state.lora.values())
  assert metrics[-1]["loss"] < metrics[0]["loss"]


@pytest.fixture(scope="module")
def single_device_first_step(params):
  return run_steps(load_config("sft.py"), params, make_batch(rows=8), steps=1)[1]


@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (1, 8, 1), (1, 4, 2)])
def test_first_step_is_the_same_on_every_mesh_layout(params, single_device_first_step,
                                                     mesh_shape):
  config = load_config("sft.py")
  batch = make_batch(rows=8)
  expected = single_device_first_step
  mesh = sharding.make_mesh(mesh_shape)
  optimizer = optimizer_lib.make_optimizer(config, params)
  abstract = jax.eval_shape(lambda p: step_lib.init_train_state(config, p, jax.random.key(1)),
                            params)
  boxed = jax.eval_shape(lambda: init_params(MODEL, jax.random.key(0)))
  param_shardings = sharding.param_shardings(boxed, mesh)
  abstract = abstract.replace(params=jax.tree.map(
      lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), abstract.params,
      param_shardings))
  shardings = step_lib.train_state_shardings(abstract, mesh)
  state = jax.jit(lambda p: step_lib.init_train_state(config, p, jax.random.key(1)),
                  out_shardings=shardings)(params)
  global_batch = {k: jax.device_put(v, sharding.batch_sharding(mesh, v.ndim))
                  for k, v in batch.items()}
  with sharding.activation_sharding(mesh):
    train_step = jax.jit(step_lib.make_train_step(config, MODEL, optimizer),
                         in_shardings=(shardings, None), out_shardings=(shardings, None),
                         donate_argnums=0)
    _, metrics = train_step(state, global_batch)
  np.testing.assert_allclose(metrics["loss"], expected[0]["loss"], rtol=1e-5)
  np.testing.assert_allclose(metrics["grad_norm"], expected[0]["grad_norm"], rtol=1e-4)


def test_specaugment_masks_only_valid_frames_and_differs_by_key():
  config = load_config("pretrain.py")
  config.specaugment.enabled = True
  augment = step_lib.specaugment_config(config)
  batch = make_batch(rows=2)
  batch["audio_lengths"][:, 0] = [lengths.N_SAMPLES // 2, lengths.N_SAMPLES // 4]
  valid = lengths.mel_frames(batch["audio_lengths"])
  a = np.asarray(step_lib.audio_features(batch, MODEL.encoder.n_mels, jax.random.key(0), augment))
  b = np.asarray(step_lib.audio_features(batch, MODEL.encoder.n_mels, jax.random.key(1), augment))
  for row in range(2):
    frames = int(valid[row, 0])
    np.testing.assert_array_equal(a[row, 0, :, frames:], batch["audio_mel"][row, 0, :, frames:])
    assert not np.array_equal(a[row, 0, :, :frames], batch["audio_mel"][row, 0, :, :frames])
  assert not np.array_equal(a, b)
  plain = step_lib.audio_features(batch, MODEL.encoder.n_mels, jax.random.key(0), None)
  np.testing.assert_array_equal(plain, batch["audio_mel"])
