"""The benchmark scripts keep working as the trainer changes.

A benchmark that runs a real train step reads the trainer's config keys; a key added to the
trainer (as `optim.encoder_layer_decay` was) must not break it silently. Tracing only (no
compile, no timing): the step's output shapes are checked on a one-row batch.
"""

import os
import sys

import flax.linen as nn
import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
import train_step as train_step_benchmark  # noqa: E402

from qwen_audio_jax.audio import buckets as audio_buckets  # noqa: E402
from qwen_audio_jax.model.params import init_params  # noqa: E402
from qwen_audio_jax.training import optimizer as optimizer_lib  # noqa: E402
from qwen_audio_jax.training import step as step_lib  # noqa: E402


def test_train_step_benchmark_builds_the_trainers_step():
  model, _ = train_step_benchmark.configs(layers=1, width=64, vocab=512)
  config = train_step_benchmark.train_config(chunk_length=16)
  params = jax.eval_shape(lambda: nn.unbox(init_params(model, jax.random.key(0))))
  params = jax.tree.map(lambda p: np.zeros(p.shape, p.dtype), params)
  optimizer = optimizer_lib.make_optimizer(config, params)
  state = step_lib.init_train_state(config, params, jax.random.key(1))
  (raw,) = train_step_benchmark.make_batches("demo", 1, 1, text_tokens=16, vocab=512)
  batch = train_step_benchmark.ours_batch(
      raw, train_step_benchmark.TEXT_BUCKETS, audio_buckets.bucket_samples([5.0, 10.0, 30.0]))
  assert batch["audio_mel"].shape[-1] == 500  # a demo clip (<= 6.6 s) in the 5 s bucket
  new_state, metrics = jax.eval_shape(step_lib.make_train_step(config, model, optimizer),
                                      state, batch)
  assert jax.tree.map(lambda x: x.shape, new_state.params) == jax.tree.map(np.shape, params)
  assert metrics["loss"].shape == ()
