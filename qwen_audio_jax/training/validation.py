"""Checks a whole training config before anything is built or compiled.

Every problem found is reported at once, one line each, naming the config key and what was
expected, e.g. "config.mesh.fsdp=3: the mesh needs 6 devices, 8 are available".
"""

import importlib.util
import math
import os
import re
from typing import List, Optional

import jax
import ml_collections
import numpy as np

from qwen_audio_jax import sharding
from qwen_audio_jax.audio import specaugment as specaugment_lib
from qwen_audio_jax.errors import ConfigError  # pylint: disable=unused-import (re-exported)
from qwen_audio_jax.data import config as data_config_lib
from qwen_audio_jax.data.sources import expand_paths
from qwen_audio_jax.training import initialization, output_vocab, vocab_rows
from qwen_audio_jax.training.optimizer import OPTIMIZERS, SCHEDULES
from qwen_audio_jax.training.trainable import param_paths, trained_paths

STAGES = ("pretrain", "sft")
NONFINITE = ("skip", "halt")
PRECOMPILE = ("largest", "first_batch")
MESH_ICI = sharding.MESH_AXES
MESH_DCN = ("dcn_data", "dcn_fsdp")
# Larger learning rates move every weight by more than its own scale in one step (no optimizer
# here normalises them away): a typo, refused before anything runs.
MAX_LEARNING_RATE = 1.0


def _finite(value) -> bool:
  """A real number (not a bool), neither NaN nor infinite."""
  return (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value))


