"""From a training config to what a compiled step is built on: the device mesh, which parts of
the model are trained, and the abstract (shape-only) global batches.

The trainer and the planner (`python -m qwen_audio_jax.plan`) share these, so a plan compiles
exactly the program a run would.
"""

from typing import Any, Dict, Tuple

import jax
import ml_collections
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh

from qwen_audio_jax import sharding
from qwen_audio_jax.audio import lengths
from qwen_audio_jax.data import batch_spec
from qwen_audio_jax.training import flops, validation


def build_mesh(config: ml_collections.ConfigDict, devices=None) -> Mesh:
  """The (data, fsdp, tensor) mesh over `devices` (default: all of them); with DCN sizes > 1 a
  hybrid mesh across slices."""
  m = config.mesh
  devices = list(jax.devices() if devices is None else devices)
  dcn = (m.dcn_data, m.dcn_fsdp, 1)
  if dcn == (1, 1, 1):
    return sharding.make_mesh((m.data, m.fsdp, m.tensor), devices)
  per_slice = len(devices) // int(np.prod(dcn))
  ici = [m.data, m.fsdp, m.tensor]
  if -1 in ici:
    known = int(np.prod([s for s in ici if s != -1]))
    ici[ici.index(-1)] = per_slice // known
  devices = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices)
  return Mesh(devices, sharding.MESH_AXES)


def trained_parts(config: ml_collections.ConfigDict, model_config) -> flops.TrainedParts:
  paths = validation.trained_paths(config, validation.param_paths(model_config))
  audio = [p for p in paths if not p.startswith("llm/")]
  return flops.TrainedParts(
      audio=bool(audio),
      encoder_body=any(p.startswith("audio_encoder/") and "/proj/" not in p for p in audio),
      llm=any(p.startswith("llm/") for p in paths))


def batch_shardings(mesh: Mesh, spec: Dict[str, Tuple[Tuple[int, ...], Any]]):
  return {k: sharding.batch_sharding(mesh, len(shape)) for k, (shape, _) in spec.items()}


def abstract_batch(data_config, mesh: Mesh, text_length: int,
                   audio_samples: int = lengths.N_SAMPLES):
  """ShapeDtypeStructs of a global batch of one (text bucket, audio bucket) pair (default: the
  whole 30 s window, the largest audio bucket)."""
  spec = batch_spec(data_config.batch_size, text_length, max_clips=data_config.max_clips_per_row,
                    features=data_config.features, n_mels=data_config.n_mels,
                    audio_samples=audio_samples)
  shardings = batch_shardings(mesh, spec)
  return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=shardings[k])
          for k, (shape, dtype) in spec.items()}
