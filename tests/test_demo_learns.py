"""The demo recipe learns: a few dozen steps of stage 1 (the LLM trained too, the output
vocabulary of the targets) on a slice of the demo corpus move the decoding metric from
generation the right way, from a fixed seed. The full targets are the demo run's own report."""

import json

import ml_collections
import numpy as np
import pytest

from _train_configs import NARROW, load_config
from qwen_audio_jax import train
from qwen_audio_jax.data import manifest as manifest_lib
from qwen_audio_jax.data.config import DEMO_DIR, mixture_entry
from qwen_audio_jax.evaluate.config import benchmark_config

ROWS, STEPS, EVERY = 6, 40, 20  # one clip of each sound kind


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("jax_cache"))


def test_a_few_dozen_steps_raise_event_accuracy_from_generation(tmp_path, cache_dir):
  rows = [row for _, row in manifest_lib.iter_rows(f"{DEMO_DIR}/train.jsonl", tasks=["event"])]
  slice_path = tmp_path / "slice.jsonl"
  slice_path.write_text("".join(json.dumps(r) + "\n" for r in rows[:ROWS]))
  c = load_config("pretrain")
  assert c.train_llm_in_pretrain and c.loss.output_vocab == "data"  # the demo recipe
  c.model.overrides = ml_collections.ConfigDict(NARROW)
  c.data.mixture = ml_collections.ConfigDict({"event": mixture_entry(paths=str(slice_path),
                                                                     tasks="event")})
  c.data.batch_size = 8
  c.data.text_buckets = (96,)
  c.total_steps = STEPS
  c.optim.learning_rate = 1e-2
  c.optim.warmup_steps = 2
  c.eval_every = 0
  c.checkpoint.keep_best_metric = ""
  c.checkpoint.every_steps = STEPS
  c.log_every = EVERY
  c.compilation_cache_dir = cache_dir
  c.evals = ml_collections.ConfigDict({"slice": benchmark_config(
      "slice", task="event", metric="accuracy", paths=str(slice_path), max_new_tokens=4,
      batch_size=8)})
  c.evals.slice.every_steps = EVERY
  c.report.targets = ml_collections.ConfigDict({"slice": ">=0.5"})

  workdir = tmp_path / "run"
  result = train.run(c, str(workdir))
  accuracy = {}
  for step in range(EVERY, STEPS + 1, EVERY):
    report = json.loads((workdir / "eval" / str(step) / "slice" / "report.json").read_text())
    accuracy[step] = report["metrics"]["accuracy"]
  losses = [result.history[s]["loss"] for s in sorted(result.history)]
  assert losses[-1] < losses[0] - 1.0, losses
  assert accuracy[STEPS] >= 0.5 and accuracy[STEPS] > accuracy[EVERY], accuracy
  text, met = train.report.final_report(c, str(workdir), STEPS)
  assert met and "slice" in text and "target >= 50.0%: met" in text
  assert f"--checkpoint {workdir}/checkpoints/{STEPS}" in text and "--task event" in text
  assert np.isfinite(losses).all()
