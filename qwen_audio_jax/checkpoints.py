"""One reader for every checkpoint a user points a command at.

Two kinds of directory hold a usable model:

    converted   written by `python -m qwen_audio_jax.convert`: params/ (Orbax) and
                model_config.json, optionally the vocabulary files next to them
    run step    `<workdir>/checkpoints/<step>` of a training run: state/ (the train state:
                params, opt_state, rng, lora) and data/; the run's model configuration and
                training configuration are `<workdir>/model_config.json` and
                `<workdir>/config.json`

`load_model` reads either into the same `LoadedModel`: the model configuration, the parameters as
the model's `apply` takes them (a LoRA run's factors folded into the kernels, so inference,
evaluation and export see what the run's own evaluation saw) and the tokenizer of the model's
family. Inference, chat, evaluation, export and stage-2 initialisation all go through it, so a
model trained here is loaded the same way everywhere.
"""

import dataclasses
import json
import os
from typing import Any, Dict, Optional

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.sharding import Mesh

from qwen_audio_jax import config as model_config_lib
from qwen_audio_jax import errors
from qwen_audio_jax import sharding
from qwen_audio_jax.convert import orbax_io
from qwen_audio_jax.text import tokenizer as tokenizer_lib
from qwen_audio_jax.training import checkpointing
from qwen_audio_jax.training import initialization
from qwen_audio_jax.training import lora as lora_lib

RUN_CONFIG_FILE = "config.json"


class CheckpointNotFound(errors.UserError, FileNotFoundError):
  """The path is neither a converted checkpoint nor a run's step directory."""


@dataclasses.dataclass
class LoadedModel:
  """A model ready to run: configuration, parameters (LoRA merged) and tokenizer."""
  model_config: model_config_lib.QwenAudioConfig
  params: Dict[str, Any]
  tokenizer: tokenizer_lib.AudioTextTokenizer
  source: str  # 'converted' | 'run'
  path: str
  step: Optional[int] = None
  # A LoRA run's factors as trained ({'/'-path: {'a', 'b'}}) and the run's `lora` config block;
  # None for converted checkpoints and runs without LoRA. `params` already includes them.
  lora: Optional[Dict[str, Dict[str, Any]]] = None
  lora_config: Optional[ml_collections.ConfigDict] = None
  # The training configuration of a run (None for converted checkpoints).
  run_config: Optional[ml_collections.ConfigDict] = None


def single_device_mesh() -> Mesh:
  """A (1, 1, 1) mesh on the first device: what a command without a --mesh flag runs on."""
  return sharding.make_mesh((1, 1, 1), jax.devices()[:1])


def run_workdir(step_dir: str) -> epath.Path:
  """`<workdir>` of `<workdir>/checkpoints/<step>`."""
  return epath.Path(checkpointing.absolute(step_dir)).parent.parent


def read_run_config(step_dir: str) -> ml_collections.ConfigDict:
  """The training configuration a run wrote into its workdir."""
  file = run_workdir(step_dir) / RUN_CONFIG_FILE
  if not file.exists():
    raise CheckpointNotFound(
        f"{step_dir}: a run's step directory, but its workdir has no {RUN_CONFIG_FILE} "
        f"(looked for {file}); pass the step directory of a run of "
        f"`python -m qwen_audio_jax.train`")
  try:
    return ml_collections.ConfigDict(json.loads(file.read_text(encoding="utf-8")))
  except ValueError as e:
    raise ValueError(f"{file}: invalid JSON ({e})") from e


def run_model_config(step_dir: str) -> model_config_lib.QwenAudioConfig:
  """The model configuration of a run: its workdir's model_config.json."""
  file = run_workdir(step_dir) / orbax_io.MODEL_CONFIG_FILE
  if not file.exists():
    raise CheckpointNotFound(f"{step_dir}: the run's workdir has no "
                             f"{orbax_io.MODEL_CONFIG_FILE} (looked for {file})")
  return orbax_io.load_model_config(os.fspath(file))


def checkpoint_kind(path: str) -> str:
  """'run' for a run's step directory, 'converted' for a converted checkpoint; else an error."""
  if checkpointing.is_run_step_dir(path):
    return "run"
  root = epath.Path(orbax_io.checkpoint_root(path))
  if (root / orbax_io.PARAMS_DIR).is_dir() and (root / orbax_io.MODEL_CONFIG_FILE).exists():
    return "converted"
  hint = ""
  steps_dir = epath.Path(path) / checkpointing.CHECKPOINT_DIR
  if steps_dir.is_dir():
    steps = sorted((int(p.name) for p in steps_dir.iterdir() if p.name.isdigit()))
    if steps:
      hint = f" (a run's workdir: pass one of its steps, e.g. {steps_dir / str(steps[-1])})"
  raise CheckpointNotFound(
      f"{path}: not a checkpoint: expected a directory written by `python -m "
      f"qwen_audio_jax.convert` (params/ + model_config.json) or a run's "
      f"checkpoints/<step> directory (state/){hint}")


