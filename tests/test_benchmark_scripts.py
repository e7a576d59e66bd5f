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
import pytest

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


def test_train_step_model_flops_match_xlas_count_of_the_forward():
  """`model_flops` / 3 (its forward) against XLA's FLOP count of the compiled forward, unrolled
  layers, plain attention, every position real and a target (so the forward's vocabulary
  projection covers what the count covers). XLA also counts the elementwise work and the masked
  half of causal attention, so it may be above, by little: measured 1.085 at this size."""
  import dataclasses
  import jax.numpy as jnp
  from qwen_audio_jax.model.qwen_audio import QwenAudio

  model_config, _ = train_step_benchmark.configs(layers=2, width=256, vocab=4096)
  model_config = dataclasses.replace(model_config, scan_layers=False, attention_impl="plain")
  (raw,) = train_step_benchmark.make_batches("30s", 1, 2, text_tokens=128, vocab=4096)
  raw["real"][:] = True
  raw["target"][:] = True
  params = jax.eval_shape(lambda: nn.unbox(init_params(model_config, jax.random.key(0))))
  forward = jax.jit(lambda p: QwenAudio(model_config).apply(
      {"params": p}, jnp.asarray(raw["ids"]), audio_mel=jnp.asarray(raw["mel"][:, None]),
      audio_lengths=jnp.asarray(raw["samples"][:, None].astype(np.int32)),
      audio_starts=jnp.ones((2, 1), jnp.int32)))
  cost = forward.lower(params).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  ratio = cost["flops"] / (train_step_benchmark.model_flops(model_config, raw) / 3)
  assert 1.0 <= ratio <= 1.15, ratio


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


def test_demo_probe_words_trains_the_encoder_on_words_alone():
  """The probe's `words` mode runs the encoder pretraining on words only (its learning is tested
  in tests/test_encoder_pretraining.py): a short run scores the held-out words and nothing
  else."""
  import argparse
  import demo_probe

  history = demo_probe.probe_words(argparse.Namespace(steps=10, batch=8, lr=3e-3,
                                                      train_words=200))
  (step, scores), = history
  assert step == 10 and set(scores) == {"word"} and 0 <= scores["word"] <= 1, history


def test_demo_probe_reliance_rolls_only_the_audio():
  """Every row with the same clip: the next row's audio is the row's own, so both conditions
  agree exactly; with different clips they do not."""
  import demo_probe
  import ml_collections
  from _train_configs import narrow
  from qwen_audio_jax.data.pipeline import DataPipeline
  from qwen_audio_jax.training import initialization
  from qwen_audio_jax.configs import pretrain

  config = pretrain.get_config("demo")
  narrow(config)  # the probe, not the model, is tested
  config.eval_data.batch_size = 4
  for task in [t for t in config.eval_data.mixture if t != "asr"]:
    del config.eval_data.mixture[task]  # ASR rows only: their positions are scored too
  model_config = initialization.model_config_from(config)
  params = jax.jit(lambda: nn.unbox(init_params(model_config, jax.random.key(0))))()
  batch = next(iter(DataPipeline(config.eval_data).iterator()))
  summaries, positions = demo_probe.reliance(params, model_config, config, [batch])
  own, other = summaries[demo_probe.OWN], summaries[demo_probe.NEXT]
  assert own["eval/target_tokens"] == other["eval/target_tokens"] > 0
  assert own["eval/loss"] != other["eval/loss"]
  key = "audio_wave" if "audio_wave" in batch else "audio_mel"
  same = dict(batch)
  same[key] = np.repeat(np.asarray(batch[key])[:1], batch[key].shape[0], axis=0)
  summaries, _ = demo_probe.reliance(params, model_config, config, [same])
  assert summaries[demo_probe.OWN] == summaries[demo_probe.NEXT]
  assert positions and all(isinstance(v, list) for v in positions.values())


def test_demo_step_benchmark_builds_each_side_from_its_overrides():
  import demo_step
  overrides = demo_step.parse_overrides("optim.vocab_rows=all, data.batch_size=4,optim.eps=1e-8")
  assert overrides == [("optim.vocab_rows", "all"), ("data.batch_size", 4), ("optim.eps", 1e-8)]
  config = demo_step.make_config("pretrain", overrides)
  assert (config.optim.vocab_rows, config.data.batch_size, config.optim.eps) == ("all", 4, 1e-8)
  assert demo_step.make_config("pretrain", []).optim.vocab_rows == "data"  # the demo's default
  with pytest.raises(SystemExit, match="no such config field"):
    demo_step.make_config("pretrain", [("optim.vocab_row", "all")])
  with pytest.raises(SystemExit, match="expected key=value"):
    demo_step.parse_overrides("optim.vocab_rows")
