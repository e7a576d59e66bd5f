"""Joining the processes of a multi-host run into one JAX runtime.

`jax.distributed.initialize()` must run before anything touches a backend. It finds the
coordinator on its own on Cloud TPU VMs, under Slurm and under Open MPI, or through
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID; on a lone machine there is
nothing to join and calling it would fail, so 'auto' only calls it when the environment names
more than one process.
"""

import os
from typing import Mapping, Optional

MODES = ("auto", "true", "false")


def launched_processes(env: Mapping[str, str]) -> Optional[str]:
  """Why the environment looks like a multi-process launch (None: a single process)."""

  def more_than_one(name: str) -> bool:
    try:
      return int(env.get(name, "1")) > 1
    except ValueError:
      return False

  if env.get("JAX_COORDINATOR_ADDRESS"):
    return "JAX_COORDINATOR_ADDRESS is set"
  for name in ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "JAX_NUM_PROCESSES"):
    if more_than_one(name):
      return f"{name}={env[name]}"
  # Cloud TPU VMs list every host of the slice; MEGASCALE_* names a multislice job.
  if "," in env.get("TPU_WORKER_HOSTNAMES", ""):
    return "TPU_WORKER_HOSTNAMES lists several hosts"
  if env.get("MEGASCALE_COORDINATOR_ADDRESS"):
    return "MEGASCALE_COORDINATOR_ADDRESS is set"
  return None


def initialize(mode: str, env: Optional[Mapping[str, str]] = None) -> Optional[str]:
  """Calls jax.distributed.initialize() per `mode`; returns why it did (None: it did not)."""
  if mode not in MODES:
    raise ValueError(f"--distributed={mode!r}: expected one of {MODES}")
  if mode == "false":
    return None
  reason = "--distributed=true" if mode == "true" else launched_processes(
      os.environ if env is None else env)
  if reason is None:
    return None
  import jax  # pylint: disable=import-outside-toplevel

  jax.distributed.initialize()
  return reason


def barrier(name: str, timeout_minutes: int = 60) -> None:
  """Waits until every process reaches `name` (the coordination service's barrier: no device
  work). Used after ahead-of-time compilation, whose time differs between hosts, so that the
  first collective of the run does not wait out a collective library's set-up timeout (Gloo's
  on CPU is 30 s)."""
  import jax  # pylint: disable=import-outside-toplevel
  if jax.process_count() == 1:
    return
  from jax._src import distributed  # pylint: disable=import-outside-toplevel
  distributed.global_state.client.wait_at_barrier(f"qwen_audio_jax/{name}",
                                                  timeout_minutes * 60 * 1000)
