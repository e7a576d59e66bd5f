"""An analytic estimate for GPUs, which have no deviceless compiler.

Parameters and optimizer state per GPU are exact: the train state's shardings are resolved on an
abstract mesh of N devices with the project's logical-axis rules. Activations are estimated with
the per-layer formula of Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large
Transformer Models", arXiv:2205.05198, section 4.1): 34·s·b·h bytes per transformer layer in
16-bit activations without recomputation, (10 + 24/t)·s·b·h with t-way tensor parallelism, and
2·s·b·h with full recomputation; the 5·a·s²·b attention-score term is dropped because the GPU
path uses fused (cuDNN flash) attention. The step time assumes an MFU the user states
(`--assumed_mfu`). Everything here is labelled an estimate.
"""

import dataclasses
from typing import Any, Dict

import ml_collections
from jax.sharding import AbstractMesh

from qwen_audio_jax import sharding
from qwen_audio_jax.audio import lengths
from qwen_audio_jax.plan import hardware
from qwen_audio_jax.plan.planner import abstract_train_state, per_device_bytes
from qwen_audio_jax.training import flops, initialization, layout, validation


@dataclasses.dataclass
class GpuEstimate:
  gpu: str
  devices: int
  mesh: Dict[str, int]
  remat_policy: str
  grad_accum_steps: int
  params_bytes: int
  opt_state_bytes: int
  activation_bytes: int
  hbm_bytes: int
  flops_per_device: float
  assumed_mfu: float
  peak_flops: float

  @property
  def total_bytes(self) -> int:
    # Adam keeps two moments per trained parameter, so the trained parameters' gradients take
    # half the optimizer state again.
    return (self.params_bytes + self.opt_state_bytes + self.opt_state_bytes // 2
            + self.activation_bytes)

  @property
  def fits(self) -> bool:
    return self.total_bytes <= self.hbm_bytes

  @property
  def step_seconds(self) -> float:
    return self.flops_per_device / (self.peak_flops * self.assumed_mfu)

  def as_dict(self) -> Dict[str, Any]:
    out = dataclasses.asdict(self)
    out.update(total_bytes=self.total_bytes, fits=self.fits, step_seconds=self.step_seconds,
               estimate=True)
    return out


def _layer_bytes(tokens: float, width: int, tensor: int, remat: str) -> float:
  if remat == "full":
    return 2 * tokens * width
  if remat in ("none", "minimal"):
    return (10 + 24 / tensor) * tokens * width
  return (2 + 8 / tensor) * tokens * width  # dots policies keep the matmul outputs only


def estimate_gpu(config: ml_collections.ConfigDict, gpus: str, *,
                 assumed_mfu: float = 0.4) -> GpuEstimate:
  gpu, count = hardware.parse_gpu(gpus)
  validation.validate(config, device_count=count, process_count=1, check_paths=False)
  model_config = initialization.model_config_from(config)
  shape = validation.mesh_shape(config, count)
  mesh = AbstractMesh(tuple(shape[a] for a in sharding.MESH_AXES), sharding.MESH_AXES)
  abstract_state = abstract_train_state(config, model_config, mesh)
  rows = config.data.batch_size / (shape["data"] * shape["fsdp"]) / config.optim.grad_accum_steps
  text = max(config.data.text_buckets)
  e, l = model_config.encoder, model_config.llm
  remat = model_config.remat_policy
  activations = l.depth * _layer_bytes(rows * text, l.width, shape["tensor"], remat)
  frames = rows * config.data.max_clips_per_row * lengths.N_ENCODER_FRAMES
  activations += e.depth * _layer_bytes(frames, e.width, shape["tensor"], remat)
  chunk = config.loss.chunk_length or text
  activations += rows * chunk * l.vocab_size * 4 * 2  # float32 logits and their gradient
  parts = layout.trained_parts(config, model_config)
  step = flops.step_flops(model_config, rows=config.data.batch_size, text_length=text,
                          audio_slots=config.data.max_clips_per_row, trained=parts)["total"]
  return GpuEstimate(
      gpu=gpu.name, devices=count, mesh=dict(shape), remat_policy=remat,
      grad_accum_steps=int(config.optim.grad_accum_steps),
      params_bytes=per_device_bytes(abstract_state.params),
      opt_state_bytes=per_device_bytes(abstract_state.opt_state),
      activation_bytes=int(activations), hbm_bytes=gpu.hbm_bytes,
      flops_per_device=step / count, assumed_mfu=assumed_mfu, peak_flops=gpu.peak_flops)
