"""config.optim.vocab_rows='data': training the compact tables (the embedding rows of the tokens
the training rows hold, the head's kept columns and one tied copy) gives the parameters, loss and
gradient norm of training the full tables, with clipping and accumulation in play, and keeps the
full tables of the train state current."""

import jax
import ml_collections
import numpy as np
import pytest

import _train_configs
from qwen_audio_jax.data import DataPipeline
from qwen_audio_jax.training import initialization
from qwen_audio_jax.training import optimizer as optimizer_lib
from qwen_audio_jax.training import step as step_lib
from qwen_audio_jax.training import validation
from qwen_audio_jax.training import vocab_rows
from qwen_audio_jax.training.layout import build_mesh

STEPS = 3


def _config(mode):
  c = _train_configs.load_config("pretrain")
  _train_configs.narrow(c)
  c.data.batch_size = 4
  c.optim.vocab_rows = mode
  c.optim.learning_rate = 1e-2
  c.optim.warmup_steps = 0
  c.optim.schedule = "constant"
  c.optim.grad_clip_norm = 0.5  # below the first steps' norms: clipping is exercised
  c.optim.grad_accum_steps = 2
  return c


@pytest.fixture(scope="module")
def batches():
  iterator = DataPipeline(_config("data").data).iterator()
  out = [jax.tree.map(np.asarray, next(iterator)) for _ in range(STEPS)]
  # A token no training row holds, at a non-padding position of the last batch.
  ids = out[-1]["input_ids"]
  row, position = np.argwhere(out[-1]["segment_ids"] != 0)[3]
  ids[row, position] = FOREIGN
  return out


FOREIGN = 120_000  # a Chinese-text token: not in the demo corpus


def _train(mode, batches):
  config = _config(mode)
  model_config = initialization.model_config_from(config)
  mesh = build_mesh(config)
  params, _ = initialization.initial_params(config, model_config, mesh, jax.random.key(0))
  optimizer = optimizer_lib.make_optimizer(config, params)
  state = step_lib.init_train_state(config, params, jax.random.key(1))
  step = jax.jit(step_lib.make_train_step(config, model_config, optimizer))
  metrics = []
  for batch in batches:
    state, m = step(state, batch)
    metrics.append(jax.device_get(m))
  return params, state, metrics, optimizer


def test_compact_tables_train_exactly_like_the_full_ones(batches):
  start, full, full_metrics, _ = _train("all", batches)
  _, compact, compact_metrics, optimizer = _train("data", batches)
  rows = optimizer.vocab_rows
  assert FOREIGN not in set(rows.input_ids.tolist())
  assert 100 < len(rows.input_ids) < 5000 and 50 < len(rows.output.ids) <= len(rows.input_ids)
  for want, got in zip(full_metrics, compact_metrics):
    assert want["grad_norm"] > 0.5  # clipped
    np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5)
    np.testing.assert_allclose(got["grad_norm"], want["grad_norm"], rtol=1e-5)
  assert [m["untrained_tokens"] for m in compact_metrics] == [0.0] * (STEPS - 1) + [1.0]

  # Every parameter as the full tables' training left it, the tables included (which moved).
  flat_full = dict(jax.tree_util.tree_flatten_with_path(full.params)[0])
  flat_start = dict(jax.tree_util.tree_flatten_with_path(start)[0])
  for path, value in jax.tree_util.tree_flatten_with_path(compact.params)[0]:
    name = jax.tree_util.keystr(path)
    want = np.asarray(flat_full[path])
    got = np.asarray(value)
    if name == "['llm']['embed']":
      # The foreign token's row: trained in full, fixed (and counted) in compact.
      np.testing.assert_array_equal(got[FOREIGN], np.asarray(flat_start[path])[FOREIGN])
      got, want = np.delete(got, FOREIGN, axis=0), np.delete(want, FOREIGN, axis=0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, err_msg=name)
  head = np.asarray(compact.params["llm"]["lm_head"])
  tied = np.setdiff1d(np.arange(head.shape[1]), rows.output.ids)
  assert np.abs(head[:, tied[0]]).max() > 0 and np.all(head[:, tied] == head[:, tied[:1]])
  moved = np.abs(np.asarray(compact.params["llm"]["embed"])[rows.input_ids]
                 - np.asarray(start["llm"]["embed"])[rows.input_ids]).max()
  assert moved > 1e-3

  # The optimizer's moments cover the compact tables only.
  sizes = lambda tree: sum(x.size for x in jax.tree.leaves(tree))  # noqa: E731
  assert sizes(compact.opt_state) * 20 < sizes(full.opt_state)


@pytest.mark.parametrize("change,message", [
    (dict(name="adafactor"), "elementwise"),
    (dict(weight_decay=0.1), "weight_decay_exclude"),
])
def test_inexact_optimizers_are_refused(change, message):
  config = _config("data")
  config.optim.update(change)
  assert message in vocab_rows.refusal(config)
  with pytest.raises(ValueError, match=message):
    validation.validate(config, device_count=1)


def test_decay_with_the_embedding_excluded_is_accepted_and_output_vocab_is_needed():
  config = _config("data")
  config.optim.weight_decay = 0.1
  config.optim.weight_decay_exclude = r"/(bias|scale)$|^llm/embed$"
  assert vocab_rows.refusal(config) is None
  config.loss.output_vocab = "full"
  assert "output_vocab='data'" in vocab_rows.refusal(config)
