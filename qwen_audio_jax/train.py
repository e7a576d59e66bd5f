r"""Trains Qwen-Audio in two stages: `python -m qwen_audio_jax.train --config=... --workdir=...`.

    python -m qwen_audio_jax.train --config=configs/pretrain.py:demo --workdir=/tmp/qa_pretrain
    python -m qwen_audio_jax.train --config=configs/sft.py:demo --workdir=/tmp/qa_sft \
        --config.init.checkpoint=/tmp/qa_pretrain/checkpoints/100 --config.total_steps=50

Reads top to bottom: flags -> config -> validation -> mesh -> data -> parameters and train state
(fresh, or restored from the workdir's latest complete checkpoint) -> ahead-of-time compilation
with the memory analysis logged -> the loop (metrics, evaluation, checkpoints, preemption) ->
final save. The workdir receives config.json (the resolved config), checkpoints/ and
tensorboard/. Running the same command again resumes where the run stopped.
"""

import dataclasses
import logging as python_logging
import os
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging
from etils import epath
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from qwen_audio_jax import configs, errors, sharding
from qwen_audio_jax.convert import save_model_config
from qwen_audio_jax.audio.lengths import HOP_LENGTH
from qwen_audio_jax.data import DataPipeline, global_batches, make_global_batch
from qwen_audio_jax.data.global_batch import audio_samples
from qwen_audio_jax.evaluate.in_training import DecodingEvals
from qwen_audio_jax.model.params import flat_paths
from qwen_audio_jax.training import (checkpointing, compilation_cache, distributed, flops,
                                     initialization, startup, validation)
from qwen_audio_jax.training.layout import abstract_batch, build_mesh, trained_parts
from qwen_audio_jax.training import metrics as metrics_lib
from qwen_audio_jax.training import report
from qwen_audio_jax.training import optimizer as optimizer_lib
from qwen_audio_jax.training import step as step_lib
from qwen_audio_jax.training import trainable

CONFIG = configs.DEFINE_config_file(
    "config", "Training config file and preset, e.g. configs/pretrain.py:demo, or a packaged "
    f"config by name ({', '.join(configs.names())}), e.g. pretrain:demo; override keys with "
    "--config.<key>=<value>.", lock_config=True)
flags.declare_key_flag("config")
WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory of the run: config.json, checkpoints/, tensorboard/. An existing "
    "run in it is resumed from its latest complete checkpoint. Default: workdir/<config file "
    "name>_<preset> under the current directory.")
DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", list(distributed.MODES), "Call jax.distributed.initialize() first: "
    "'auto' does when the environment names several processes (Slurm, Open MPI, multi-host TPU "
    "VMs, JAX_COORDINATOR_ADDRESS).")
TRACEBACK = flags.DEFINE_bool("traceback", False, errors.TRACEBACK_HELP)


@dataclasses.dataclass
class RunResult:
  """What `run` returns (tests and notebooks inspect it)."""
  step: int  # the last step trained
  state: Any  # the final train state (on the devices)
  history: Dict[int, Dict[str, float]]  # per-step train metrics, fetched at logging time
  evals: Dict[int, Dict[str, float]]  # eval metrics by step
  preempted: bool  # stopped early by SIGTERM / preemption / stop_at_step
  resumed_from: Optional[int]  # checkpoint step the run started from (None: fresh)


# ----------------------------------------------------------------------------- setup


