"""Training configs shared by the training-loop tests and the subprocess one of them starts
(which must not import the test module: it imports qwen_audio_jax.train, whose flags may be
defined only once in a process)."""

import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
import time

import ml_collections

from qwen_audio_jax.data.config import mixture_entry

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A narrower tiny model: the loop, not the model, is under test here (its vocabulary stays the
# real one, so the demo corpus's token ids fit).
NARROW = dict(
    encoder=dict(width=32, heads=2, mlp_dim=64, depth=1, output_dim=32),
    llm=dict(width=32, heads=2, kv_heads=1, head_dim=16, mlp_dim=64, depth=1))


def narrow(c):
  """The NARROW model in config `c`, with a fresh encoder: the demo's pretrained encoder
  (`init.whisper` of pretrain.py:demo) fits the tiny preset's sizes only."""
  c.model.overrides = ml_collections.ConfigDict(NARROW)
  c.init.whisper = ""
  return c


def load_config(name, preset="demo"):
  """configs/<name>.py's get_config(preset)."""
  spec = importlib.util.spec_from_file_location(f"config_{name}",
                                                os.path.join(REPO, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(preset)


def tone_config(manifest, cache, **loop):
  """Stage 1 on the tone rows with the narrow model; runs stop early through `stop_at_step`
  (a long schedule keeps the compiled step the same for every test, SIGTERM's included)."""
  c = load_config("pretrain")
  narrow(c)
  c.data.mixture = ml_collections.ConfigDict({"asr": mixture_entry(paths=manifest, tasks="asr")})
  c.data.batch_size = 8
  c.data.text_buckets = (64,)
  c.total_steps = 10_000
  c.optim.warmup_steps = 1
  c.log_every = 1
  c.eval_every = 0
  c.checkpoint.keep_best_metric = ""
  c.checkpoint.every_steps = 2
  c.compilation_cache_dir = cache
  for key, value in loop.items():
    c[key] = value
  return c


def start_trainer(tmp_path, manifest, cache, **data):
  """`python -m qwen_audio_jax.train` on `tone_config` (checkpoints only at the end; `data` keys
  overridden) with workdir tmp_path/run; stdout and stderr piped together."""
  config_file = tmp_path / "trainer_config.py"
  config_file.write_text(textwrap.dedent(f"""
      import sys
      sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
      from _train_configs import tone_config

      def get_config():
        c = tone_config({manifest!r}, {cache!r})
        c.checkpoint.every_steps = 10_000
        c.data.update({data!r})
        return c
      """))
  return subprocess.Popen(
      [sys.executable, "-m", "qwen_audio_jax.train", f"--config={config_file}",
       f"--workdir={tmp_path / 'run'}"], cwd=REPO, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True)


def read_until(process, predicate, lines, seconds=240):
  """Appends the process's output lines to `lines` until one satisfies `predicate`."""
  deadline = time.time() + seconds
  for line in process.stdout:
    lines.append(line)
    if predicate(line):
      return
    assert time.time() < deadline, "".join(lines[-20:])
  raise AssertionError("the trainer ended early:\n" + "".join(lines[-30:]))


def terminate_when(process, predicate, seconds=240):
  """SIGTERM at the first output line satisfying `predicate`; (exit status, whole output)."""
  lines = []
  try:
    read_until(process, predicate, lines, seconds)
    process.send_signal(signal.SIGTERM)
    rest, _ = process.communicate(timeout=120)
  finally:
    if process.poll() is None:
      process.kill()
  return process.returncode, "".join(lines) + rest


def multihost_config(manifest, cache):
  """The 2-process test's run: two text buckets, so the processes must agree on each batch's
  text length (their rows differ)."""
  c = tone_config(manifest, cache)
  c.data.text_buckets = (40, 64)
  c.data.shuffle = False
  return c