def mesh_shape(config: ml_collections.ConfigDict, device_count: int) -> Optional[dict]:
  """The resolved mesh sizes (-1 filled, DCN sizes multiplied in), or None when they cannot be
  resolved."""
  dcn = int(np.prod([int(config.mesh[a]) for a in MESH_DCN]))
  if dcn <= 0 or device_count % dcn:
    return None
  try:
    ici = sharding.fill_mesh_shape([config.mesh[a] for a in MESH_ICI], device_count // dcn)
  except ValueError:
    return None
  return {a: size * (int(config.mesh[f"dcn_{a}"]) if f"dcn_{a}" in config.mesh else 1)
          for a, size in zip(MESH_ICI, ici)}


def validate(config: ml_collections.ConfigDict, *, device_count: Optional[int] = None,
             process_count: Optional[int] = None, check_paths: bool = True) -> None:
  """Raises ConfigError listing every problem of `config`; returns None when it can run.

  device_count / process_count: of the run (default: this process's view); check_paths: False
  skips the existence of data and init paths (plans made away from the data).
  """
  device_count = jax.device_count() if device_count is None else device_count
  process_count = jax.process_count() if process_count is None else process_count
  problems: List[str] = []

  def need(ok, message):
    if not ok:
      problems.append(message)

  need(config.stage in STAGES, f"config.stage={config.stage!r}: expected one of {STAGES}")
  model_config = None
  try:
    model_config = initialization.model_config_from(config)
  except ValueError as e:
    problems.append(str(e))
  need(config.total_steps >= 1, f"config.total_steps={config.total_steps}: must be >= 1")
  need(0 <= config.seed < 2**32, f"config.seed={config.seed}: must be in [0, 2**32)")

  o = config.optim
  need(o.name in OPTIMIZERS, f"config.optim.name={o.name!r}: expected one of {OPTIMIZERS}")
  need(o.schedule in SCHEDULES,
       f"config.optim.schedule={o.schedule!r}: expected one of {SCHEDULES}")
  need(_finite(o.learning_rate) and 0 < o.learning_rate <= MAX_LEARNING_RATE,
       f"config.optim.learning_rate={o.learning_rate}: must be a finite number in (0, "
       f"{MAX_LEARNING_RATE:g}]")
  need(0 <= o.warmup_steps <= config.total_steps,
       f"config.optim.warmup_steps={o.warmup_steps}: must be in [0, config.total_steps="
       f"{config.total_steps}]")
  need(0.0 <= o.end_learning_rate_ratio <= 1.0,
       f"config.optim.end_learning_rate_ratio={o.end_learning_rate_ratio}: must be in [0, 1]")
  for key in ("b1", "b2"):
    need(0.0 <= o[key] < 1.0, f"config.optim.{key}={o[key]}: must be in [0, 1)")
  need(_finite(o.eps) and 0 < o.eps <= 1, f"config.optim.eps={o.eps}: must be a finite number "
       "in (0, 1]")
  need(_finite(o.weight_decay) and o.weight_decay >= 0,
       f"config.optim.weight_decay={o.weight_decay}: must be a finite number >= 0")
  need(not (_finite(o.weight_decay) and _finite(o.learning_rate))
       or o.weight_decay * o.learning_rate < 1,
       f"config.optim.weight_decay={o.weight_decay}: times config.optim.learning_rate="
       f"{o.learning_rate} must be < 1 (a step would remove all of every weight)")
  need(_finite(o.grad_clip_norm) and o.grad_clip_norm >= 0,
       f"config.optim.grad_clip_norm={o.grad_clip_norm}: must be a finite number >= 0 (0 = no "
       "clipping)")
  need(0.0 < o.encoder_layer_decay <= 1.0,
       f"config.optim.encoder_layer_decay={o.encoder_layer_decay}: must be in (0, 1] (1 = off)")
  need(o.grad_accum_steps >= 1,
       f"config.optim.grad_accum_steps={o.grad_accum_steps}: must be >= 1")
  regexes_ok = True
  for key, pattern in (("optim.weight_decay_exclude", o.weight_decay_exclude),
                       ("trainable", config.trainable), ("frozen", config.frozen),
                       ("lora.target", config.lora.target)):
    try:
      re.compile(pattern)
    except re.error as e:
      problems.append(f"config.{key}={pattern!r}: not a valid regular expression ({e})")
      regexes_ok = False
  need(config.lora.rank >= 0, f"config.lora.rank={config.lora.rank}: must be >= 0 (0 = off)")
  need(_finite(config.lora.alpha) and config.lora.alpha > 0,
       f"config.lora.alpha={config.lora.alpha}: must be a finite number > 0")

  if model_config is not None and regexes_ok:
    _check_stage(config, model_config, need)

  need(_finite(config.loss.z_loss_weight) and config.loss.z_loss_weight >= 0,
       f"config.loss.z_loss_weight={config.loss.z_loss_weight}: must be a finite number >= 0")
  need(isinstance(config.loss.chunk_length, int) and config.loss.chunk_length >= 0,
       f"config.loss.chunk_length={config.loss.chunk_length!r}: must be an integer >= 0 "
       "(0 = the whole sequence's logits at once)")
  _check_output_vocab(config, model_config, need)
  problem = vocab_rows.refusal(config)
  need(problem is None, problem or "")
  try:
    from qwen_audio_jax.training import report  # pylint: disable=g-import-not-at-top
    report.validate(config)
  except ValueError as e:
    problems.append(str(e))
  need(config.nonfinite in NONFINITE,
       f"config.nonfinite={config.nonfinite!r}: expected one of {NONFINITE}")
  need(config.get("precompile", "largest") in PRECOMPILE,
       f"config.precompile={config.get('precompile')!r}: expected one of {PRECOMPILE}")
  _check_specaugment(config, problems)

  shape = _check_mesh(config, device_count, need)
  for key in ("data", "eval_data") if config.eval_every else ("data",):
    _check_data(config, key, model_config, shape, process_count, problems, check_paths)
  if shape is not None:
    per_device = config.data.batch_size // max(1, shape["data"] * shape["fsdp"])
    need(per_device == 0 or per_device % o.grad_accum_steps == 0,
         f"config.optim.grad_accum_steps={o.grad_accum_steps}: does not divide the per-device "
         f"batch {per_device} (config.data.batch_size={config.data.batch_size} over data x fsdp "
         f"= {shape['data'] * shape['fsdp']} shards)")

  if check_paths:
    problems.extend(_missing_init_paths(config))
  need(not (config.init.checkpoint and (config.init.whisper or config.init.llm)),
       f"config.init.checkpoint={config.init.checkpoint!r}: a complete checkpoint excludes "
       "config.init.whisper / config.init.llm")

  ck = config.checkpoint
  need(ck.every_steps >= 1, f"config.checkpoint.every_steps={ck.every_steps}: must be >= 1")
  need(ck.keep >= 1, f"config.checkpoint.keep={ck.keep}: must be >= 1")
  need(not ck.keep_best_metric or ck.keep_best_metric.startswith("eval/"),
       f"config.checkpoint.keep_best_metric={ck.keep_best_metric!r}: must name an eval metric "
       "('eval/loss', 'eval/accuracy', 'eval/<task>/loss', ...) or be ''")
  need(not ck.keep_best_metric or config.eval_every > 0,
       f"config.checkpoint.keep_best_metric={ck.keep_best_metric!r}: needs evaluation "
       "(config.eval_every > 0)")
  need(config.log_every >= 1, f"config.log_every={config.log_every}: must be >= 1")
  need(config.eval_every >= 0, f"config.eval_every={config.eval_every}: must be >= 0 (0 = off)")
  need(config.eval_steps >= 0,
       f"config.eval_steps={config.eval_steps}: must be >= 0 (0 = one full pass)")
  need(not config.wandb or importlib.util.find_spec("wandb") is not None,
       "config.wandb=True: the wandb package is not installed (pip install wandb)")
  if problems:
    raise ConfigError(problems)


def _check_stage(config, model_config, need) -> None:
  """Stage rules: what each stage may and must train."""
  paths = param_paths(model_config)
  for key in ("trainable", "frozen"):
    pattern = config[key]
    need(not pattern or any(re.search(pattern, p) for p in paths),
         f"config.{key}={pattern!r}: matches no parameter of the model (paths look like "
         f"{paths[0]!r}, {paths[-1]!r})")
  trained = trained_paths(config, paths)
  llm = [p for p in trained if p.startswith("llm/")]
  audio = [p for p in trained if not p.startswith("llm/")]
  if config.lora.rank > 0:
    need(bool(trained), f"config.lora.target={config.lora.target!r}: matches no parameter")
    need(config.stage == "sft", f"config.lora.rank={config.lora.rank}: LoRA adapts the LLM, "
         "which stage 'pretrain' keeps frozen; use it in stage 'sft'")
    need(not audio, f"config.lora.target={config.lora.target!r}: matches non-LLM parameters "
         f"(first {audio[:1]}); LoRA applies to the LLM")
    return
  need(bool(trained), f"config.trainable={config.trainable!r} with config.frozen="
       f"{config.frozen!r}: no parameter would be trained")
  if config.stage == "pretrain":
    need(not llm or config.train_llm_in_pretrain,
         f"config.trainable={config.trainable!r}: stage 'pretrain' keeps the LLM frozen, but "
         f"{len(llm)} LLM parameters would be trained (first {llm[0] if llm else ''}); add them "
         "to config.frozen, narrow config.trainable, or set config.train_llm_in_pretrain=True "
         "(a model without a pretrained LLM)")
    need(any(p.startswith("audio_encoder/") for p in audio),
         f"config.trainable={config.trainable!r}: stage 'pretrain' trains the audio encoder, "
         "but no audio_encoder parameter is trained")
  elif config.stage == "sft":
    enc = [p for p in audio if p.startswith("audio_encoder/") and "/proj/" not in p]
    need(not enc, f"config.trainable={config.trainable!r}: stage 'sft' keeps the audio encoder "
         f"frozen, but {len(enc)} encoder parameters would be trained (first "
         f"{enc[0] if enc else ''})")
    need(bool(llm), f"config.trainable={config.trainable!r}: stage 'sft' trains the LLM (or "
         "LoRA factors with config.lora.rank > 0), but no LLM parameter is trained")


def _check_output_vocab(config, model_config, need) -> None:
  mode = config.loss.get("output_vocab", "full")
  need(mode in output_vocab.MODES,
       f"config.loss.output_vocab={mode!r}: expected one of {output_vocab.MODES}")
  if mode != "data":
    return
  need(model_config is None or not model_config.llm.tie_embeddings,
       "config.loss.output_vocab='data' needs an untied output head (llm.tie_embeddings=False): "
       "zeroing tied rows would erase input embeddings")
  for name in config.data.mixture.keys():
    need(config.data.mixture[name].source == "jsonl",
         f"config.loss.output_vocab='data' reads the training targets from JSONL manifests, but "
         f"config.data.mixture.{name}.source={config.data.mixture[name].source!r}; use 'full'")


def _check_specaugment(config, problems) -> None:
  try:
    specaugment_lib.from_config(config.specaugment.to_dict())
  except ValueError as e:
    problems.append(f"config.specaugment: {str(e).replace('SpecAugmentConfig.', '')}")


def _check_mesh(config, device_count, need) -> Optional[dict]:
  m = config.mesh
  ok = True
  for axis in MESH_ICI:
    size = m[axis]
    if not isinstance(size, int) or (size != -1 and size < 1):
      need(False, f"config.mesh.{axis}={size!r}: must be a positive int or -1 (fill)")
      ok = False
  for axis in MESH_DCN:
    if not isinstance(m[axis], int) or m[axis] < 1:
      need(False, f"config.mesh.{axis}={m[axis]!r}: must be a positive int")
      ok = False
  _check_axis_rules(m.logical_axis_rules, need)
  if not ok:
    return None
  fills = [a for a in MESH_ICI if m[a] == -1]
  if len(fills) > 1:
    need(False, f"config.mesh.{fills[1]}=-1: only one mesh axis may be -1 "
         f"(config.mesh.{fills[0]} is -1 too)")
    return None
  shape = mesh_shape(config, device_count)
  if shape is None:
    sizes = ", ".join(f"{a}={m[a]}" for a in MESH_ICI + MESH_DCN)
    culprit = next((a for a in MESH_ICI + MESH_DCN if m[a] not in (1, -1)), "data")
    need(False, f"config.mesh.{culprit}={m[culprit]}: the mesh ({sizes}) does not fit the "
         f"{device_count} available devices (the product of the sizes, with -1 filling, must "
         "equal the device count)")
  return shape


def _check_axis_rules(rules, need) -> None:
  """config.mesh.logical_axis_rules: (logical name, mesh axes) pairs covering every name the
  model uses, each mesh axis one of the mesh's."""
  key = "config.mesh.logical_axis_rules"
  pairs = isinstance(rules, (tuple, list)) and all(
      isinstance(r, (tuple, list)) and len(r) == 2 and isinstance(r[0], str) for r in rules)
  if not pairs:
    need(False, f"{key}={rules!r}: expected a sequence of (logical axis name, mesh axes) pairs")
    return
  names = [name for name, _ in rules]
  for name in dict.fromkeys(n for n in names if names.count(n) > 1):
    need(False, f"{key}: {name!r} appears more than once (only its first entry would be used)")
  for name, axes in rules:
    axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
    bad = [a for a in axes if a not in MESH_ICI]
    need(not bad, f"{key}: {name!r} maps to {bad[0] if bad else ''!r}, not a mesh axis; "
         f"expected None, one of {MESH_ICI} or a tuple of them")
  missing = [n for n, _ in sharding.LOGICAL_AXIS_RULES if n not in names]
  need(not missing, f"{key}: no entry for {missing[0] if missing else ''!r} (the model annotates "
       f"{len(sharding.LOGICAL_AXIS_RULES)} logical axes: "
       f"{', '.join(n for n, _ in sharding.LOGICAL_AXIS_RULES)})")


def _check_data(config, key, model_config, shape, process_count, problems,
                check_paths=True) -> None:
  data = config[key]
  try:
    data_config_lib.validate_data_config(data)
  except ValueError as e:
    problems.append(f"config.{key}: {str(e).replace('data config: ', '')}")
    return
  for name in data.mixture.keys():
    entry = data.mixture[name]
    if check_paths and entry.source in ("jsonl", "array_record"):
      try:
        expand_paths(entry.paths, f"config.{key}.mixture.{name}.paths")
      except (FileNotFoundError, ValueError) as e:
        problems.append(str(e))
  if model_config is not None and data.n_mels != model_config.encoder.n_mels:
    problems.append(f"config.{key}.n_mels={data.n_mels}: the model's encoder takes "
                    f"{model_config.encoder.n_mels} mel bins")
  if data.batch_size % process_count:
    problems.append(f"config.{key}.batch_size={data.batch_size}: not divisible by the "
                    f"{process_count} processes")
  if shape is not None:
    shards = shape["data"] * shape["fsdp"]
    if data.batch_size % shards:
      problems.append(f"config.{key}.batch_size={data.batch_size}: not divisible by the mesh's "
                      f"batch shards data x fsdp = {shape['data']} x {shape['fsdp']} = {shards}")


def _missing_init_paths(config) -> List[str]:
  """Messages for local init paths that do not exist (remote URLs are checked when read)."""
  out = []
  for key in ("checkpoint", "whisper", "llm"):
    path = config.init[key]
    if path and "://" not in path and not os.path.exists(path):
      out.append(f"config.init.{key}={path!r}: no such file or directory")
  return out