def write_resolved_config(config: ml_collections.ConfigDict, model_config, workdir: str) -> None:
  """config.json (the whole training config) and model_config.json into the workdir."""
  if jax.process_index() != 0:
    return
  path = epath.Path(workdir)
  path.mkdir(parents=True, exist_ok=True)
  (path / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
  save_model_config(model_config, os.fspath(path / "model_config.json"))




def log_model_summary(config, model_config, abstract_params, parts: flops.TrainedParts) -> None:
  """Parameter counts (all / trained) and the model FLOPs of a step of the largest bucket."""
  sizes = {p: int(np.prod(leaf.shape)) for p, leaf in flat_paths(abstract_params).items()}
  trained = trainable.trained_paths(config, list(sizes))
  trained_count = sum(sizes[p] for p in trained)
  what = "LoRA targets" if config.lora.rank > 0 else "trained"
  step = flops.step_flops(model_config, rows=config.data.batch_size,
                          text_length=max(config.data.text_buckets),
                          audio_slots=config.data.max_clips_per_row, trained=parts)
  logging.info("Model: %s parameters, %s %s (%d arrays); model FLOPs per step at text length "
               "%d: %.3g (encoder %.3g, LLM %.3g)", f"{sum(sizes.values()):,}",
               f"{trained_count:,}", what, len(trained), max(config.data.text_buckets),
               step["total"], step["encoder"], step["llm"])


def shape_key(batch) -> Tuple:
  return tuple(sorted((k, tuple(v.shape), str(v.dtype)) for k, v in batch.items()))


def log_memory_analysis(name: str, compiled) -> None:
  analysis = compiled.memory_analysis()
  if analysis is None:
    logging.info("%s: no memory analysis on this backend", name)
    return
  fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
            "temp_size_in_bytes", "generated_code_size_in_bytes")
  sizes = {f.replace("_size_in_bytes", ""): getattr(analysis, f, None) for f in fields}
  text = ", ".join(f"{k} {v / 2**20:,.1f} MiB" for k, v in sizes.items() if v is not None)
  logging.info("%s memory per device: %s", name, text)


class CompiledByShape:
  """A jitted function compiled ahead of time, once per batch shape (text bucket x audio
  bucket: at most `max_shapes` of them, the product of the data config's bucket counts)."""

  def __init__(self, name: str, jitted, mesh: Mesh, make_args: Callable[[Any], Tuple],
               max_shapes: int = 0):
    self.name, self.jitted, self.mesh, self.make_args = name, jitted, mesh, make_args
    self.max_shapes = max_shapes
    self.executables: Dict[Tuple, Any] = {}
    self.compile_seconds = 0.0  # total time spent compiling (kept out of step timings)

  def compile(self, batch) -> Any:
    key = shape_key(batch)
    if key not in self.executables:
      start = time.time()
      with sharding.activation_sharding(self.mesh):
        lowered = self.jitted.lower(*self.make_args(batch))
      compiled = lowered.compile()
      self.compile_seconds += time.time() - start
      what = f"text length {batch['input_ids'].shape[1]}, audio {audio_samples(batch)} samples"
      logging.info("Compiled %s for %s in %.1f s (shape %d of at most %s)", self.name, what,
                   time.time() - start, len(self.executables) + 1, self.max_shapes or "?")
      log_memory_analysis(f"{self.name} ({what})", compiled)
      self.executables[key] = compiled
    return self.executables[key]

  def __call__(self, *args):
    return self.compile(args[-1])(*args)


# ----------------------------------------------------------------------------- evaluation


def summarize_eval(sums: Dict[str, np.ndarray], task_names: List[str]) -> Dict[str, float]:
  """Eval sums -> per-token loss and accuracy, overall and per task."""
  flat = metrics_lib.flatten_step_metrics(sums, task_names)
  tokens = max(flat.get("target_tokens", 0.0), 1.0)
  out = {"eval/loss": flat["loss_sum"] / tokens, "eval/accuracy": flat["correct"] / tokens,
         "eval/target_tokens": flat["target_tokens"]}
  for task in task_names:
    count = flat.get(f"task_target_tokens/{task}", 0.0)
    if count:
      out[f"eval/{task}/loss"] = flat[f"task_loss_sum/{task}"] / count
      out[f"eval/{task}/accuracy"] = flat[f"task_correct/{task}"] / count
      out[f"eval/{task}/target_tokens"] = count
  return out


