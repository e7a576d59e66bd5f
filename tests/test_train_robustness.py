"""Nothing lost, nothing silent in the training loop: non-finite updates skipped and never
checkpointed, absurd hyper-parameters refused, grain workers dying with a kill -9'd trainer,
SIGTERM during start-up.

The kill tests run the real trainer (`python -m qwen_audio_jax.train`) in a subprocess on the
tone rows of test_train_loop.py, sharing its compilation cache.
"""

import os
import signal
import subprocess
import time

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from qwen_audio_jax import errors, train
from qwen_audio_jax.training import checkpointing, metrics, validation
from qwen_audio_jax.training import step as step_lib

from _train_configs import read_until, start_trainer, terminate_when, tone_config
from test_train_loop import blow_up_config, cache_dir, initial_params, params_equal  # noqa: F401
from test_train_loop import tone_manifest  # noqa: F401  (fixtures)


def test_nonfinite_updates_are_skipped_shown_and_never_checkpointed(tmp_path, tone_manifest,
                                                                   cache_dir, monkeypatch,
                                                                   capsys):
  config = blow_up_config(tone_manifest, cache_dir)  # config.nonfinite='skip'
  monkeypatch.setattr(train.validation, "validate", lambda config: None)
  result = train.run(config, str(tmp_path), stop_at_step=2)
  for s in (1, 2):
    assert np.isfinite(result.history[s]["loss"]) and np.isfinite(result.history[s]["grad_norm"])
    assert result.history[s]["nonfinite"] == result.history[s]["nonfinite_update"] == 1.0
  progress = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
  assert "| skipped 1 |" in progress[0] and "| skipped 2 |" in progress[1], progress
  start, _, _ = initial_params(config)
  assert params_equal(result.state.params, start)
  assert checkpointing.Checkpoints(str(tmp_path), keep=3).all_steps() == [1, 2]
  for s in (1, 2):
    with ocp.StandardCheckpointer() as checkpointer:
      saved = checkpointer.restore(tmp_path / "checkpoints" / str(s) / "state")
    floats = [x for x in jax.tree.leaves(saved) if np.issubdtype(np.asarray(x).dtype, np.floating)]
    assert floats and all(np.isfinite(x).all() for x in floats)
    assert params_equal(saved["params"], start)


def test_no_checkpoint_is_written_from_a_nonfinite_state(tmp_path):
  checkpoints = checkpointing.Checkpoints(str(tmp_path), keep=2, async_save=False)
  data = grain.MapDataset.range(4).to_iter_dataset().__iter__()

  def state(value):
    return step_lib.TrainState(step=jnp.int32(3), params={"llm": {"w": jnp.array([1.0, value])}},
                               opt_state={"mu": jnp.zeros(2)}, rng=jax.random.key(0), lora={})

  with pytest.raises(errors.CheckpointError, match=r"step 3: the train state holds NaN or "
                     r"infinite values \(first: params/llm/w\); not saved.*latest checkpoint: "
                     r"step None"):
    checkpoints.save(3, state(np.inf), data)
  assert checkpoints.all_steps() == [] and not list((tmp_path / "checkpoints").iterdir())
  assert checkpoints.save(3, state(2.0), data)
  checkpoints.wait_until_finished()
  assert checkpoints.all_steps() == [3]
  checkpoints.close()


def test_validation_refuses_nonfinite_and_absurd_hyperparameters(tone_manifest, cache_dir):
  config = tone_config(tone_manifest, cache_dir)
  config.optim.learning_rate = 1e39
  config.optim.b1 = float("nan")
  config.optim.eps = float("inf")
  config.optim.grad_clip_norm = float("inf")
  config.loss.z_loss_weight = float("nan")
  with pytest.raises(validation.ConfigError) as refused:
    validation.validate(config, device_count=8, process_count=1)
  problems = "\n".join(refused.value.problems)
  for expected in ("config.optim.learning_rate=1e+39: must be a finite number in (0, 1]",
                   "config.optim.b1=nan: must be in [0, 1)", "config.optim.eps=inf: must be a "
                   "finite number in (0, 1]", "config.optim.grad_clip_norm=inf: must be a finite "
                   "number >= 0", "config.loss.z_loss_weight=nan: must be a finite number >= 0"):
    assert expected in problems, problems
  config = tone_config(tone_manifest, cache_dir)
  config.optim.learning_rate = 1e-2
  config.optim.weight_decay = 200.0
  with pytest.raises(validation.ConfigError, match=r"config.optim.weight_decay=200.0: times "
                     r"config.optim.learning_rate=0.01 must be < 1"):
    validation.validate(config, device_count=8, process_count=1)
  config.optim.weight_decay = float("inf")
  with pytest.raises(validation.ConfigError, match=r"config.optim.weight_decay=inf: must be a "
                     "finite number >= 0"):
    validation.validate(config, device_count=8, process_count=1)


def test_progress_line_shows_skipped_steps_only_when_there_are_some():
  writer = metrics.MetricsWriter("", enabled=False, total_steps=10)
  assert "skipped" not in writer.progress(3, {"train/loss": 1.0,
                                              "train/skipped_steps_total": 0.0})
  assert "| skipped 2 |" in writer.progress(3, {"train/loss": 1.0,
                                                "train/skipped_steps_total": 2.0})


def _children(pid):
  """{pid: command} of the live processes whose parent is `pid` (ps: Linux and macOS)."""
  table = subprocess.run(["ps", "-ww", "-A", "-o", "pid=,ppid=,stat=,command="],
                         capture_output=True, text=True, check=True).stdout
  out = {}
  for row in table.splitlines():
    fields = row.split(None, 3)
    if len(fields) >= 3 and int(fields[1]) == pid and not fields[2].startswith("Z"):
      out[int(fields[0])] = fields[3] if len(fields) > 3 else ""
  return out


def _alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  status = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True)
  return bool(status.stdout.strip()) and not status.stdout.strip().startswith("Z")


def test_sigkill_of_the_trainer_leaves_no_data_worker_alive(tmp_path, tone_manifest, cache_dir):
  process = start_trainer(tmp_path, tone_manifest, cache_dir, worker_count=2)
  lines = []
  try:
    read_until(process, lambda line: line.startswith("step 1/"), lines)
    children = _children(process.pid)
    workers = [p for p, command in children.items() if "multiprocessing" in command]
    assert len(workers) >= 2, children  # 2 grain workers (and the resource tracker)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    deadline = time.time() + 20
    while any(_alive(p) for p in children) and time.time() < deadline:
      time.sleep(0.2)
    survivors = {p: c for p, c in children.items() if _alive(p)}
  finally:
    if process.poll() is None:
      process.kill()
    for pid in _children(process.pid):
      os.kill(pid, signal.SIGKILL)
  for pid in survivors:  # leave nothing behind even when the test fails
    os.kill(pid, signal.SIGKILL)
  assert not survivors, survivors


def test_sigterm_during_startup_exits_0_with_a_message(tmp_path, tone_manifest, cache_dir):
  # "Workdir ..." is logged once the config is validated, before anything compiles.
  status, output = terminate_when(start_trainer(tmp_path, tone_manifest, cache_dir),
                                  lambda line: "Workdir " in line)
  assert status == 0, output[-3000:]
  assert ("received signal 15 (SIGTERM) before the first training step: nothing was trained, "
          "nothing to save; exiting") in output, output[-3000:]
  assert "Traceback" not in output
  assert not list((tmp_path / "run").glob("checkpoints/[0-9]*"))
