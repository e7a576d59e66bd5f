"""Where a run's first parameters come from: a fresh init, a full checkpoint, or a merge.

    config.init.checkpoint   a complete parameter set: a checkpoint written by
                             `python -m qwen_audio_jax.convert` (e.g. the released Qwen-Audio) or a
                             step directory of an earlier run of this trainer (stage 2 from
                             stage 1: `<workdir>/checkpoints/<step>`).
    config.init.whisper      converted encoder parameters (layout 'whisper') and
    config.init.llm          converted LLM parameters (layouts 'qwen' / 'qwen2'), merged into a
                             fresh init: stage 1 starts from Whisper-large-v2 + Qwen-7B with the
                             projection and the audio bos/eos rows new.
    (none of them)           a fresh init from the model config (demo, tests, ablations).

Every restored leaf is checked against the shape the model config expects; the parameters come
back as jax.Arrays already placed with the mesh's shardings.
"""

import dataclasses
import typing
from typing import Any, Dict, List, Tuple

import flax.linen as nn
import jax
import ml_collections
from absl import logging
from jax.sharding import Mesh

from qwen_audio_jax import config as model_config_lib
from qwen_audio_jax import convert, sharding
from qwen_audio_jax.model import params as params_lib

NESTED_MODEL_FIELDS = {"encoder": model_config_lib.EncoderConfig, "llm": model_config_lib.LLMConfig}


def _field_type(cls, field: dataclasses.Field) -> type:
  """The scalar type of a model-config field (Optional[int] -> int)."""
  hint = typing.get_type_hints(cls)[field.name]
  args = [a for a in typing.get_args(hint) if a is not type(None)]
  return args[0] if typing.get_origin(hint) is typing.Union and len(args) == 1 else hint


def _placeholders(cls, values: Dict[str, Any], where: str) -> ml_collections.ConfigDict:
  fields = {f.name: f for f in dataclasses.fields(cls)}
  out = ml_collections.ConfigDict()
  for name, field in fields.items():
    if name in NESTED_MODEL_FIELDS:
      out[name] = _placeholders(NESTED_MODEL_FIELDS[name], dict(values.pop(name, None) or {}),
                                f"{where}.{name}")
    else:
      out[name] = ml_collections.config_dict.placeholder(_field_type(cls, field))
      if name in values:
        out[name] = values.pop(name)
  if values:
    raise ValueError(f"{where}.{sorted(values)[0]}: not a field of {cls.__name__}; expected one "
                     f"of {sorted(fields)}")
  return out


def model_overrides(**values) -> ml_collections.ConfigDict:
  """`config.model.overrides`: one typed entry per QwenAudioConfig field (and per `encoder.*` /
  `llm.*` sub-field), None meaning "the preset's value", so every field can be set from the
  command line (`--config.model.overrides.llm.depth=4`) and a value of the wrong type is refused
  by the flag parser with the key named. `values` (nested dicts for encoder / llm) are set."""
  return _placeholders(model_config_lib.QwenAudioConfig, dict(values), "config.model.overrides")


def _set_fields(config_dict) -> Dict[str, Any]:
  """The entries that are set (not None) of an overrides dict, nested dicts kept."""
  out = {}
  for key, value in (config_dict or {}).items():
    if isinstance(value, dict):
      value = _set_fields(value)
      if value:
        out[key] = value
    elif value is not None:
      out[key] = value
  return out


