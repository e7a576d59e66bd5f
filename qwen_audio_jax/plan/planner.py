"""Ahead-of-time plans: the real train step compiled for a TPU slice that is not there.

libtpu can describe any Cloud TPU topology without the hardware
(`jax.experimental.topologies.get_topology_desc`); its devices carry no memory, but XLA's TPU
compiler lowers and compiles for them exactly as it would on the slice, and the compiled program
reports its per-device memory (`memory_analysis`) and cost (`cost_analysis`: FLOPs, bytes,
XLA's own estimate of the optimal run time). The planner builds the step the trainer builds --
same model config, optimizer, train-state shardings, batch shapes, mesh -- so what it reports is
what `python -m qwen_audio_jax.train` would compile on that slice.

Reported per device: parameters and optimizer state (from the shardings), XLA's argument /
output / temporary sizes, the total against the chip's HBM; FLOPs per step from XLA and from
the analytic formula of training/flops.py side by side; the predicted step time (XLA's
estimate) and the MFU it implies at the chip's stated peak. XLA counts a loop's body once (the
scanned layers, gradient accumulation, the chunked loss), so its FLOPs, bytes and time are
multiplied by the loops' trip counts read from the compiled program (plan/hlo_loops.py).
"""

import dataclasses
import hashlib
import math
import os
import re
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from qwen_audio_jax import errors, sharding
from qwen_audio_jax.plan import hardware, hlo_loops
from qwen_audio_jax.training import flops, initialization, layout, validation
from qwen_audio_jax.training import optimizer as optimizer_lib
from qwen_audio_jax.training import step as step_lib


class PlannerError(errors.UserError, RuntimeError):
  """A plan cannot be made (libtpu missing, a config that does not fit the topology ...)."""


def virtual_tpu_devices(tpu: hardware.TpuSlice, num_slices: int = 1) -> List[Any]:
  """The devices of `num_slices` slices of type `tpu`, described by libtpu (no TPU needed)."""
  # Several planners (or test workers) may run at once; none of them opens a real TPU.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  try:
    description = topologies.get_topology_desc(
        platform="tpu", topology_name=tpu.topology_name,
        chip_config_name=tpu.generation.chip_config,
        chips_per_host_bounds=tpu.chips_per_host_bounds, num_slices=num_slices)
  except Exception as e:  # libtpu missing or refusing the topology
    message = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise PlannerError(
        f"--topology={tpu.name}: libtpu could not describe {tpu.topology_name} x {num_slices} "
        f"slice(s) ({message}). The planner needs libtpu matching the installed jax: "
        f"pip install 'qwen_audio_jax[tpu]'") from e
  devices = list(description.devices)
  if len(devices) != tpu.chips * num_slices:
    raise PlannerError(f"--topology={tpu.name}: libtpu describes {len(devices)} devices, "
                       f"expected {tpu.chips * num_slices} (one per chip)")
  return devices


def per_device_bytes(abstract_tree) -> int:
  """Bytes one device holds of a tree of ShapeDtypeStructs with NamedShardings (the largest
  shard: uneven splits put the remainder on some devices)."""
  total = 0
  for leaf in jax.tree.leaves(abstract_tree):
    shape = leaf.shape
    leaf_sharding = getattr(leaf, "sharding", None)
    if leaf_sharding is not None and shape:
      shape = leaf_sharding.shard_shape(shape)
    total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
  return total


