"""`--search`: which layouts of a run fit a slice, best predicted throughput first.

The space: mesh layouts (fsdp x tensor inside a slice, data taking the rest), rematerialisation
policies and gradient accumulation. More remat or more micro-batches only ever cost time, so for
each mesh the search walks from the cheapest setting (no remat, no accumulation) up and stops at
the first that fits; meshes are tried with the least tensor parallelism first (it adds
collectives on every layer), and the whole search stops after `budget` compilations.
"""

import itertools
from typing import Callable, Iterator, List, Optional, Tuple

import ml_collections

from qwen_audio_jax.plan import hardware, planner

REMAT_LADDER = ("none", "dots_with_no_batch_dims", "full")
ACCUMULATION_LADDER = (1, 2, 4, 8, 16)
TENSOR_SIZES = (1, 2, 4, 8)


def mesh_layouts(devices_per_slice: int, heads: int) -> List[Tuple[int, int, int]]:
  """(data, fsdp, tensor) layouts of a slice: tensor divides the LLM's heads; fsdp and tensor
  are powers of two; least tensor parallelism first, then the most FSDP."""
  out = []
  for tensor in TENSOR_SIZES:
    if tensor > devices_per_slice or heads % tensor or devices_per_slice % tensor:
      continue
    fsdp = devices_per_slice // tensor
    while fsdp >= 1:
      if devices_per_slice % (fsdp * tensor) == 0:
        out.append((devices_per_slice // (fsdp * tensor), fsdp, tensor))
      fsdp //= 2
  return out


def configured(config: ml_collections.ConfigDict, layout: Tuple[int, int, int], remat: str,
               accumulation: int) -> ml_collections.ConfigDict:
  c = config.copy_and_resolve_references()
  with c.unlocked():
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = layout
    c.model.overrides.remat_policy = remat
    c.optim.grad_accum_steps = accumulation
  return c


def _candidates(config, devices_per_slice: int, heads: int
                ) -> Iterator[Tuple[Tuple[int, int, int], List[Tuple[str, int]]]]:
  rows_per_shard = lambda layout: config.data.batch_size // (layout[0] * layout[1])  # noqa: E731
  for layout in mesh_layouts(devices_per_slice, heads):
    rows = rows_per_shard(layout)
    if rows < 1 or config.data.batch_size % (layout[0] * layout[1]):
      continue
    ladder = [(remat, k) for k, remat in itertools.product(ACCUMULATION_LADDER, REMAT_LADDER)
              if rows % k == 0]
    yield layout, ladder


def search(config: ml_collections.ConfigDict, topology: str, *, num_slices: int = 1,
           step: str = "train", budget: int = 12,
           progress: Optional[Callable[[str], None]] = None) -> List[planner.StepPlan]:
  """Compiles candidate configurations of `config` on `topology`; returns every plan made,
  the ones that fit first, by predicted tokens/s."""
  from qwen_audio_jax.training import initialization  # pylint: disable=g-import-not-at-top
  tpu = hardware.parse_tpu(topology)
  devices = planner.virtual_tpu_devices(tpu, num_slices)
  heads = initialization.model_config_from(config).llm.heads
  plans: List[planner.StepPlan] = []
  for layout, ladder in _candidates(config, tpu.chips, heads):
    for remat, accumulation in ladder:
      if len(plans) >= budget:
        return rank(plans)
      candidate = configured(config, layout, remat, accumulation)
      try:
        plan = planner.plan_step(candidate, devices, topology=tpu.name,
                                 hbm_bytes=tpu.generation.hbm_bytes,
                                 peak_flops=tpu.generation.peak_flops,
                                 hosts=tpu.hosts * num_slices, num_slices=num_slices, step=step,
                                 hbm_bandwidth=tpu.generation.hbm_bandwidth)
      except Exception as e:  # a layout the config refuses: say so and go on
        if progress:
          progress(f"  mesh {layout} remat {remat} accumulation {accumulation}: skipped ({e})")
        break
      plans.append(plan)
      if progress:
        progress(f"  mesh {layout} remat {remat} accumulation {accumulation}: "
                 f"{plan.total_bytes / 2**30:,.1f} GiB, {'fits' if plan.fits else 'too big'}")
      if plan.fits:
        break
  return rank(plans)


def rank(plans: List[planner.StepPlan]) -> List[planner.StepPlan]:
  return sorted(plans, key=lambda p: (not p.fits, -(p.tokens_per_second or 0.0), p.total_bytes))


def format_table(plans: List[planner.StepPlan]) -> str:
  header = ("| fits | mesh (data x fsdp x tensor) | remat | accum | GiB per device | "
            "step s (predicted) | tokens/s | MFU |")
  lines = [header, "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  for p in plans:
    mesh = " x ".join(str(p.mesh[a]) for a in ("data", "fsdp", "tensor"))
    step = f"{p.predicted_seconds:.2f}" if p.predicted_seconds else "-"
    tokens = f"{p.tokens_per_second:,.0f}" if p.tokens_per_second else "-"
    mfu = f"{100 * p.mfu:.1f}%" if p.mfu else "-"
    lines.append(f"| {'yes' if p.fits else 'no'} | {mesh} | {p.remat_policy} | "
                 f"{p.grad_accum_steps} | {p.total_bytes / 2**30:,.1f} / "
                 f"{p.hbm_bytes / 2**30:,.0f} | {step} | {tokens} | {mfu} |")
  return "\n".join(lines)