def evaluate(eval_step: CompiledByShape, params, pipeline: DataPipeline, mesh: Mesh,
             max_batches: int) -> Dict[str, float]:
  """Sums over a fresh pass of the eval data (or its first `max_batches` batches)."""
  iterator = pipeline.iterator()
  totals = None
  count = 0
  for batch in global_batches(iterator, mesh, padding_batch=pipeline.padding_batch):
    sums = eval_step(params, batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    count += 1
    if max_batches and count >= max_batches:
      break
  if totals is None:
    raise ValueError("config.eval_data produced no batch")
  result = summarize_eval(jax.device_get(totals), pipeline.task_names)
  result["eval/batches"] = float(count)
  return result


# ----------------------------------------------------------------------------- the run


def run(config: ml_collections.ConfigDict, workdir: str, *,
        stop_at_step: Optional[int] = None) -> RunResult:
  """Trains per `config` in `workdir` (resuming from its latest checkpoint when there is one).

  stop_at_step: stop after this step as a preemption would (save, return); for tests.
  """
  # Config: validated as a whole before anything is built; its logical-axis rules then decide
  # every sharding of the run (parameters, optimizer state, activations).
  validation.validate(config)
  with nn.logical_axis_rules(config.mesh.logical_axis_rules):
    return _run(config, workdir, stop_at_step)


def _run(config: ml_collections.ConfigDict, workdir: str,
         stop_at_step: Optional[int]) -> RunResult:
  model_config = initialization.model_config_from(config)
  workdir = os.fspath(workdir)
  startup.check_workdir(workdir)
  write_resolved_config(config, model_config, workdir)
  cache_dir = compilation_cache.enable(config.compilation_cache_dir, workdir)
  is_main = jax.process_index() == 0
  logging.info("Workdir %s; compilation cache %s", workdir, cache_dir)

  # Devices.
  mesh = build_mesh(config)
  logging.info("Mesh %s over %d %s devices (%d processes)", dict(mesh.shape), mesh.size,
               jax.devices()[0].device_kind, jax.process_count())

  # Data.
  train_pipeline = DataPipeline(config.data)
  train_iterator = train_pipeline.iterator()
  eval_pipeline = DataPipeline(config.eval_data) if config.eval_every else None
  task_names = train_pipeline.task_names
  decoding_evals = DecodingEvals(config, model_config, mesh, workdir)  # config.evals

  # Model, optimizer and train state.
  rng_params, rng_train = jax.random.split(jax.random.key(config.seed))
  abstract_params = initialization.abstract_params(model_config, mesh)
  optimizer = optimizer_lib.make_optimizer(config, abstract_params)
  abstract_state = jax.eval_shape(
      lambda p, r: step_lib.init_train_state(config, p, r), abstract_params, rng_train)
  state_shardings = step_lib.train_state_shardings(abstract_state, mesh)
  abstract_state = jax.tree.map(
      lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
      abstract_state, state_shardings)

  checkpoints = checkpointing.Checkpoints(
      workdir, keep=config.checkpoint.keep, keep_best_metric=config.checkpoint.keep_best_metric,
      async_save=config.checkpoint.async_save)
  resumed_from = checkpoints.latest_step()
  if resumed_from is not None:
    state = checkpoints.restore(resumed_from, abstract_state, train_iterator)
    logging.info("Resumed from step %d", resumed_from)
  else:
    params, sources = initialization.initial_params(config, model_config, mesh, rng_params)
    state = jax.jit(lambda p, r: step_lib.init_train_state(config, p, r),
                    out_shardings=state_shardings)(params, rng_train)
    del params
    logging.info("Fresh start: %s", "; ".join(sources))
  step = int(jax.device_get(state.step))

  # Ahead-of-time compilation of the train step (config.precompile: the largest text and audio
  # buckets, the worst case for memory, or the first batch's shape), then one executable per
  # bucket pair as batches of others arrive.
  replicated = NamedSharding(mesh, PartitionSpec())
  train_jit = jax.jit(
      step_lib.make_train_step(config, model_config, optimizer),
      in_shardings=(state_shardings, None), out_shardings=(state_shardings, replicated),
      donate_argnums=0)
  train_step = CompiledByShape("train_step", train_jit, mesh,
                               lambda batch: (abstract_state, _abstract(batch)),
                               max_shapes=len(train_pipeline.shapes))
  precompile_largest = config.get("precompile", "largest") == "largest"
  if precompile_largest:
    train_step.compile(abstract_batch(config.data, mesh, *train_pipeline.shapes[-1]))
    distributed.barrier("compiled")
  eval_step = None
  if eval_pipeline is not None:
    eval_jit = jax.jit(step_lib.make_eval_step(config, model_config),
                       in_shardings=(state_shardings.params, None), out_shardings=replicated)
    eval_step = CompiledByShape("eval_step", eval_jit, mesh,
                                lambda batch: (abstract_state.params, _abstract(batch)),
                                max_shapes=len(eval_pipeline.shapes))
  # With LoRA the factors are merged into their kernels for evaluation.
  merged_params = jax.jit(lambda s: step_lib.eval_params(config, s),
                          out_shardings=state_shardings.params)

  parts = trained_parts(config, model_config)
  flops_by_shape: Dict[Tuple[int, ...], float] = {}

  def step_flops(batch) -> float:
    rows, text_length = batch["input_ids"].shape
    shape = (rows, text_length, batch["audio_lengths"].shape[1], audio_samples(batch))
    if shape not in flops_by_shape:
      flops_by_shape[shape] = flops.step_flops(
          model_config, rows=rows, text_length=text_length, audio_slots=shape[2],
          audio_frames=shape[3] // HOP_LENGTH, trained=parts)["total"]
    return flops_by_shape[shape]

  log_model_summary(config, model_config, abstract_params, parts)
  device_kind = jax.devices()[0].device_kind
  writer = metrics_lib.MetricsWriter(
      workdir, enabled=is_main, tensorboard=config.tensorboard, wandb=config.wandb,
      wandb_project=config.wandb_project, run_config=config.to_dict(),
      total_steps=config.total_steps)
  watch = checkpointing.PreemptionWatch(checkpoints)
  # On CPU the "device" is the host's own cores: letting steps queue up asynchronously makes the
  # data pipeline and XLA's thread pool compete for them (2x slower steps on 2 cores), so each
  # step is waited for. Accelerators keep asynchronous dispatch (the next batch is prepared while
  # the device computes).
  wait_each_step = jax.default_backend() == "cpu"

  history: Dict[int, Dict[str, float]] = {}
  evals: Dict[int, Dict[str, float]] = {}
  pending: List[Tuple[int, Any, float]] = []  # (step, device metrics, model FLOPs)
  window_start, window_compile = time.time(), train_step.compile_seconds
  skipped_total = 0
  preempted = False
  last_eval: Optional[Dict[str, float]] = None

  def flush() -> Dict[str, float]:
    """Fetches the pending steps' metrics; halts on non-finite values when configured."""
    nonlocal pending, skipped_total
    if not pending:
      return {}
    fetched = jax.device_get([m for _, m, _ in pending])
    steps = []
    for (s, _, _), m in zip(pending, fetched):
      flat = metrics_lib.flatten_step_metrics(m, task_names)
      history[s] = flat
      steps.append(flat)
      if flat.get("nonfinite", 0.0) > 0 and config.nonfinite == "halt":
        checkpoints.wait_until_finished()
        raise errors.NonFiniteError(
            f"non-finite {_nonfinite_what(flat)} at step {s} (config.nonfinite='halt'); the state "
            f"after it was not checkpointed (latest checkpoint: step "
            f"{checkpoints.latest_step()})")
    elapsed = time.time() - window_start - (train_step.compile_seconds - window_compile)
    window = metrics_lib.reduce_window(steps)
    step_seconds = elapsed / len(steps)
    total_flops = sum(f for _, _, f in pending)
    scalars = {f"train/{k}": v for k, v in window.items()}
    skipped_total += int(window.get("nonfinite", 0.0))
    scalars["train/skipped_steps_total"] = float(skipped_total)
    scalars["perf/step_seconds"] = step_seconds
    scalars["perf/tokens_per_second"] = window.get("tokens", 0.0) / elapsed
    scalars["perf/audio_seconds_per_second"] = window.get("audio_seconds", 0.0) / elapsed
    scalars["perf/model_flops_per_step"] = total_flops / len(steps)
    utilisation = flops.mfu(total_flops / len(steps), step_seconds, mesh.size, device_kind)
    if utilisation is not None:
      scalars["perf/mfu"] = utilisation
    scalars.update(train_iterator.stats.metrics())
    pending = []
    restart_window()
    return scalars

  def restart_window() -> None:
    """Step timings cover training only: evaluation, saving and compiling are left out."""
    nonlocal window_start, window_compile
    window_start, window_compile = time.time(), train_step.compile_seconds

  writer.start_clock(step)
  logging.info("Training from step %d to %d", step, config.total_steps)
  try:
    while step < config.total_steps:
      if watch.should_stop(step) or (stop_at_step is not None and step >= stop_at_step):
        preempted = True
        break
      batch = make_global_batch(next(train_iterator), mesh)
      if not precompile_largest and not train_step.executables:
        train_step.compile(batch)  # the first batch's shape (the hosts agreed on it)
        distributed.barrier("compiled")
      state, step_metrics = train_step(state, batch)
      if wait_each_step:
        jax.block_until_ready(step_metrics)
      step += 1
      pending.append((step, step_metrics, step_flops(batch)))

      save_now = step % config.checkpoint.every_steps == 0 or step == config.total_steps
      if step % config.log_every == 0 or save_now:
        scalars = flush()
        writer.write(step, scalars)
        writer.progress(step, scalars)
      if eval_step is not None and (step % config.eval_every == 0 or step == config.total_steps):
        scalars = flush()
        if scalars:
          writer.write(step, scalars)
        last_eval = evaluate(eval_step, merged_params(state), eval_pipeline, mesh,
                             config.eval_steps)
        evals[step] = last_eval
        writer.write(step, last_eval)
        if is_main:
          logging.info("eval at step %d: %s", step, _format_eval(last_eval))
          print(f"eval step {step} | {_format_eval(last_eval)}", flush=True)
      due = decoding_evals.due(step)
      if due:
        writer.write(step, flush())
        writer.write(step, decoding_evals.run(due, step, merged_params(state)))
      if save_now:
        flush()
        checkpoints.save(step, state, train_iterator,
                         metrics=last_eval if evals.get(step) is last_eval else None)
      if not pending:
        restart_window()
    scalars = flush()
    if scalars:
      writer.write(step, scalars)
      writer.progress(step, scalars)
    if preempted:
      logging.warning("Stopping at step %d (preemption): saving", step)
    checkpoints.save(step, state, train_iterator)
    checkpoints.wait_until_finished()
  finally:
    watch.close()
    writer.close()
    checkpoints.close()
  if is_main:
    logging.info("Data:\n%s", train_iterator.stats.report())
  return RunResult(step=step, state=state, history=history, evals=evals, preempted=preempted,
                   resumed_from=resumed_from)


def _nonfinite_what(flat: Dict[str, float]) -> str:
  return "update" if flat.get("nonfinite_update", 0.0) > 0 else "loss or gradients"


def _abstract(batch):
  return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=getattr(v, "sharding", None))
          for k, v in batch.items()}