@dataclasses.dataclass
class StepPlan:
  """One compiled configuration of a step on one topology (per-device figures)."""
  topology: str
  num_slices: int
  devices: int
  hosts: int
  mesh: Dict[str, int]
  step: str
  remat_policy: str
  grad_accum_steps: int
  global_batch: int
  text_length: int
  params_bytes: int
  opt_state_bytes: int
  argument_bytes: int
  output_bytes: int
  alias_bytes: int
  temp_bytes: int
  code_bytes: int
  hbm_bytes: int
  xla_flops: float  # XLA's cost analysis: each loop body counted once
  analytic_flops: float
  bytes_accessed: float  # XLA's, each loop body once
  # XLA's FLOPs with the products its loops repeat added (plan/hlo_loops.py), over XLA's: the
  # factor its FLOPs, bytes and time are scaled by for the loops' trip counts.
  loop_scale: float
  loop_trip_counts: Tuple[int, ...]
  unknown_loops: int  # loops whose trip count could not be read: counted once
  predicted_seconds: Optional[float]
  prediction: str  # 'xla' (XLA's optimal_seconds), 'roofline' or 'none'
  peak_flops: float
  compile_seconds: float

  @property
  def total_bytes(self) -> int:
    """Live at once: inputs, outputs not aliased to (donated) inputs, temporaries, code."""
    return (self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes
            + self.code_bytes)

  @property
  def fits(self) -> bool:
    return self.total_bytes <= self.hbm_bytes

  @property
  def executed_xla_flops(self) -> float:
    """XLA's FLOPs with every loop body counted as often as it runs."""
    return self.xla_flops * self.loop_scale

  @property
  def mfu(self) -> Optional[float]:
    if not self.predicted_seconds or not self.peak_flops:
      return None
    return self.analytic_flops / (self.predicted_seconds * self.peak_flops)

  @property
  def tokens_per_second(self) -> Optional[float]:
    if not self.predicted_seconds:
      return None
    return self.global_batch * self.text_length / self.predicted_seconds

  def as_dict(self) -> Dict[str, Any]:
    out = dataclasses.asdict(self)
    out.update(total_bytes=self.total_bytes, fits=self.fits, mfu=self.mfu,
               executed_xla_flops=self.executed_xla_flops,
               tokens_per_second=self.tokens_per_second)
    return out


def _mesh(config: ml_collections.ConfigDict, devices: Sequence[Any]):
  return layout.build_mesh(config, devices)


def _cost(compiled) -> Dict[str, float]:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per program
    cost = cost[0] if cost else {}
  return dict(cost or {})


STEPS = ("train", "eval")


_EXHAUSTED = re.compile(r"RESOURCE_EXHAUSTED.*?required for [^(]*\(([\d.]+)([KMGT]?)\)")


def _exhausted_bytes(message: str) -> Optional[float]:
  """Bytes of temporaries a refused program needed, from XLA's out-of-memory message."""
  match = _EXHAUSTED.search(message.replace("\n", " "))
  if not match:
    return None
  scale = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[match.group(2)]
  return float(match.group(1)) * scale


def abstract_train_state(config, model_config, mesh):
  """The train state's ShapeDtypeStructs with their shardings, as train.py builds them."""
  abstract_params = initialization.abstract_params(model_config, mesh)
  abstract_state = jax.eval_shape(
      lambda p, r: step_lib.init_train_state(config, p, r), abstract_params,
      jax.ShapeDtypeStruct((), jax.random.key(0).dtype))
  # eval_shape's outputs carry no shardings: the parameters' come from the logical rules.
  abstract_state = abstract_state.replace(params=abstract_params)
  state_shardings = step_lib.train_state_shardings(abstract_state, mesh)
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      abstract_state, state_shardings)


@dataclasses.dataclass(frozen=True)
class _Analysis:
  """What a plan reads from one compile: memory fields (None: XLA refused the program, which
  needed `needed_bytes` of temporaries), cost analysis, and how long the compile took."""
  memory: Optional[Dict[str, int]]
  cost: Dict[str, float]
  needed_bytes: float
  seconds: float
  loops: Optional[hlo_loops.LoopCounts] = None


_MEMORY_FIELDS = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
                  "temp_size_in_bytes", "generated_code_size_in_bytes")
