"""The evaluation end to end on the demo corpus's held-out split: a tiny demo-style training run
whose config declares a decoding evaluation (WER written next to the loss), then
`python -m qwen_audio_jax.evaluate` on that run's checkpoint (report and predictions checked,
and equal to what the in-training evaluation decoded with the same parameters), then the
re-scoring of the predictions file alone."""

import glob
import json
import os
import subprocess
import sys

import ml_collections
import pytest

from qwen_audio_jax import train
from qwen_audio_jax.evaluate import metrics, runner

from _train_configs import narrow, REPO, load_config

STEPS = 2
MAX_NEW_TOKENS = 6  # the tiny model is barely trained: keep its (long) outputs short
ROWS = 4  # of the 8 held-out ASR rows


def demo_eval_config():
  c = load_config("eval", "demo")
  c.max_new_tokens = MAX_NEW_TOKENS
  c.max_examples = ROWS
  c.every_steps = STEPS
  return c


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  """The compilation cache of the training-loop tests (the CLI reuses the generation programs
  the in-training evaluation compiled)."""
  path = tmp_path_factory.getbasetemp().parent / "train_loop_jax_cache"
  path.mkdir(exist_ok=True)
  return str(path)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, cache_dir):
  """Stage 1 on the demo corpus's short-row tasks, 2 steps, with `evals.demo` (WER on the
  held-out ASR rows) at step 2."""
  workdir = tmp_path_factory.mktemp("eval_run")
  c = load_config("pretrain")
  narrow(c)
  c.data.batch_size = 8
  for task in ("asr", "srwt", "aqa", "caption"):
    del c.data.mixture[task]
  c.data.text_buckets = (128,)
  c.total_steps = STEPS
  c.optim.warmup_steps = 1
  c.log_every = 1
  c.eval_every = 0
  c.checkpoint.keep_best_metric = ""
  c.checkpoint.every_steps = STEPS
  c.compilation_cache_dir = cache_dir
  c.evals = ml_collections.ConfigDict({"demo": demo_eval_config()})
  result = train.run(c, str(workdir))
  assert result.step == STEPS
  return workdir


def read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def test_decoding_eval_in_training_writes_its_metrics(trained_run):
  out = trained_run / "eval" / str(STEPS) / "demo"
  report = json.loads((out / "report.json").read_text())
  # The first held-out ASR rows of the demo corpus, every one scored.
  assert report["examples"]["scored"] == ROWS and report["examples"]["skipped"] == 0
  assert report["metric"] == "wer" and 0.0 <= report["metrics"]["wer"]
  predictions = read_jsonl(out / "predictions.jsonl")
  assert len(predictions) == ROWS
  # TensorBoard holds the decoding metrics next to the training loss.
  events = b"".join(open(f, "rb").read() for f in glob.glob(
      str(trained_run / "tensorboard" / "events.out.tfevents.*")))
  for tag in (b"decode/demo/wer", b"decode/demo/examples_scored", b"train/loss"):
    assert tag in events, tag


def test_evaluate_cli_on_the_run_checkpoint(trained_run, tmp_path, cache_dir):
  checkpoint = trained_run / "checkpoints" / str(STEPS)
  out = tmp_path / "cli"
  command = [sys.executable, "-m", "qwen_audio_jax.evaluate",
             "--config=configs/eval.py:demo", f"--checkpoint={checkpoint}",
             f"--config.max_new_tokens={MAX_NEW_TOKENS}", f"--config.max_examples={ROWS}",
             f"--output_dir={out}", "--noprogress"]
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
             JAX_COMPILATION_CACHE_DIR=cache_dir, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "demo: wer" in done.stdout and f"over {ROWS} rows, 0 skipped" in done.stdout

  report = json.loads((out / "report.json").read_text())
  predictions = read_jsonl(out / "predictions.jsonl")
  assert report["checkpoint"] == str(checkpoint) and report["step"] == STEPS
  assert report["config"]["max_new_tokens"] == MAX_NEW_TOKENS
  assert report["programs_compiled"] >= 1
  demo_rows = {r["id"]: r for r in read_jsonl(os.path.join(
      REPO, "qwen_audio_jax", "data", "demo", "eval.jsonl")) if r["task"] == "asr"}
  assert [p["id"] for p in predictions] == list(demo_rows)[:ROWS]
  for p in predictions:
    assert set(p) >= {"id", "prompt", "reference", "prediction"}
    # The released ASR prompt, the row's own clip, the row's transcript as reference.
    clip = os.path.join(REPO, "qwen_audio_jax", "data", "demo", demo_rows[p["id"]]["audio"])
    assert p["prompt"] == (f"<audio>{clip}</audio><|startoftranscript|><|en|><|transcribe|>"
                           "<|en|><|notimestamps|><|wo_itn|>")
    assert p["reference"] == demo_rows[p["id"]]["text"]
    assert p["new_tokens"] <= MAX_NEW_TOKENS
  # The report's WER is the metric of the written predictions.
  wer = metrics.error_rate([p["reference"] for p in predictions],
                           [p["prediction"] for p in predictions], language="en")["wer"]
  assert report["metrics"]["wer"] == pytest.approx(wer)
  # Same parameters, same greedy decoding: the in-training evaluation generated the same text.
  in_training = read_jsonl(trained_run / "eval" / str(STEPS) / "demo" / "predictions.jsonl")
  assert [p["prediction"] for p in predictions] == [p["prediction"] for p in in_training]

  # Scoring the predictions file again, without a model, gives the same report metrics.
  rescored = runner.report(demo_eval_config(), runner.read_predictions(
      str(out / "predictions.jsonl")), report["examples"])
  assert rescored["metrics"] == report["metrics"]
