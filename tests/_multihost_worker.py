"""One process of the 2-process training test (tests/test_multihost.py): 4 CPU devices of its
own, joined to the other process through jax.distributed on localhost.

    python tests/_multihost_worker.py PROCESS_ID NUM_PROCESSES PORT MANIFEST CACHE WORKDIR \
        STOP_AT_STEP OUT_JSON
"""

import json
import os
import sys

process_id, num_processes, port = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
manifest, cache, workdir, stop_at_step, out_json = sys.argv[4:9]
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402  (after the flags above)

jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=num_processes,
                           process_id=process_id)

from qwen_audio_jax import train  # noqa: E402

import _train_configs  # noqa: E402

result = train.run(_train_configs.multihost_config(manifest, cache), workdir,
                   stop_at_step=int(stop_at_step))
with open(out_json, "w", encoding="utf-8") as f:
  json.dump({"losses": {str(s): m["loss"] for s, m in result.history.items()},
             "resumed_from": result.resumed_from, "step": result.step,
             "process_count": jax.process_count(), "devices": jax.device_count()}, f)