# Analyses by (lowered program, devices): the same program for the same devices compiles to the
# same executable, so a program planned again in this process (a search candidate equal to the
# plan made just before it, as in notebooks/04, or the same plan asked twice) is not compiled
# again. Only the figures are kept, never the executables.
_ANALYSES: Dict[Tuple[str, Tuple[Any, ...]], _Analysis] = {}


def _compile(config, model_config, mesh, abstract_state, step: str, text_length: int
             ) -> _Analysis:
  """Lowers the step as train.py builds it, and compiles it unless this process already did."""
  state_shardings = jax.tree.map(lambda s: s.sharding, abstract_state)
  optimizer = optimizer_lib.make_optimizer(config, abstract_state.params)
  replicated = NamedSharding(mesh, PartitionSpec())
  if step == "train":
    batch = layout.abstract_batch(config.data, mesh, text_length)
    jitted = jax.jit(step_lib.make_train_step(config, model_config, optimizer),
                     in_shardings=(state_shardings, None),
                     out_shardings=(state_shardings, replicated), donate_argnums=0)
    args = (abstract_state, batch)
  else:
    batch = layout.abstract_batch(config.eval_data, mesh, text_length)
    jitted = jax.jit(step_lib.make_eval_step(config, model_config),
                     in_shardings=(state_shardings.params, None), out_shardings=replicated)
    args = (abstract_state.params, batch)
  with sharding.activation_sharding(mesh):
    lowered = jitted.lower(*args)
  key = (hashlib.sha256(lowered.as_text().encode()).hexdigest(),
         tuple((d.platform, d.device_kind, d.id, getattr(d, "slice_index", None),
                tuple(getattr(d, "coords", ()))) for d in mesh.devices.flat))
  if key not in _ANALYSES:
    start = time.time()
    try:
      compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
      needed = _exhausted_bytes(str(e))
      if needed is None:
        raise
      # XLA's TPU compiler refuses programs whose temporaries exceed the chip's HBM: the plan
      # is still an answer (does not fit, and by how much).
      _ANALYSES[key] = _Analysis(None, {}, needed, time.time() - start)
    else:
      memory = compiled.memory_analysis()
      _ANALYSES[key] = _Analysis(
          {f: int(getattr(memory, f, 0)) for f in _MEMORY_FIELDS} if memory is not None
          else {}, _cost(compiled), 0.0, time.time() - start,
          hlo_loops.count(compiled.as_text()))
  return _ANALYSES[key]


def predict_seconds(cost: Dict[str, float], peak_flops: float, hbm_bandwidth: float,
                    loop_scale: float = 1.0) -> Tuple[Optional[float], str]:
  """XLA's own estimate when it gives one; else the roofline bound of its FLOPs and bytes
  (compute at the chip's peak, memory traffic at its HBM bandwidth; collectives not counted).
  Both count each loop body once, so both are multiplied by `loop_scale` (plan/hlo_loops.py)."""
  optimal = cost.get("optimal_seconds", -1.0)
  if optimal and optimal > 0:
    return float(optimal) * loop_scale, "xla"
  if cost.get("flops") and peak_flops and hbm_bandwidth:
    return loop_scale * max(cost["flops"] / peak_flops,
                            cost.get("bytes accessed", 0.0) / hbm_bandwidth), "roofline"
  return None, "none"