def model_config_from(config: ml_collections.ConfigDict) -> model_config_lib.QwenAudioConfig:
  """The QwenAudioConfig of config.model (preset + overrides; encoder / llm take sub-dicts)."""
  preset = config.model.preset
  if preset not in model_config_lib.PRESETS:
    raise ValueError(f"config.model.preset={preset!r}: unknown preset; expected one of "
                     f"{sorted(model_config_lib.PRESETS)}")
  base = model_config_lib.PRESETS[preset]
  overrides = _set_fields(config.model.overrides.to_dict()) if config.model.overrides else {}
  fields = {f.name for f in dataclasses.fields(base)}
  replaced = {}
  for key, value in overrides.items():
    if key not in fields:
      raise ValueError(f"config.model.overrides.{key}: not a field of QwenAudioConfig; expected "
                       f"one of {sorted(fields)}")
    if key in NESTED_MODEL_FIELDS:
      sub = getattr(base, key)
      sub_fields = {f.name for f in dataclasses.fields(sub)}
      if not isinstance(value, dict):
        raise ValueError(f"config.model.overrides.{key}: expected a dict of "
                         f"{NESTED_MODEL_FIELDS[key].__name__} fields, got {value!r}")
      for sub_key in value:
        if sub_key not in sub_fields:
          raise ValueError(f"config.model.overrides.{key}.{sub_key}: not a field of "
                           f"{NESTED_MODEL_FIELDS[key].__name__}; expected one of "
                           f"{sorted(sub_fields)}")
      value = dataclasses.replace(sub, **value)
    replaced[key] = value
  try:
    return dataclasses.replace(base, **replaced)
  except ValueError as e:
    raise ValueError(f"config.model.overrides: {e}") from e


def param_shardings(model_config, mesh: Mesh):
  """NamedShardings of the (unboxed) parameter tree under the logical axis rules."""
  return sharding.param_shardings(params_lib.abstract_params(model_config), mesh)


def abstract_params(model_config, mesh: Mesh):
  """ShapeDtypeStructs of the unboxed parameters, carrying their shardings."""
  shapes = nn.unbox(params_lib.abstract_params(model_config))
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      shapes, param_shardings(model_config, mesh))


def random_params(model_config, mesh: Mesh, rng: jax.Array) -> Dict:
  """A fresh init, each leaf created directly in its sharding."""
  shardings = param_shardings(model_config, mesh)
  init = jax.jit(lambda key: nn.unbox(params_lib.init_params(model_config, key)),
                 out_shardings=shardings)
  return init(rng)


def _check_against(restored: Dict, expected, where: str, *, complete: bool) -> None:
  """Shapes of `restored` vs the abstract `expected`; `complete`: every leaf must be there."""
  got, want = params_lib.flat_paths(restored), params_lib.flat_paths(expected)
  for path, leaf in got.items():
    if path not in want:
      raise ValueError(f"{where}: parameter {path} is not part of the model config")
    if tuple(leaf.shape) != tuple(want[path].shape):
      raise ValueError(f"{where}: parameter {path} has shape {tuple(leaf.shape)}, the "
                       f"model config expects {tuple(want[path].shape)}")
  if complete:
    missing = [p for p in want if p not in got]
    if missing:
      raise ValueError(f"{where}: {len(missing)} parameters of the model are missing, first "
                       f"{missing[0]}")


def _merge(base: Dict, part: Dict) -> Dict:
  """`base` with the leaves of `part` put in at the same paths."""
  out = dict(base)
  for key, value in part.items():
    out[key] = _merge(base[key], value) if isinstance(value, dict) else value
  return out


def _load_converted(path: str, model_config, mesh: Mesh, key: str) -> Dict:
  """A converted checkpoint's parameters; its errors name the config key that pointed at it."""
  try:
    return convert.load_params(path, model_config, param_shardings(model_config, mesh))
  except (ValueError, FileNotFoundError) as e:  # CheckpointError is a ValueError
    hint = ""
    if "has shape" in str(e):  # e.g. the demo's pretrained encoder under other model sizes
      hint = (f" (the checkpoint was written for other model sizes: point config.init.{key} at "
              f"one of these sizes, or set it to '' to start this part from a random init)")
    raise type(e)(f"config.init.{key}={path!r}: {e}{hint}") from e


def check_complete(params: Dict, model_config, mesh: Mesh, where: str) -> None:
  """Every parameter of `model_config` is in `params`, each with its expected shape."""
  _check_against(params, abstract_params(model_config, mesh), where, complete=True)