def _format_eval(scalars: Dict[str, float]) -> str:
  keys = ["eval/loss", "eval/accuracy"]
  return " | ".join(f"{k.split('/', 1)[1]} {scalars[k]:.4f}" for k in keys if k in scalars)


class _QuietLibraryInfo(python_logging.Filter):
  """Keeps Orbax's per-save INFO chatter off the console (its warnings and errors stay)."""

  def filter(self, record: python_logging.LogRecord) -> bool:
    return record.levelno > python_logging.INFO or "/orbax/" not in record.pathname


def default_workdir(config_flag: str) -> str:
  """workdir/pretrain_demo for --config=configs/pretrain.py:demo (the file's default preset
  when none is given)."""
  path, _, preset = config_flag.partition(":")
  name = os.path.splitext(os.path.basename(path))[0]
  return os.path.join("workdir", f"{name}_{preset}" if preset else name)


def main(argv):
  logging.get_absl_handler().addFilter(_QuietLibraryInfo())
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if CONFIG.value is None:
    raise app.UsageError("--config is required, e.g. --config=configs/pretrain.py:demo")
  workdir = WORKDIR.value or default_workdir(flags.FLAGS["config"].config_filename)
  try:
    with startup.sigterm_ends_startup():
      joined = distributed.initialize(DISTRIBUTED.value)
      if joined:
        logging.info("jax.distributed initialised (%s): process %d of %d", joined,
                     jax.process_index(), jax.process_count())
      result = run(CONFIG.value, workdir)
  except errors.StartupInterrupted as e:
    startup.report_interrupted(e)
    return
  if result.preempted:
    logging.info("Preempted at step %d; checkpoint saved, exiting cleanly", result.step)
  elif jax.process_index() == 0:
    print(report.final_report(CONFIG.value, workdir, result.step)[0], flush=True)


if __name__ == "__main__":
  errors.run_absl(main)
