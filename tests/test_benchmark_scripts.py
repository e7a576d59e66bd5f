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


def test_profile_step_reads_a_trace_back_into_parts(tmp_path):
  """A traced program whose products sit in known name scopes: the reader finds their thunks,
  maps them to op_names, and names the parts (forward and backward)."""
  import jax.numpy as jnp
  import profile_step

  def model(w, x):
    with jax.named_scope("audio_encoder"):
      h = jnp.tanh(x @ w)
      with jax.named_scope("attention"):
        h = jax.nn.softmax(h @ h.T) @ h
    with jax.named_scope("loss"):
      return jnp.sum(h * h)

  step = jax.jit(jax.value_and_grad(model))
  w, x = jnp.ones((256, 256)) / 256, jnp.ones((512, 256))
  compiled = step.lower(w, x).compile()
  names = profile_step.op_names(compiled.as_text())
  jax.block_until_ready(compiled(w, x))
  with jax.profiler.trace(str(tmp_path)):
    for _ in range(2):
      jax.block_until_ready(compiled(w, x))
  times = profile_step.thunk_times(str(tmp_path), steps=2)
  assert times and all(ms >= 0 for ms in times.values())
  parts = {profile_step.part_of(names.get(thunk, "")) for thunk in times}
  assert {"encoder attention, forward", "encoder attention, backward",
          "encoder, forward"} <= parts, parts
  kinds = {profile_step.kind_of(thunk, names.get(thunk, "")) for thunk in times}
  assert "matmul" in kinds, kinds
