"""Accelerators a run can be planned for: Cloud TPU slices by the names users write, and GPUs.

A TPU slice name is `<generation>-<count>` as Cloud TPU names accelerator types
(`gcloud compute tpus accelerator-types list`): for v4 and v5p the count is TensorCores (two per
chip, fused into one JAX device by megacore), for v5e and v6e it is chips. Per-chip figures are
Google Cloud's published specifications:
  v4   https://cloud.google.com/tpu/docs/v4   32 GiB HBM at 1,228 GB/s, 275 TFLOP/s bf16, 3D torus,
                                              4 chips per host
  v5e  https://cloud.google.com/tpu/docs/v5e  16 GiB HBM at 819 GB/s, 197 TFLOP/s bf16, 2D torus,
                                              4 chips per host (8 on the single-host v5e-8)
  v5p  https://cloud.google.com/tpu/docs/v5p  95 GiB HBM at 2,765 GB/s, 459 TFLOP/s bf16, 3D torus,
                                              4 chips per host
  v6e  https://cloud.google.com/tpu/docs/v6e  32 GiB HBM at 1,640 GB/s, 918 TFLOP/s bf16, 2D torus,
                                              4 chips per host (8 on the single-host v6e-8)
GPUs (vendor data sheets, dense bf16 without sparsity): H100 SXM 80 GB / 989 TFLOP/s,
H200 141 GB / 989 TFLOP/s, A100 SXM 80 GB / 312 TFLOP/s (40 GB variant: `a100-40gb`).
"""

import dataclasses
import math
import re
from typing import Dict, Tuple

from qwen_audio_jax.errors import FlagError

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class TpuGeneration:
  name: str  # as in slice names: v4, v5e, v5p, v6e
  libtpu_name: str  # as libtpu's topology strings spell it
  count_is_cores: bool  # v4 / v5p slice names count TensorCores (2 per chip)
  dims: int  # 3 (torus of a x b x c chips) or 2
  hbm_bytes: int
  peak_flops: float  # dense bf16 per chip
  hbm_bandwidth: float  # bytes/s per chip
  chips_per_host: int
  single_host_chips: int = 0  # a slice of this many chips is one host of that many
  chip_config: str = "default"  # libtpu's chip configuration: one JAX device per chip


TPU_GENERATIONS: Dict[str, TpuGeneration] = {
    "v4": TpuGeneration("v4", "v4", True, 3, 32 * GiB, 275e12, 1228e9, 4, chip_config="megacore"),
    "v5e": TpuGeneration("v5e", "v5e", False, 2, 16 * GiB, 197e12, 819e9, 4, single_host_chips=8),
    "v5p": TpuGeneration("v5p", "v5p", True, 3, 95 * GiB, 459e12, 2765e9, 4),
    "v6e": TpuGeneration("v6e", "v6e", False, 2, 32 * GiB, 918e12, 1640e9, 4,
                         single_host_chips=8),
}
# Other spellings users type for the same generations.
ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "trillium": "v6e", "v6": "v6e"}


@dataclasses.dataclass(frozen=True)
class TpuSlice:
  """One slice type: what `get_topology_desc` is asked for, and its per-chip figures."""
  name: str  # canonical, e.g. v5p-64
  generation: TpuGeneration
  chips: int
  shape: Tuple[int, ...]  # chips along each torus axis

  @property
  def topology_name(self) -> str:
    return f"{self.generation.libtpu_name}:{'x'.join(map(str, self.shape))}"

  @property
  def chips_per_host_bounds(self) -> Tuple[int, int, int]:
    g = self.generation
    if g.single_host_chips and self.chips == g.single_host_chips:
      return (2, 4, 1)
    if self.chips < g.chips_per_host:
      return tuple(self.shape) + (1,) * (3 - len(self.shape))
    return (2, 2, 1)

  @property
  def hosts(self) -> int:
    bounds = self.chips_per_host_bounds
    return max(1, self.chips // math.prod(bounds))


def _torus_shape(chips: int, dims: int) -> Tuple[int, ...]:
  """The standard slice shape (2x2x1, 2x2x2, 2x2x4, 2x4x4, 4x4x4 ...; 2x2, 2x4, 4x4, 4x8 ...):
  powers of two, each doubling on the smallest axis, the last one on ties."""
  if chips < 1 or chips & (chips - 1):
    raise ValueError(f"{chips} chips: Cloud TPU slices have a power-of-two number of chips")
  if dims == 3 and chips == 4:
    return (2, 2, 1)
  shape = [1] * dims
  for _ in range(int(math.log2(chips))):
    smallest = min(shape)
    i = max(k for k in range(dims) if shape[k] == smallest)
    shape[i] *= 2
  return tuple(shape)


def parse_tpu(name: str) -> TpuSlice:
  """'v5p-64' -> TpuSlice(v5p, 32 chips, (2, 4, 4)); unknown names list the known ones."""
  match = re.fullmatch(r"(v\d+[a-z]*|trillium)-(\d+)", name.strip().lower())
  generation = None
  if match:
    gen = ALIASES.get(match.group(1), match.group(1))
    generation = TPU_GENERATIONS.get(gen)
  if generation is None:
    raise FlagError(
        f"--topology={name!r}: unknown TPU slice; expected <generation>-<count> with a "
        f"generation of {sorted(TPU_GENERATIONS)} (aliases {sorted(ALIASES)}), e.g. v4-32, "
        f"v5e-16, v5p-64, v6e-8")
  count = int(match.group(2))
  if generation.count_is_cores:
    if count % 2:
      raise FlagError(f"--topology={name!r}: {generation.name} slice names count TensorCores "
                       f"(2 per chip), so the count must be even")
    chips = count // 2
  else:
    chips = count
  try:
    shape = _torus_shape(chips, generation.dims)
  except ValueError as e:
    raise FlagError(f"--topology={name!r}: {e}") from e
  return TpuSlice(f"{generation.name}-{count}", generation, chips, shape)


@dataclasses.dataclass(frozen=True)
class Gpu:
  name: str
  hbm_bytes: int
  peak_flops: float  # dense bf16


GPUS: Dict[str, Gpu] = {
    "h100": Gpu("H100 SXM 80GB", 80 * 10**9, 989e12),
    "h200": Gpu("H200 141GB", 141 * 10**9, 989e12),
    "a100": Gpu("A100 SXM 80GB", 80 * 10**9, 312e12),
    "a100-40gb": Gpu("A100 SXM 40GB", 40 * 10**9, 312e12),
}


def parse_gpu(name: str) -> Tuple[Gpu, int]:
  """'h100x64' / 'h100-64' / 'h100:64' -> (H100, 64)."""
  match = re.fullmatch(r"([a-z0-9-]+?)[x:\-*](\d+)", name.strip().lower())
  if not match or match.group(1) not in GPUS:
    raise FlagError(f"--gpus={name!r}: expected <gpu>x<count> with a gpu of {sorted(GPUS)}, "
                     f"e.g. h100x64")
  return GPUS[match.group(1)], int(match.group(2))
