"""Our checkpoint format: an Orbax checkpoint of {'params': ...} plus the model configuration.

    OUT/params/            Orbax (StandardCheckpointer) checkpoint of {'params': tree}; the layer
                           stacks are stored scanned (leading layer axis) whatever the layout used
                           for training
    OUT/model_config.json  our QwenAudioConfig as JSON (save_model_config / load_model_config)
    OUT/conversion.json    where the parameters came from: layout, source, parameter groups held,
                           skipped and freshly initialised tensors, token ids for export

`load_params` restores the parameters, optionally straight into NamedShardings and in the
unrolled layout when the configuration asks for it.
"""

import dataclasses
import json
import os
import shutil
from typing import Any, Dict, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import NamedSharding, PartitionSpec

from qwen_audio_jax import config as C
from qwen_audio_jax.convert import stacking
from qwen_audio_jax.training import checkpointing
from qwen_audio_jax.convert.safetensors_io import CheckpointError
from qwen_audio_jax.convert.tree import expected_shapes, flatten, path_str, unflatten

PARAMS_DIR = "params"
MODEL_CONFIG_FILE = "model_config.json"
CONVERSION_FILE = "conversion.json"


def save_model_config(config: C.QwenAudioConfig, path: str) -> str:
  """Writes `config` as JSON to `path` (a file, or a directory that receives model_config.json)."""
  if os.path.isdir(path):
    path = os.path.join(path, MODEL_CONFIG_FILE)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(dataclasses.asdict(config), f, indent=2, sort_keys=True)
    f.write("\n")
  return path


def _build(cls, fields: Dict[str, Any], where: str):
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise ValueError(f"{where}: unknown field {unknown[0]!r} for {cls.__name__}; known fields: "
                     f"{sorted(known)}")
  return cls(**fields)


def model_config_from_dict(data: Dict[str, Any], where: str = "model config") -> C.QwenAudioConfig:
  data = dict(data)
  encoder = _build(C.EncoderConfig, dict(data.pop("encoder", {})), where + " (encoder)")
  llm = _build(C.LLMConfig, dict(data.pop("llm", {})), where + " (llm)")
  return _build(C.QwenAudioConfig, dict(data, encoder=encoder, llm=llm), where)


def load_model_config(path: str) -> C.QwenAudioConfig:
  """Reads a config written by `save_model_config` (a file, or a directory holding one; local or
  a URL such as gs://...)."""
  file = epath.Path(path)
  if file.is_dir():
    file = file / MODEL_CONFIG_FILE
  if not file.exists():
    raise FileNotFoundError(f"model configuration {file} does not exist")
  try:
    data = json.loads(file.read_text(encoding="utf-8"))
  except ValueError as e:
    raise ValueError(f"{file}: invalid JSON ({e})") from e
  return model_config_from_dict(data, where=os.fspath(file))


def _absolute(path: str) -> str:
  """Local paths made absolute (Orbax requires it); URLs are left alone."""
  path = os.fspath(path)
  return path if "://" in path else os.path.abspath(path)


def _params_dir(path: str) -> str:
  path = _absolute(path).rstrip("/")
  candidate = f"{path}/{PARAMS_DIR}"
  return candidate if epath.Path(candidate).is_dir() else path


def checkpoint_root(path: str) -> str:
  params_dir = _params_dir(path)
  parent, _, base = params_dir.rpartition("/")
  return parent if base == PARAMS_DIR else params_dir


def save_checkpoint(out_dir: str, params: Dict, config: C.QwenAudioConfig,
                    info: Optional[Dict[str, Any]] = None, *, overwrite: bool = False) -> str:
  """Saves scanned `params` (numpy or jax leaves) with their configuration into `out_dir`."""
  out_dir = os.path.abspath(os.fspath(out_dir))
  params_dir = os.path.join(out_dir, PARAMS_DIR)
  if os.path.exists(params_dir):
    if not overwrite:
      raise FileExistsError(f"{params_dir} already exists (pass overwrite=True / --overwrite)")
    shutil.rmtree(params_dir)
  os.makedirs(out_dir, exist_ok=True)
  # A synchronous save needs no defensive copy of host arrays, so memory-mapped leaves are
  # streamed from their files instead of being copied into memory first. Replica-parallel
  # writes pay only across accelerator hosts (training/checkpointing.replica_parallel_writes).
  registry = ocp.type_handlers.create_type_handler_registry(
      (np.ndarray, ocp.type_handlers.NumpyHandler(deepcopy_host_arrays=False)),
      (jax.Array, ocp.type_handlers.ArrayHandler(
          use_replica_parallel=checkpointing.replica_parallel_writes())))
  with ocp.Checkpointer(ocp.PyTreeCheckpointHandler(type_handler_registry=registry)) as ckpt:
    ckpt.save(params_dir, args=ocp.args.PyTreeSave({"params": params}))
  save_model_config(config, os.path.join(out_dir, MODEL_CONFIG_FILE))
  with open(os.path.join(out_dir, CONVERSION_FILE), "w", encoding="utf-8") as f:
    json.dump(info or {}, f, indent=2, sort_keys=True)
    f.write("\n")
  return out_dir


