"""Two processes on localhost (jax.distributed, 4 CPU devices each) train the tiny model with
per-host data, save, resume, and produce the losses of one process driving all 8 devices on the
same global batches; SIGTERM to both stops them at the same step through JAX's preemption sync.
One test, so that the processes start twice (not three times): the suite's time budget.
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import portpicker
import pytest
import soundfile

from qwen_audio_jax import sharding, train
from qwen_audio_jax.data import DataPipeline
from qwen_audio_jax.data.global_batch import make_global_batch, pad_text_length
from qwen_audio_jax.training import initialization
from qwen_audio_jax.training import metrics as metrics_lib
from qwen_audio_jax.training import optimizer as optimizer_lib
from qwen_audio_jax.training import step as step_lib

from _train_configs import REPO, multihost_config

WORKER = os.path.join(REPO, "tests", "_multihost_worker.py")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
  """Tone rows whose transcripts have two lengths, so the two text buckets both occur and the
  two processes' batches differ in length."""
  root = tmp_path_factory.mktemp("multihost")
  rows = []
  t = np.arange(4000) / 16000
  for i in range(16):
    soundfile.write(root / f"t{i}.wav", (0.3 * np.sin(2 * np.pi * (220 + 30 * i) * t)
                                         ).astype(np.float32), 16000)
    # Rows 0, 4, 8, 12 are long (over the 40-token bucket) and all go to process 0, so at some
    # steps process 0's batch is 64 tokens long and process 1's 40.
    text = f"tone {i}" if i % 4 else f"tone {i} " + "and a much longer transcript " * 6
    rows.append({"id": f"t{i}", "task": "asr", "audio": f"t{i}.wav", "audio_language": "en",
                 "text": text, "text_language": "en", "itn": False})
  path = root / "train.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


def start(process_id, port, manifest, cache, workdir, stop_at, out):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  return subprocess.Popen(
      [sys.executable, WORKER, str(process_id), "2", str(port), manifest, cache, workdir,
       str(stop_at), out], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True)


def finish(procs, outs):
  logs = [p.communicate(timeout=900)[0] for p in procs]
  codes = [p.returncode for p in procs]
  assert codes == [0, 0], "\n".join(f"--- process {i} (exit {c}):\n{log[-2500:]}"
                                     for i, (c, log) in enumerate(zip(codes, logs)))
  return [json.load(open(o, encoding="utf-8")) for o in outs]


def run_two(manifest, cache, workdir, stop_at, tmp_path, tag, sigterm_after_checkpoint=None):
  """Both processes to `stop_at`; or, with `sigterm_after_checkpoint`, SIGTERM to both once that
  step's checkpoint exists (they must then stop together at a later step)."""
  port = portpicker.pick_unused_port()
  outs = [str(tmp_path / f"{tag}{i}.json") for i in range(2)]
  procs = [start(i, port, manifest, cache, workdir, stop_at, outs[i]) for i in range(2)]
  if sigterm_after_checkpoint is not None:
    marker = os.path.join(workdir, "checkpoints", str(sigterm_after_checkpoint))
    deadline = time.time() + 600
    while time.time() < deadline and not os.path.isdir(marker):
      assert all(p.poll() is None for p in procs), finish(procs, outs)
      time.sleep(0.2)
    for p in procs:
      p.send_signal(signal.SIGTERM)
  return finish(procs, outs)


def reference_losses(manifest, cache, steps):
  """One process, 8 devices, the same global batches: host 0's rows then host 1's."""
  config = multihost_config(manifest, cache)
  model_config = initialization.model_config_from(config)
  mesh = train.build_mesh(config)
  rng_params, rng_train = jax.random.split(jax.random.key(config.seed))
  params, _ = initialization.initial_params(config, model_config, mesh, rng_params)
  optimizer = optimizer_lib.make_optimizer(config, params)
  state = jax.jit(lambda p, r: step_lib.init_train_state(config, p, r))(params, rng_train)
  step_fn = jax.jit(step_lib.make_train_step(config, model_config, optimizer))
  pipelines = [DataPipeline(config.data, process_index=i, process_count=2) for i in range(2)]
  iterators = [p.iterator() for p in pipelines]
  losses, lengths = [], []
  for _ in range(steps):
    local = [next(it) for it in iterators]
    length = max(b["input_ids"].shape[1] for b in local)
    lengths.append({b["input_ids"].shape[1] for b in local})
    padded = [pad_text_length(b, length) for b in local]
    batch = {k: np.concatenate([b[k] for b in padded]) for k in padded[0]}
    with sharding.activation_sharding(mesh):
      state, metrics = step_fn(state, make_global_batch(batch, mesh))
    losses.append(metrics_lib.flatten_step_metrics(jax.device_get(metrics),
                                                   pipelines[0].task_names)["loss"])
  return losses, lengths


def test_two_processes_train_save_resume_as_one_and_stop_together(manifest, tmp_path):
  """Train to step 2 and save; resume (both processes) and SIGTERM both once step 4 is saved:
  JAX's preemption sync stops them at the same step. The losses of steps 1..end are those of
  one process on 8 devices."""
  cache = str(tmp_path / "cache")
  workdir = str(tmp_path / "run")
  first = run_two(manifest, cache, workdir, 2, tmp_path, "a")
  assert all(r["process_count"] == 2 and r["devices"] == 8 for r in first)
  assert first[0]["resumed_from"] is None and first[0]["step"] == 2
  second = run_two(manifest, cache, workdir, 10_000, tmp_path, "b", sigterm_after_checkpoint=4)
  end = second[0]["step"]
  assert second[0]["resumed_from"] == 2 and second[1]["step"] == end > 4
  assert os.path.isdir(os.path.join(workdir, "checkpoints", str(end)))
  losses = {**first[0]["losses"], **second[0]["losses"]}
  # Both processes see the same (replicated) metrics.
  assert first[0]["losses"] == first[1]["losses"] and second[0]["losses"] == second[1]["losses"]
  expected, lengths = reference_losses(manifest, cache, end)
  # The hosts' batches differed in text length at some step: the agreement was exercised.
  assert any(len(s) == 2 for s in lengths), lengths
  np.testing.assert_allclose([losses[str(s)] for s in range(1, end + 1)], expected, rtol=1e-5)
