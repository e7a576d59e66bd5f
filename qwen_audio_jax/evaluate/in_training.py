"""Decoding evaluations inside training, declared in the training config as `config.evals`.

    c.evals.demo_wer = eval_configs.get_config('demo')   # a configs/eval.py benchmark
    c.evals.demo_wer.every_steps = 50                    # 0: at the last step only

Like big_vision's `evals`, each entry names a benchmark (any `benchmark_config`: data, task
prompt, decoding, metric); the loop asks `due(step)` which to run and `run(...)` generates with
the current parameters (LoRA merged), scores, writes `<workdir>/eval/<step>/<name>/`
(report.json, predictions.jsonl) and returns the metrics as scalars `decode/<name>/<metric>`
for TensorBoard, next to the loss. One `Generator` serves every evaluation of the run, so its
programs compile once; the parameters are handed to it at each call, and every call has the
same batch size (`DecodingEvals.buckets`).
"""

import os
from typing import Dict, List

import jax
import ml_collections
from absl import logging

from qwen_audio_jax.evaluate import config as config_lib
from qwen_audio_jax.evaluate import runner
from qwen_audio_jax.evaluate import scoring

PREFIX = "decode"


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks every `config.evals` entry (ValueError / FileNotFoundError naming
  config.evals.<name>.<key>)."""
  for name in config.get("evals", {}).keys():
    entry = config.evals[name]
    config_lib.validate_eval_config(entry, where=f"config.evals.{name}")
    config_lib.check_data_paths(entry, where=f"config.evals.{name}")
    if entry.name != name:
      raise ValueError(f"config.evals.{name}.name={entry.name!r}: must equal the entry's key "
                       f"{name!r} (it names the TensorBoard scalars and the output folder)")


class DecodingEvals:
  """The run's decoding evaluations (an empty `config.evals` makes this a no-op)."""

  def __init__(self, config: ml_collections.ConfigDict, model_config, mesh, workdir: str,
               tokenizer=None):
    validate(config)
    self.benchmarks: Dict[str, ml_collections.ConfigDict] = {
        name: config.evals[name] for name in config.get("evals", {}).keys()}
    self.total_steps = int(config.total_steps)
    self.model_config, self.mesh, self.workdir = model_config, mesh, os.fspath(workdir)
    self._tokenizer = tokenizer
    self._tokenizer_path = config.data.tokenizer_path or None
    self._generator = None

  def __bool__(self) -> bool:
    return bool(self.benchmarks)

  def due(self, step: int) -> List[str]:
    """Names of the evaluations to run after `step`."""
    return [name for name, c in self.benchmarks.items()
            if (c.every_steps and step % c.every_steps == 0) or step == self.total_steps]

  def buckets(self):
    """Generation shape buckets of these evaluations: every call is padded to the largest
    evaluation batch, so a short last batch (or a prompt bucket with few rows) reuses the
    program of a full one instead of compiling its own; the programs of a run are then one per
    (prompt, mel frames, new tokens) bucket."""
    from qwen_audio_jax.generate import Buckets  # pylint: disable=g-import-not-at-top
    sizes = [int(c.batch_size) for c in self.benchmarks.values()] or [1]
    return Buckets(batch=(max(sizes),))

  def _generator_for(self, params):
    from qwen_audio_jax.generate import Generator  # pylint: disable=g-import-not-at-top
    from qwen_audio_jax.training import initialization  # pylint: disable=g-import-not-at-top
    if self._generator is None:
      if self._tokenizer is None:
        from qwen_audio_jax.data.transforms import load_tokenizer  # pylint: disable=g-import-not-at-top
        self._tokenizer = load_tokenizer(self._tokenizer_path)
      self._generator = Generator(self.model_config, params, self._tokenizer, mesh=self.mesh,
                                  buckets=self.buckets())
    else:
      # The programs take the parameters as an argument: new values, same layout, no recompile.
      self._generator.params = jax.device_put(
          params, initialization.param_shardings(self.model_config, self.mesh))
    return self._generator

  def run(self, names: List[str], step: int, params) -> Dict[str, float]:
    """Runs `names` with `params`; their scalars ('decode/<name>/<metric>')."""
    out: Dict[str, float] = {}
    generator = self._generator_for(params)
    is_main = jax.process_index() == 0
    for name in names:
      c = self.benchmarks[name]
      output_dir = c.output_dir or os.path.join(self.workdir, "eval", str(step), name)
      result = runner.evaluate(c, generator, self._tokenizer, output_dir, is_main=is_main,
                               step=step)
      out.update(runner.scalars(result, f"{PREFIX}/{name}"))
      metric, value = scoring.headline(c, result["metrics"])
      shown = f"{value:.4f}" if isinstance(value, float) else "n/a"
      line = f"decode eval step {step} | {name} {metric} {shown}"
      for missing, why in result["unavailable_metrics"].items():
        logging.warning("decode eval %s: %s not computed: %s", name, missing, why)
      if is_main:
        logging.info("%s (%d rows, %d skipped, %.1f s)", line, result["examples"]["scored"],
                     result["examples"]["skipped"], result["seconds"])
        print(line, flush=True)
    return out