def lora_shapes(run_config: ml_collections.ConfigDict, abstract_params) -> Dict[str, Any]:
  """ShapeDtypeStructs of the LoRA factors a run with `run_config.lora` trained."""
  return jax.eval_shape(lambda p: lora_lib.init_lora(run_config, p, jax.random.key(0)),
                        abstract_params)


def _replicated(tree, mesh: Mesh):
  spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=spec), tree)


def restore_run_params(step_dir: str, model_config, run_config, mesh: Mesh):
  """(params, lora factors or None) of a run's step directory, placed on `mesh`."""
  expected = initialization.abstract_params(model_config, mesh)
  item = {"params": expected}
  uses_lora = run_config.get("lora", None) is not None and run_config.lora.get("rank", 0) > 0
  if uses_lora:
    item["lora"] = _replicated(lora_shapes(run_config, expected), mesh)
  with ocp.PyTreeCheckpointer() as checkpointer:
    restored = checkpointer.restore(
        epath.Path(checkpointing.absolute(step_dir)) / checkpointing.STATE_ITEM,
        args=ocp.args.PyTreeRestore(
            item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
            partial_restore=True))
  return restored["params"], (restored["lora"] if uses_lora else None)


def step_of(step_dir: str) -> Optional[int]:
  name = epath.Path(step_dir).name
  return int(name) if name.isdigit() else None


def tokenizer_for(model_config, *, checkpoint_dir: Optional[str] = None,
                  tokenizer_path: Optional[str] = None, conversion_source: Optional[str] = None):
  """The tokenizer of a model: an explicit path, else vocabulary files found with the checkpoint
  (or the released checkpoint it was converted from), else -- for the Qwen-Audio family, whose
  vocabulary is public in the `dashscope` package -- the packaged `qwen.tiktoken`."""
  if tokenizer_path:
    return tokenizer_lib.QwenAudioTokenizer.load(tokenizer_path)
  for candidate in (checkpoint_dir, conversion_source):
    if candidate and os.path.isdir(candidate) and (
        tokenizer_lib.has_transformers_tokenizer(candidate)
        or os.path.exists(os.path.join(candidate, "qwen.tiktoken"))):
      return tokenizer_lib.QwenAudioTokenizer.load(candidate)
  if not model_config.encoder.audio_bos_eos:
    raise CheckpointNotFound(
        f"{checkpoint_dir}: a Qwen2-Audio-family model needs its transformers tokenizer files "
        f"(tokenizer.json / vocab.json + merges.txt); none were found with the checkpoint"
        f"{' or at ' + conversion_source if conversion_source else ''}: pass a tokenizer "
        f"directory")
  return tokenizer_lib.QwenAudioTokenizer.load(None)


def load_model(path: str, *, mesh: Optional[Mesh] = None,
               tokenizer_path: Optional[str] = None) -> LoadedModel:
  """Reads a converted checkpoint or a run's step directory (see the module docstring).

  mesh: where the parameters are placed (each host reads its shards); default: one device.
  tokenizer_path: a vocabulary file or tokenizer directory overriding the one found with the
    checkpoint.
  """
  path = os.fspath(path)
  if not epath.Path(path).exists():
    raise CheckpointNotFound(f"{path}: no such checkpoint directory")
  mesh = mesh or single_device_mesh()
  kind = checkpoint_kind(path)
  if kind == "run":
    run_config = read_run_config(path)
    model_config = run_model_config(path)
    params, factors = restore_run_params(path, model_config, run_config, mesh)
    if factors is not None:
      params = jax.jit(lambda p, f: lora_lib.merge(run_config, p, f))(params, factors)
      logging.info("%s: LoRA factors (rank %d, %d kernels) merged into the weights", path,
                   run_config.lora.rank, len(factors))
    data_tokenizer = run_config.get("data", {}).get("tokenizer_path", "") or None
    tokenizer = tokenizer_for(model_config, tokenizer_path=tokenizer_path or data_tokenizer,
                              checkpoint_dir=os.fspath(run_workdir(path)))
    return LoadedModel(model_config=model_config, params=params, tokenizer=tokenizer,
                       source="run", path=path, step=step_of(path), lora=factors,
                       lora_config=run_config.lora if factors is not None else None,
                       run_config=run_config)
  root = orbax_io.checkpoint_root(path)
  model_config = orbax_io.load_model_config(root)
  shardings = initialization.param_shardings(model_config, mesh)
  params = orbax_io.load_params(path, model_config, shardings)
  initialization.check_complete(params, model_config, mesh, where=path)
  source = orbax_io.read_conversion_info(path).get("source")
  tokenizer = tokenizer_for(model_config, tokenizer_path=tokenizer_path, checkpoint_dir=root,
                            conversion_source=source if isinstance(source, str) else None)
  return LoadedModel(model_config=model_config, params=params, tokenizer=tokenizer,
                     source="converted", path=path)


def host_params(loaded: LoadedModel) -> Dict[str, np.ndarray]:
  """The parameters as host numpy arrays (export, inspection)."""
  return jax.tree.map(np.asarray, loaded.params)
