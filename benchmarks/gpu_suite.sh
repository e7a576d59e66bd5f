#!/usr/bin/env bash
# The GPU measurements in one go, inside a time budget: attention implementations at the
# release's sizes, the train step against transformers (the three clip-length mixes, float32 with
# TF32 on both sides, then a larger bfloat16 model for MFU), and the README's demo run.
#
#   bash benchmarks/gpu_suite.sh [budget seconds, default 540] [log folder, default $OUT or
#                                 gpu_logs]
#
# Each part runs under `timeout` with what is left of the budget (a part that cannot finish is
# cut, and the rest still run); every part's whole log is kept in the log folder and its last
# lines are printed, with its exit status and seconds. JAX and torch share the GPU inside the
# train-step benchmark, so JAX's preallocation is held to 45% of the memory there. Runs from the
# repository root with the package importable from it (no install needed beyond the
# dependencies).
set -u
budget=${1:-540}
logs=$(realpath -m "${2:-${OUT:-gpu_logs}}")
mkdir -p "$logs"
cd "$(dirname "$0")/.." || exit 1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
deadline=$(( $(date +%s) + budget ))
noise='TPU\|libtpu\|InitGoogle\|Source Location\|^E0000\|^I[0-9]\{4\}\|^W[0-9]\{4\}\|^E[0-9]\{4\}'

part() {  # part NAME LIMIT_SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  local left=$(( deadline - $(date +%s) - 5 ))
  (( left < limit )) && limit=$left
  if (( limit < 20 )); then echo "== $name: skipped, ${left} s of the budget left"; return; fi
  local start; start=$(date +%s)
  timeout "$limit" "$@" >"$logs/$name.log" 2>&1
  local rc=$?
  echo "== $name (rc $rc, $(( $(date +%s) - start )) s of at most $limit): $*"
  grep -v "$noise" "$logs/$name.log" | tail -n "${TAIL:-6}"
}

nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader
python3 -c "import jax, flax, optax, orbax.checkpoint, grain, transformers, torch
print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'optax', optax.__version__,
      'grain', grain.__version__ if hasattr(grain, '__version__') else '?',
      'transformers', transformers.__version__, 'torch', torch.__version__)" 2>&1 | tail -n 2

export XLA_PYTHON_CLIENT_MEM_FRACTION=0.45
part train_30s 80 python3 benchmarks/train_step.py --lengths 30s --iters 5
part train_librispeech 90 python3 benchmarks/train_step.py --lengths librispeech --iters 5
part train_demo 100 python3 benchmarks/train_step.py --lengths demo --iters 5
part train_large_bf16 110 python3 benchmarks/train_step.py --lengths librispeech --dtype bfloat16 \
  --layers 8 --width 1280 --batch 8 --vocab 151936 --iters 3
part attention_encoder 40 python3 benchmarks/attention.py --shape encoder --full --dtype bfloat16 \
  --iters 10
part attention_llm 40 python3 benchmarks/attention.py --shape llm --full --dtype bfloat16 --iters 10
unset XLA_PYTHON_CLIENT_MEM_FRACTION
rm -rf /tmp/gpu_demo
TAIL=25 part demo 180 python3 -m qwen_audio_jax.train --config=configs/pretrain.py:demo \
  --workdir=/tmp/gpu_demo
cp /tmp/gpu_demo/*.json /tmp/gpu_demo/*.md "$logs/" 2>/dev/null
echo "== done, $(( deadline - $(date +%s) )) s of the budget left"