def read_conversion_info(path: str) -> Dict[str, Any]:
  """conversion.json of a checkpoint ({} when absent)."""
  file = epath.Path(checkpoint_root(path)) / CONVERSION_FILE
  if not file.exists():
    return {}
  return json.loads(file.read_text(encoding="utf-8"))


def checkpoint_shapes(path: str) -> Dict[tuple, jax.ShapeDtypeStruct]:
  """{path: ShapeDtypeStruct} of the stored (scanned) parameters, read from the metadata."""
  params_dir = _params_dir(path)
  if not epath.Path(params_dir).is_dir():
    raise FileNotFoundError(f"no checkpoint at {params_dir}")
  with ocp.StandardCheckpointer() as checkpointer:
    metadata = checkpointer.metadata(params_dir)
  tree = metadata.item_metadata
  tree = getattr(tree, "tree", tree)
  if not isinstance(tree, dict) or "params" not in tree:
    raise CheckpointError(f"{params_dir} does not hold a {{'params': ...}} tree")
  return {k: jax.ShapeDtypeStruct(tuple(m.shape), np.dtype(m.dtype))
          for k, m in flatten(tree["params"]).items()}


def restore_leaves(path: str, paths, dtype=None) -> Dict[tuple, np.ndarray]:
  """Restores only the leaves at `paths` as host numpy arrays (optionally cast to `dtype`)."""
  stored = checkpoint_shapes(path)
  missing = [p for p in paths if p not in stored]
  if missing:
    raise CheckpointError(f"{_params_dir(path)} has no parameter {path_str(missing[0])}")
  item = unflatten({p: stored[p] for p in paths})
  args = jax.tree.map(lambda s: ocp.RestoreArgs(restore_type=np.ndarray, dtype=dtype), item)
  with ocp.PyTreeCheckpointer() as checkpointer:
    restored = checkpointer.restore(
        _params_dir(path), args=ocp.args.PyTreeRestore(
            item={"params": item}, restore_args={"params": args}, partial_restore=True))
  return {p: np.asarray(v) for p, v in flatten(restored["params"]).items()}


def _stacked_sharding(sharding: NamedSharding) -> NamedSharding:
  return NamedSharding(sharding.mesh, PartitionSpec(None, *sharding.spec))


def _sharding_for(flat_shardings, path, scanned: bool):
  """The sharding of the stored (scanned) leaf at `path`, from a tree in either layout."""
  if path in flat_shardings:
    return flat_shardings[path]
  if not scanned and "block" in path:
    i = path.index("block")
    first = path[:i] + ("block_0",) + path[i + 1:]
    if first in flat_shardings:
      return _stacked_sharding(flat_shardings[first])
  raise CheckpointError(f"no sharding given for parameter {path_str(path)}")


def load_params(path: str, config: Optional[C.QwenAudioConfig] = None,
                shardings: Optional[Any] = None) -> Dict:
  """Restores the parameter tree saved at `path` (a converted checkpoint directory).

  Only the parameter groups the checkpoint holds come back (a converted Whisper checkpoint holds
  'audio_encoder' only; a stage-1 initialisation holds all of them).
  config: checks every stored leaf against the shapes this configuration expects, casts to its
    param_dtype and returns the unrolled layout when `config.scan_layers` is False. Default: the
    checkpoint's own model_config.json.
  shardings: a tree of NamedShardings matching the returned tree (e.g.
    `sharding.param_shardings(abstract_params(config), mesh)`); leaves are then restored directly
    onto the devices, each host reading only its shards. Without it leaves come back as jax
    arrays on the default device.
  """
  root = checkpoint_root(path)
  if config is None:
    config = load_model_config(root)
  stored = checkpoint_shapes(path)
  expected = expected_shapes(config, sorted({p[0] for p in stored}))
  for p, s in stored.items():
    if p not in expected:
      raise CheckpointError(f"{_params_dir(path)}: parameter {path_str(p)} is not part of the "
                            f"model configuration")
    if tuple(s.shape) != expected[p]:
      raise CheckpointError(f"{_params_dir(path)}: parameter {path_str(p)} has shape "
                            f"{tuple(s.shape)}, the configuration expects {expected[p]}")
  dtype = np.dtype(jax.numpy.dtype(config.param_dtype))
  flat_shardings = flatten(shardings) if shardings is not None else {}
  target = {}
  for p, s in stored.items():
    sharding = (_sharding_for(flat_shardings, p, config.scan_layers) if shardings is not None
                else jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    target[p] = jax.ShapeDtypeStruct(s.shape, dtype, sharding=sharding)
  item = unflatten(target)
  with ocp.PyTreeCheckpointer() as checkpointer:
    restored = checkpointer.restore(
        _params_dir(path), args=ocp.args.PyTreeRestore(
            item={"params": item},
            restore_args={"params": ocp.checkpoint_utils.construct_restore_args(item)}))
  params = restored["params"]
  if not config.scan_layers:
    params = stacking.unstack_layers(params)
    if shardings is not None:
      flat = flatten(params)
      missing = [p for p in flat if p not in flat_shardings]
      if missing:
        raise CheckpointError(f"no sharding given for parameter {path_str(missing[0])}")
      params = unflatten({p: jax.device_put(x, flat_shardings[p]) for p, x in flat.items()})
  return params
