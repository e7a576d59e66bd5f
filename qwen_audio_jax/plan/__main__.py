r"""Plan a run before paying for it: what fits on a slice, and how fast.

    python -m qwen_audio_jax.plan --config=configs/pretrain.py:qwen_audio --topology=v5p-64
    python -m qwen_audio_jax.plan --config=configs/sft.py:qwen_audio --topology=v5e-64 --search
    python -m qwen_audio_jax.plan --config=configs/pretrain.py:qwen_audio --topology=v5p-128 \
        --num_slices=2 --config.mesh.dcn_data=2
    python -m qwen_audio_jax.plan --config=configs/pretrain.py:qwen_audio --gpus=h100x64

TPU plans compile the real step with XLA's TPU compiler against a virtual topology (libtpu, no
TPU: `pip install 'qwen_audio_jax[tpu]'`); GPU plans are analytic estimates. `--topology=local`
plans for this machine's own devices.
"""

import json
import sys
from typing import List

from absl import flags

from qwen_audio_jax import configs, errors
from qwen_audio_jax.plan import gpu_estimate, hardware, planner, search
from qwen_audio_jax.plan.report import format_estimate, format_plan

CONFIG = configs.DEFINE_config_file(
    "config", "Training config file and preset, e.g. configs/pretrain.py:qwen_audio, or a "
    f"packaged config by name ({', '.join(configs.names())}), e.g. sft:qwen_audio; override "
    "keys with --config.<key>=<value>.", lock_config=True)
TOPOLOGY = flags.DEFINE_string(
    "topology", None, "A Cloud TPU slice as users name it (v4-32, v5e-16, v5p-64, v6e-8 ...), "
    "or 'local' for this machine's devices.")
NUM_SLICES = flags.DEFINE_integer("num_slices", 1, "Slices joined over DCN (multislice); set "
                                  "config.mesh.dcn_data / dcn_fsdp to match.")
STEP = flags.DEFINE_enum("step", "train", list(planner.STEPS), "Which step to compile.")
SEARCH = flags.DEFINE_boolean(
    "search", False, "Try mesh layouts (fsdp x tensor), remat policies and gradient "
    "accumulation; print the configurations that fit, best predicted throughput first.")
SEARCH_BUDGET = flags.DEFINE_integer("search_budget", 12, "At most this many compilations.")
GPUS = flags.DEFINE_string("gpus", None, "An analytic estimate for GPUs instead of a TPU "
                           f"compile: <gpu>x<count> with a gpu of {sorted(hardware.GPUS)}.")
ASSUMED_MFU = flags.DEFINE_float("assumed_mfu", 0.4, "MFU assumed by the GPU estimate.")
JSON_OUT = flags.DEFINE_string("json", None, "Also write the plan(s) as JSON to this file "
                               "('-': standard output).")


def _write_json(records: List[dict]) -> None:
  text = json.dumps(records if len(records) > 1 else records[0], indent=2, sort_keys=True)
  if JSON_OUT.value == "-":
    print(text)
  else:
    with open(JSON_OUT.value, "w", encoding="utf-8") as f:
      f.write(text + "\n")


def main(argv):
  if len(argv) > 1:
    raise errors.FlagError(f"unexpected arguments: {argv[1:]}")
  if CONFIG.value is None:
    raise errors.FlagError("--config is required, e.g. --config=configs/pretrain.py:qwen_audio")
  if (TOPOLOGY.value is None) == (GPUS.value is None):
    raise errors.FlagError("pass exactly one of --topology (a TPU slice such as v5p-64, or "
                         "'local') and --gpus (such as h100x64)")
  config = CONFIG.value
  if GPUS.value:
    estimate = gpu_estimate.estimate_gpu(config, GPUS.value, assumed_mfu=ASSUMED_MFU.value)
    print(format_estimate(estimate))
    if JSON_OUT.value:
      _write_json([estimate.as_dict()])
    return 0
  if SEARCH.value:
    results = search.search(config, TOPOLOGY.value, num_slices=NUM_SLICES.value,
                             step=STEP.value, budget=SEARCH_BUDGET.value,
                             progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(search.format_table(results))
    if JSON_OUT.value:
      _write_json([r.as_dict() for r in results])
    return 0
  if TOPOLOGY.value == "local":
    plan = planner.plan_local(config, step=STEP.value)
  else:
    plan = planner.plan_tpu(config, TOPOLOGY.value, num_slices=NUM_SLICES.value, step=STEP.value)
  print(format_plan(plan))
  if JSON_OUT.value:
    _write_json([plan.as_dict()])
  return 0


if __name__ == "__main__":
  errors.run_absl(main)
