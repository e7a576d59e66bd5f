"""The training loop end to end on 8 CPU devices: falling loss in both stages on the demo corpus,
exact resume, unfinished checkpoints ignored, SIGTERM, the non-finite halt, and what the workdir
holds.

Runs go through `train.run` in this process (one subprocess for SIGTERM). Every run shares one
persistent compilation cache, so equal configs compile once.
"""

import dataclasses
import glob
import json
import os
import shutil

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
import soundfile

from qwen_audio_jax import sharding, train
from qwen_audio_jax.convert import stacking
from qwen_audio_jax.data import DataPipeline
from qwen_audio_jax.training import checkpointing, initialization
from qwen_audio_jax.training import step as step_lib

from _train_configs import load_config, narrow, start_trainer, terminate_when, tone_config


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  """One compilation cache for every run of this session (pytest-xdist workers included)."""
  path = tmp_path_factory.getbasetemp().parent / "train_loop_jax_cache"
  path.mkdir(exist_ok=True)
  return str(path)


@pytest.fixture(scope="module")
def tone_manifest(tmp_path_factory):
  """Twenty short ASR rows of pure tones (rows of ~40 tokens)."""
  root = tmp_path_factory.mktemp("tones")
  rows = []
  for i in range(20):
    t = np.arange(8000) / 16000
    soundfile.write(root / f"t{i}.wav", (0.3 * np.sin(2 * np.pi * (200 + 40 * i) * t)
                                         ).astype(np.float32), 16000)
    rows.append({"id": f"t{i}", "task": "asr", "audio": f"t{i}.wav", "audio_language": "en",
                 "text": f"tone {i % 4}", "text_language": "en", "itn": False})
  path = root / "train.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