def load_run_step(path: str, model_config, mesh: Mesh) -> Tuple[Dict, str]:
  """A run's step directory as complete parameters, and what was done with its LoRA factors.

  Read with `checkpoints` (the run's own configuration from its workdir). A LoRA run's factors
  are merged into their kernels, so the new run starts from exactly the model the old run
  evaluated; LoRA factors of the new run (if any) start from zero on top of it.
  """
  from qwen_audio_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from qwen_audio_jax.training import lora  # pylint: disable=g-import-not-at-top
  where = f"config.init.checkpoint={path!r}"
  run_config = checkpoints.read_run_config(path)
  run_model = checkpoints.run_model_config(path)
  params, factors = checkpoints.restore_run_params(path, run_model, run_config, mesh)
  note = ""
  if factors is not None:
    params = jax.jit(lambda p, f: lora.merge(run_config, p, f))(params, factors)
    note = (f" (its LoRA factors, rank {run_config.lora.rank} on {len(factors)} kernels, merged "
            f"into the weights)")
    logging.info("%s: LoRA factors of rank %d merged into %d kernels", where,
                 run_config.lora.rank, len(factors))
  expected = abstract_params(model_config, mesh)
  if run_model.scan_layers != model_config.scan_layers:
    # The same weights in the other layer layout ('block' [L, ...] <-> 'block_0' ...): a run may
    # start from one that scanned its layers (or did not), whichever this run does.
    from qwen_audio_jax.convert import stacking  # pylint: disable=g-import-not-at-top
    relayout = stacking.unstack_layers if run_model.scan_layers else stacking.stack_layers
    params = jax.jit(relayout, out_shardings=jax.tree.map(lambda e: e.sharding, expected))(
        params)
    note += f" (layers {'unrolled' if run_model.scan_layers else 'stacked for nn.scan'})"
  _check_against(params, expected, where, complete=True)
  params = jax.tree.map(lambda x, e: x if x.dtype == e.dtype else x.astype(e.dtype), params,
                        expected)
  return params, note


def _load_full(path: str, model_config, mesh: Mesh) -> Tuple[Dict, str]:
  from qwen_audio_jax.training import checkpointing  # pylint: disable=g-import-not-at-top
  if checkpointing.is_run_step_dir(path):
    return load_run_step(path, model_config, mesh)
  params = _load_converted(path, model_config, mesh, "checkpoint")
  _check_against(params, abstract_params(model_config, mesh), f"config.init.checkpoint={path!r}",
                 complete=True)
  return params, ""


def load_full(path: str, model_config, mesh: Mesh) -> Dict:
  """Complete parameters from a converted checkpoint or a step directory of a training run (a
  LoRA run's factors merged)."""
  return _load_full(path, model_config, mesh)[0]


def initial_params(config: ml_collections.ConfigDict, model_config, mesh: Mesh,
                   rng: jax.Array) -> Tuple[Dict, List[str]]:
  """The run's first parameters and a description of where each part came from; with
  `config.loss.output_vocab='data'` the head columns of tokens no target contains are tied (zero)."""
  from qwen_audio_jax.training import output_vocab  # pylint: disable=g-import-not-at-top
  vocab = output_vocab.resolve(config, model_config)
  params, sources = _initial_params(config, model_config, mesh, rng)
  if vocab is not None:
    params = output_vocab.restrict_head(params, model_config, vocab)
    sources.append(f"output head restricted to the {len(vocab.ids):,} tokens of the training "
                   f"targets ({vocab.rest:,} other columns tied, starting at zero)")
    logging.info("Initial parameters: %s", sources[-1])
  return params, sources


def _initial_params(config, model_config, mesh, rng):
  init = config.init
  if init.checkpoint:
    params, note = _load_full(init.checkpoint, model_config, mesh)
    return params, [f"all from {init.checkpoint}{note}"]
  params = random_params(model_config, mesh, rng)
  sources, restored = [], set()
  expected = abstract_params(model_config, mesh)
  for key, path in (("whisper", init.whisper), ("llm", init.llm)):
    if not path:
      continue
    part = _load_converted(path, model_config, mesh, key)
    _check_against(part, expected, f"config.init.{key}={path!r}", complete=False)
    params = _merge(params, part)
    part_paths = params_lib.flat_paths(part)
    restored.update(part_paths)
    sources.append(f"{', '.join(sorted(part))} ({len(part_paths)} arrays) from {path}")
  if sources:
    fresh = sorted(p for p in params_lib.flat_paths(params) if p not in restored)
    sources.append(f"{len(fresh)} arrays freshly initialised: {', '.join(fresh[:8])}"
                   f"{' ...' if len(fresh) > 8 else ''}")
  else:
    sources.append("random init")
  for line in sources:
    logging.info("Initial parameters: %s", line)
  return params, sources

