r"""Evaluates a checkpoint on one benchmark: `python -m qwen_audio_jax.evaluate`.

    python -m qwen_audio_jax.evaluate --config=configs/eval.py:librispeech_test_clean \
        --checkpoint ckpt/qwen_audio --config.data.paths=data/eval/librispeech_test_clean.jsonl
    python -m qwen_audio_jax.evaluate --config=configs/eval.py:demo \
        --checkpoint workdir/demo/checkpoints/100
    # score an existing predictions file again (no model, no device)
    python -m qwen_audio_jax.evaluate --config=configs/eval.py:clotho \
        --predictions out/clotho/predictions.jsonl

CKPT is a converted checkpoint directory (`python -m qwen_audio_jax.convert`) or a training
run's `<workdir>/checkpoints/<step>` (model configuration from the run's workdir, LoRA factors
merged). Writes `report.json` (metrics, the published figure, counts of scored and skipped rows,
the config) and `predictions.jsonl` (one line per row: index, id, origin, prompt, language,
reference, prediction, finish_reason, new_tokens, trimmed) into --output_dir, default
`<workdir>/eval/<step>/<name>` for a run's checkpoint and `<checkpoint>/eval/<name>` for a
converted one. Exits with status 1 when a metric of the benchmark could not be computed here
(e.g. SPICE without Java: the reason is in the report; the other metrics and the predictions
are written).
"""

import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from qwen_audio_jax.evaluate import config as config_lib
from qwen_audio_jax.evaluate import runner
from qwen_audio_jax.training import distributed

CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Benchmark config and entry, e.g. configs/eval.py:librispeech_test_clean; "
    "override keys with --config.<key>=<value> (e.g. --config.data.paths=...).",
    lock_config=True)
CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "A converted checkpoint directory or a run's <workdir>/checkpoints/<step>.")
PREDICTIONS = flags.DEFINE_string(
    "predictions", None, "Score this predictions.jsonl (written by an earlier run) instead of "
    "generating: no checkpoint needed.")
OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "Where report.json and predictions.jsonl go (default: see --help).")
PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")
DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", list(distributed.MODES), "Call jax.distributed.initialize() first "
    "('auto': when the environment names several processes).")


def default_output_dir(checkpoint: str, name: str, step=None) -> str:
  from qwen_audio_jax import checkpoints  # pylint: disable=g-import-not-at-top
  if checkpoints.checkpoint_kind(checkpoint) == "run":
    return os.path.join(os.fspath(checkpoints.run_workdir(checkpoint)), "eval",
                        str(step if step is not None else checkpoints.step_of(checkpoint)), name)
  return os.path.join(checkpoint, "eval", name)


def summary_line(result) -> str:
  (name, value), = result["headline"].items()
  text = f"{result['benchmark']}: {name} {value:.4f}" if isinstance(value, float) else (
      f"{result['benchmark']}: {name} n/a")
  published = result["published"].get(name)
  if published is not None:
    text += f" (published {published:g})"
  counts = result["examples"]
  text += f" over {counts['scored']} rows, {counts['skipped']} skipped"
  if result["unavailable_metrics"]:
    text += f"; not computed: {', '.join(sorted(result['unavailable_metrics']))}"
  return text


def rescore(c, predictions: str, output_dir: str):
  records = runner.read_predictions(predictions)
  counts = {"scored": len(records), "skipped": 0, "skipped_by_reason": {}, "first_skipped": [],
            "trimmed_to_30s": sum(bool(r.get("trimmed")) for r in records)}
  result = runner.report(c, records, counts, predictions=predictions, output_dir=output_dir)
  runner.write_report(result, output_dir)
  return result


def generate_and_score(c, checkpoint: str, output_dir):
  import jax  # pylint: disable=g-import-not-at-top
  from qwen_audio_jax import checkpoints, sharding  # pylint: disable=g-import-not-at-top
  from qwen_audio_jax.generate import Generator  # pylint: disable=g-import-not-at-top
  mesh = sharding.make_mesh((c.mesh.data, c.mesh.fsdp, c.mesh.tensor))
  loaded = checkpoints.load_model(checkpoint, mesh=mesh)
  logging.info("Loaded %s (%s%s) on mesh %s", checkpoint, loaded.source,
               f", step {loaded.step}" if loaded.step is not None else "", dict(mesh.shape))
  output_dir = output_dir or default_output_dir(checkpoint, c.name, loaded.step)
  generator = Generator.from_loaded(loaded, mesh=mesh)
  return runner.evaluate(c, generator, loaded.tokenizer, output_dir, progress=PROGRESS.value,
                         is_main=jax.process_index() == 0, checkpoint=checkpoint,
                         step=loaded.step)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if CONFIG.value is None:
    raise app.UsageError("--config is required, e.g. --config=configs/eval.py:demo")
  if (CHECKPOINT.value is None) == (PREDICTIONS.value is None):
    raise app.UsageError("give exactly one of --checkpoint (generate, then score) or "
                         "--predictions (score an existing predictions.jsonl)")
  c = CONFIG.value
  try:
    config_lib.validate_eval_config(c)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  try:
    if PREDICTIONS.value is not None:
      output_dir = OUTPUT_DIR.value or os.path.dirname(os.path.abspath(PREDICTIONS.value))
      result = rescore(c, PREDICTIONS.value, output_dir)
    else:
      config_lib.check_data_paths(c)
      distributed.initialize(DISTRIBUTED.value)
      result = generate_and_score(c, CHECKPOINT.value, OUTPUT_DIR.value)
  except (FileNotFoundError, ValueError) as e:  # a missing checkpoint / manifest, a bad row
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(summary_line(result))
  print(f"report: {os.path.join(result['output_dir'], runner.REPORT_FILE)}")
  if result["unavailable_metrics"]:
    for metric, why in sorted(result["unavailable_metrics"].items()):
      print(f"{metric} not computed: {why}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
