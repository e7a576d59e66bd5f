"""checkpoints.load_model: a run's step directory (LoRA factors merged exactly as the step's
evaluation merges them) and a converted checkpoint read into the same LoadedModel; paths that are
neither are refused with a message that says what was expected."""

import json

import jax
import ml_collections
import numpy as np
import pytest
import soundfile

from qwen_audio_jax import checkpoints, train
from qwen_audio_jax.convert import orbax_io
from qwen_audio_jax.data.config import mixture_entry
from qwen_audio_jax.text import tokenizer as tokenizer_lib
from qwen_audio_jax.training import step as step_lib

from _train_configs import narrow, load_config


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
  """Three stage-2 steps with LoRA (rank 2) on a few tone rows."""
  root = tmp_path_factory.mktemp("lora_run")
  t = np.arange(4000) / 16000
  rows = []
  for i in range(8):
    soundfile.write(root / f"t{i}.wav", (0.3 * np.sin(2 * np.pi * (300 + 50 * i) * t)
                                         ).astype(np.float32), 16000)
    rows.append({"id": f"t{i}", "task": "asr", "audio": f"t{i}.wav", "audio_language": "en",
                 "text": f"tone {i % 3}", "text_language": "en", "itn": False})
  (root / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  c = load_config("sft")
  narrow(c)
  c.data.mixture = ml_collections.ConfigDict(
      {"asr": mixture_entry(paths=str(root / "rows.jsonl"), tasks="asr")})
  c.data.batch_size = 8
  c.data.text_buckets = (64,)
  c.total_steps = 3
  c.optim.warmup_steps = 1
  c.optim.learning_rate = 1e-2
  c.lora.rank = 2
  c.eval_every = 0
  c.log_every = 1
  c.checkpoint.keep_best_metric = ""
  c.checkpoint.every_steps = 3
  c.compilation_cache_dir = str(root / "cache")
  result = train.run(c, str(root / "workdir"))
  return c, result, root / "workdir"


def assert_trees_equal(a, b):
  a, b = jax.device_get(a), jax.device_get(b)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_run_step_dir_loads_with_lora_merged(lora_run):
  config, result, workdir = lora_run
  loaded = checkpoints.load_model(str(workdir / "checkpoints" / "3"))
  assert loaded.source == "run" and loaded.step == 3
  assert loaded.lora is not None and loaded.lora_config.rank == 2
  assert loaded.model_config == orbax_io.load_model_config(str(workdir))
  # What the run's own evaluation used: the step's merge of the final state.
  assert_trees_equal(loaded.params, step_lib.eval_params(config, result.state))
  # LoRA changed the weights (B moved off zero), so the merge is not a no-op.
  trained = jax.device_get(result.state.lora)
  assert any(np.abs(f["b"]).max() > 0 for f in trained.values())
  assert isinstance(loaded.tokenizer, tokenizer_lib.QwenAudioTokenizer)


def test_converted_checkpoint_loads(lora_run, tmp_path):
  _, _, workdir = lora_run
  run = checkpoints.load_model(str(workdir / "checkpoints" / "3"))
  out = orbax_io.save_checkpoint(str(tmp_path / "converted"), checkpoints.host_params(run),
                                 run.model_config, {"layout": "test"})
  loaded = checkpoints.load_model(out)
  assert loaded.source == "converted" and loaded.step is None and loaded.lora is None
  assert_trees_equal(loaded.params, run.params)


def test_paths_that_are_no_checkpoint_are_refused(lora_run, tmp_path):
  _, _, workdir = lora_run
  with pytest.raises(checkpoints.CheckpointNotFound, match="no such checkpoint"):
    checkpoints.load_model(str(tmp_path / "missing"))
  # A run's workdir itself: the message points at its latest step.
  with pytest.raises(checkpoints.CheckpointNotFound, match=r"checkpoints/3"):
    checkpoints.load_model(str(workdir))
  (tmp_path / "empty").mkdir()
  with pytest.raises(checkpoints.CheckpointNotFound, match="not a checkpoint"):
    checkpoints.load_model(str(tmp_path / "empty"))