def plan_step(config: ml_collections.ConfigDict, devices: Sequence[Any], *, topology: str,
              hbm_bytes: int, peak_flops: float, hosts: int, num_slices: int = 1,
              step: str = "train", hbm_bandwidth: float = 0.0) -> StepPlan:
  """Compiles the train (or eval) step of `config` for `devices`, at the largest text bucket
  (the worst case for memory), and reads its memory and cost analyses."""
  if step not in STEPS:
    raise PlannerError(f"--step={step!r}: expected one of {STEPS}")
  validation.validate(config, device_count=len(devices), process_count=hosts,
                      check_paths=False)
  model_config = initialization.model_config_from(config)
  mesh = _mesh(config, devices)
  data = config.data if step == "train" else config.eval_data
  text_length = max(data.text_buckets)
  abstract_state = abstract_train_state(config, model_config, mesh)
  analysis = _compile(config, model_config, mesh, abstract_state, step, text_length)
  memory, cost = analysis.memory, analysis.cost
  parts = _trained_parts(config, model_config)
  if step == "eval":
    parts = flops.TrainedParts(audio=False, encoder_body=False, llm=False)
  analytic = flops.step_flops(model_config, rows=data.batch_size, text_length=text_length,
                              audio_slots=data.max_clips_per_row,
                              trained=parts)["total"] / len(devices)
  loops = analysis.loops or hlo_loops.LoopCounts(0.0, 0.0, (), 0)
  loop_scale = loops.scale_of(float(cost.get("flops", 0.0)))
  predicted, prediction = predict_seconds(cost, peak_flops, hbm_bandwidth, loop_scale)
  return StepPlan(
      topology=topology, num_slices=num_slices, devices=len(devices), hosts=hosts,
      mesh={k: int(v) for k, v in mesh.shape.items()}, step=step,
      remat_policy=model_config.remat_policy,
      grad_accum_steps=int(config.optim.grad_accum_steps) if step == "train" else 1,
      global_batch=int(data.batch_size), text_length=int(text_length),
      params_bytes=per_device_bytes(abstract_state.params),
      opt_state_bytes=per_device_bytes(abstract_state.opt_state) if step == "train" else 0,
      argument_bytes=memory.get("argument_size_in_bytes", 0) if memory else 0,
      output_bytes=memory.get("output_size_in_bytes", 0) if memory else 0,
      alias_bytes=memory.get("alias_size_in_bytes", 0) if memory else 0,
      temp_bytes=memory.get("temp_size_in_bytes", 0) if memory is not None
      else int(analysis.needed_bytes),
      code_bytes=memory.get("generated_code_size_in_bytes", 0) if memory else 0,
      hbm_bytes=int(hbm_bytes), xla_flops=float(cost.get("flops", 0.0)),
      analytic_flops=float(analytic), bytes_accessed=float(cost.get("bytes accessed", 0.0)),
      loop_scale=float(loop_scale), loop_trip_counts=tuple(loops.loops),
      unknown_loops=int(loops.unknown_loops),
      predicted_seconds=predicted, prediction=prediction,
      peak_flops=float(peak_flops), compile_seconds=analysis.seconds)


def _trained_parts(config, model_config) -> flops.TrainedParts:
  return layout.trained_parts(config, model_config)


def plan_tpu(config: ml_collections.ConfigDict, topology: str, *, num_slices: int = 1,
             step: str = "train") -> StepPlan:
  """`plan_step` on `num_slices` virtual slices named like `v5p-64`."""
  tpu = hardware.parse_tpu(topology)
  devices = virtual_tpu_devices(tpu, num_slices)
  return plan_step(config, devices, topology=tpu.name, hbm_bytes=tpu.generation.hbm_bytes,
                   peak_flops=tpu.generation.peak_flops, hosts=tpu.hosts * num_slices,
                   num_slices=num_slices, step=step,
                   hbm_bandwidth=tpu.generation.hbm_bandwidth)


def plan_local(config: ml_collections.ConfigDict, *, step: str = "train") -> StepPlan:
  """`plan_step` on this process's own devices (e.g. CPU): the same numbers the trainer logs."""
  devices = jax.devices()
  peak = flops.peak_flops(devices[0].device_kind) or 0.0
  stats = devices[0].memory_stats() or {}
  hbm = int(stats.get("bytes_limit", 0)) or _host_memory_bytes()
  return plan_step(config, devices, topology=f"local {devices[0].platform}", hbm_bytes=hbm,
                   peak_flops=peak, hosts=jax.process_count(), step=step)


def _host_memory_bytes() -> int:
  try:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (ValueError, OSError, AttributeError):
    return 0
