#!/usr/bin/env bash
# Runs a training job on every host of a Cloud TPU VM pod slice (or several slices).
#
#   launch/tpu_pod.sh TPU_NAME ZONE [PROJECT] -- --config=configs/pretrain.py:qwen_audio \
#       --workdir=gs://bucket/runs/stage1 [--config.key=value ...]
#
# Every host runs the same command with --distributed=true: `jax.distributed` finds the other
# hosts through the TPU metadata, each host reads its own slice of the data (grain, by process
# index) and feeds its local devices. The repository is copied to each host and installed there first.
# Multislice: create the slices as one queued resource and pass its node names through
# TPU_NAME=name1,name2; set config.mesh.dcn_data (or dcn_fsdp) to the number of slices.
set -euo pipefail

if [[ $# -lt 3 ]]; then
  echo "usage: $0 TPU_NAME ZONE [PROJECT] -- TRAIN_FLAGS..." >&2
  exit 2
fi
tpu_names=$1; zone=$2; shift 2
project_flag=()
if [[ $# -gt 0 && $1 != "--" ]]; then project_flag=(--project "$1"); shift; fi
[[ ${1:-} == "--" ]] && shift
train_flags=$(printf ' %q' "$@")

repo_root=$(cd "$(dirname "$0")/.." && pwd)
archive=$(mktemp --suffix=.tar.gz)
tar -C "$repo_root" --exclude=.git --exclude=workdir -czf "$archive" .

IFS=',' read -ra names <<< "$tpu_names"
for name in "${names[@]}"; do
  gcloud compute tpus tpu-vm scp "$archive" "$name:~/qwen_audio_jax.tar.gz" --worker=all \
      --zone "$zone" "${project_flag[@]}"
  gcloud compute tpus tpu-vm ssh "$name" --worker=all --zone "$zone" "${project_flag[@]}" \
      --command "mkdir -p ~/qwen_audio_jax && tar -xzf ~/qwen_audio_jax.tar.gz -C ~/qwen_audio_jax \
        && cd ~/qwen_audio_jax && pip install -q 'jax[tpu]' -e . " &
done
wait
for name in "${names[@]}"; do
  gcloud compute tpus tpu-vm ssh "$name" --worker=all --zone "$zone" "${project_flag[@]}" \
      --command "cd ~/qwen_audio_jax && python -m qwen_audio_jax.train --distributed=true${train_flags}" &
done
wait
rm -f "$archive"