def params_equal(a, b):
  a, b = jax.device_get(a), jax.device_get(b)
  return jax.tree.structure(a) == jax.tree.structure(b) and all(
      np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def initial_params(config):
  """The parameters `train.run` starts from (same seed split, same init)."""
  model_config = initialization.model_config_from(config)
  mesh = train.build_mesh(config)
  rng_params, _ = jax.random.split(jax.random.key(config.seed))
  params, _ = initialization.initial_params(config, model_config, mesh, rng_params)
  return params, mesh, model_config


def eval_loss(config, params, mesh, model_config):
  eval_step = jax.jit(step_lib.make_eval_step(config, model_config))
  with sharding.activation_sharding(mesh):
    return train.evaluate(eval_step, params, DataPipeline(config.eval_data), mesh,
                          config.eval_steps)["eval/loss"]


@pytest.mark.parametrize("stage", ["pretrain", "sft"])
def test_loss_falls_on_the_demo_corpus(stage, tmp_path, cache_dir):
  c = load_config(stage)
  narrow(c)
  c.mesh.data, c.mesh.tensor = 4, 2  # also a tensor-parallel layout through the whole loop
  c.data.batch_size = c.eval_data.batch_size = 4
  if stage == "pretrain":  # the short-row tasks of the corpus, one 128-token bucket
    # The paper's stage 1 (the demo preset also trains its random LLM): the LLM stays frozen.
    c.trainable, c.train_llm_in_pretrain = r"^audio_encoder/|^audio_bos_eos", False
    for task in ("asr", "srwt"):
      del c.data.mixture[task]
      del c.eval_data.mixture[task]
    c.data.text_buckets = c.eval_data.text_buckets = (128,)
  else:
    c.data.text_buckets = c.eval_data.text_buckets = (256,)
  steps = 8 if stage == "pretrain" else 6
  c.total_steps = steps
  c.optim.learning_rate = 1e-2 if stage == "pretrain" else 5e-3  # few steps: large ones
  c.optim.warmup_steps = 2
  c.log_every = steps // 2
  c.eval_every = steps
  c.eval_steps = 1
  c.checkpoint.every_steps = steps
  c.compilation_cache_dir = cache_dir
  before, mesh, model_config = initial_params(c)
  start = eval_loss(c, before, mesh, model_config)

  result = train.run(c, str(tmp_path))

  # Held-out loss on the same eval batches before and after. Stage 1 trains only the audio side
  # under a frozen random LLM, whose fixed output head bounds how far the loss can move in a few
  # steps; stage 2 trains the LLM itself.
  end = result.evals[steps]["eval/loss"]
  assert end < start - (0.01 if stage == "pretrain" else 0.1), (start, end)
  if stage == "sft":  # large enough to show through the batch-to-batch noise of train losses
    train_losses = [result.history[s]["loss"] for s in sorted(result.history)]
    assert np.mean(train_losses[-3:]) < np.mean(train_losses[:3]) - 0.05
  # The stage's frozen half is bit-identical after training.
  after = jax.device_get(result.state.params)
  before = jax.device_get(before)
  frozen, trained = ("llm", "audio_encoder") if stage == "pretrain" else ("audio_encoder", "llm")
  assert params_equal(before[frozen], after[frozen])
  assert not params_equal(before[trained], after[trained])
  # The workdir: resolved config, TensorBoard events, the final checkpoint.
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["stage"] == stage and saved["total_steps"] == steps
  assert glob.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*"))
  assert checkpointing.Checkpoints(str(tmp_path), keep=1).latest_step() == steps


def test_resume_is_exact_and_skips_unfinished_checkpoints(tmp_path, tone_manifest, cache_dir,
                                                          monkeypatch):
  config = tone_config(tone_manifest, cache_dir)
  straight = train.run(config, str(tmp_path / "straight"), stop_at_step=4)
  assert straight.step == 4 and straight.resumed_from is None

  workdir = tmp_path / "stopped"
  first = train.run(config, str(workdir), stop_at_step=2)
  assert first.preempted and first.step == 2
  # A complete-looking copy under Orbax's temporary name (a save that never finalised) and a
  # half-written one: neither may be restored.
  ckpts = workdir / "checkpoints"
  shutil.copytree(ckpts / "2", ckpts / "4.orbax-checkpoint-tmp-1700000000")
  (ckpts / "3.orbax-checkpoint-tmp-1700000001" / "state").mkdir(parents=True)

  resumed = train.run(config, str(workdir), stop_at_step=4)
  assert resumed.resumed_from == 2 and resumed.step == 4
  for s in (3, 4):
    assert resumed.history[s]["loss"] == straight.history[s]["loss"]
  assert params_equal(resumed.state.params, straight.state.params)
  assert params_equal(resumed.state.opt_state, straight.state.opt_state)
  assert not list(ckpts.glob("*orbax-checkpoint-tmp*"))

  # A later stage starts from this run's step directory (config.init.checkpoint), given
  # relative to the current directory as on a command line: exactly its parameters.
  monkeypatch.chdir(tmp_path)
  model_config = initialization.model_config_from(config)
  started = initialization.load_full(os.path.join("stopped", "checkpoints", "4"), model_config,
                                     train.build_mesh(config))
  assert params_equal(started, resumed.state.params)
  # ... and a run that unrolls its layers (the demo's layout) gets the same weights unstacked.
  unrolled = dataclasses.replace(model_config, scan_layers=not model_config.scan_layers)
  relaid = initialization.load_full(os.path.join("stopped", "checkpoints", "4"), unrolled,
                                    train.build_mesh(config))
  back = stacking.stack_layers(relaid) if model_config.scan_layers else stacking.unstack_layers(
      relaid)
  assert jax.tree.structure(relaid) != jax.tree.structure(started)
  assert params_equal(back, resumed.state.params)


def blow_up_config(manifest, cache, **loop):
  """Finite loss and gradients, but a first update that turns every trained weight inf / NaN
  (a learning rate past what validation allows: tests bypass it to reach the step's guard)."""
  config = tone_config(manifest, cache, **loop)
  config.optim.learning_rate = 1e39
  config.optim.schedule = "constant"
  config.optim.warmup_steps = 0
  config.optim.grad_clip_norm = 0.0
  config.checkpoint.every_steps = 1
  return config


def test_nonfinite_halt_names_the_step_and_saves_nothing_after_it(tmp_path, tone_manifest,
                                                                 cache_dir, monkeypatch):
  config = blow_up_config(tone_manifest, cache_dir, nonfinite="halt")
  monkeypatch.setattr(train.validation, "validate", lambda config: None)
  with pytest.raises(FloatingPointError, match=r"non-finite update at step 1 .*latest "
                     r"checkpoint: step None"):
    train.run(config, str(tmp_path), stop_at_step=4)
  assert checkpointing.Checkpoints(str(tmp_path), keep=1).all_steps() == []


def test_sigterm_saves_a_restorable_checkpoint_and_exits_0(tmp_path, tone_manifest, cache_dir):
  # The child's config file takes `tone_config` from tests/_train_configs.py, not from this
  # module (which imports qwen_audio_jax.train: its flags must be defined only once).
  workdir = tmp_path / "run"
  status, output = terminate_when(start_trainer(tmp_path, tone_manifest, cache_dir),
                                  lambda line: line.startswith("step 2/10000"))
  assert status == 0, output[-3000:]
  # precompile='first_batch' (the demo's): only the 7 s audio bucket the clips need is compiled.
  assert "Compiled train_step for text length 64, audio 112000 samples" in output, output[-3000:]
  assert "audio 480000 samples" not in output
  steps = checkpointing.Checkpoints(str(workdir), keep=1).all_steps()
  assert len(steps) == 1 and 2 <= steps[0] < 10_000, output[-3000:]
  with ocp.StandardCheckpointer() as checkpointer:
    state = checkpointer.restore(workdir / "checkpoints" / str(steps[0]) / "state")
  assert int(state["step"]) == steps[0]
  assert (workdir / "checkpoints" / str(steps[0]) / "data" / "process_0-of-1.json").exists()
