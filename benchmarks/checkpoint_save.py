"""The first checkpoint save of a process: Orbax's replica-parallel array writes against whole ones.

    python benchmarks/checkpoint_save.py [--devices 8] [--arrays 122]

A train state of `--arrays` small float32 arrays (the tiny model's count), replicated over
`--devices` CPU devices, saved by `ocp.StandardCheckpointer` twice per mode, each mode in a fresh
subprocess (Orbax's array handler is process-wide, and the slices it compiles are cached per
process, so only a process's first save shows the cost). Prints each save's seconds and the
ratio of the first saves. The trainer writes whole arrays on CPU hosts and in single-process
runs (`training/checkpointing.replica_parallel_writes`), where replica-parallel writes cut every
replicated array with an eager `lax.slice_in_dim`: one small compile per array shape.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def one_process(mode: str, devices: int, arrays: int) -> None:
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  os.environ["JAX_PLATFORMS"] = "cpu"
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from jax.sharding import Mesh, NamedSharding, PartitionSpec  # pylint: disable=g-import-not-at-top
  mesh = Mesh(np.array(jax.devices()), ("data",))
  replicated = NamedSharding(mesh, PartitionSpec())
  rng = np.random.default_rng(0)
  tree = {f"a{i}": jax.device_put(rng.random((64 + i, 32) if i % 2 else (i + 3,), np.float32),
                                  replicated) for i in range(arrays)}
  ocp.type_handlers.register_type_handler(
      jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=mode == "replica_parallel"),
      override=True)
  seconds = []
  with tempfile.TemporaryDirectory() as root:
    for k in range(2):
      start = time.perf_counter()
      with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(os.path.join(root, str(k)), tree)
      seconds.append(time.perf_counter() - start)
  print(json.dumps(seconds))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--devices", type=int, default=8)
  parser.add_argument("--arrays", type=int, default=122)
  parser.add_argument("--_mode", default="", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args._mode:  # pylint: disable=protected-access
    one_process(args._mode, args.devices, args.arrays)  # pylint: disable=protected-access
    return
  results = {}
  for mode in ("replica_parallel", "whole"):
    out = subprocess.run([sys.executable, __file__, f"--_mode={mode}", f"--devices={args.devices}",
                          f"--arrays={args.arrays}"], check=True, capture_output=True, text=True)
    results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{mode:>16}: first save {results[mode][0]:.2f} s, second {results[mode][1]:.2f} s")
  ratio = results["replica_parallel"][0] / results["whole"][0]
  print(f"first save: whole arrays {ratio:.1f}x faster ({args.arrays} arrays, "
        f"{args.devices} CPU devices)")


if __name__ == "__main__":
  main()
