#!/usr/bin/env bash
# Cloud TPU VMs from creation to teardown: one command per stage, every one with --dry-run.
#
#   launch/tpu_vm.sh [--dry-run] create --name NAME --zone ZONE --type v5p-64 [--slices 2]
#                                       [--project P] [--runtime VERSION] [--spot]
#   launch/tpu_vm.sh [--dry-run] setup  --name NAME --zone ZONE [--slices 2] [--project P]
#   launch/tpu_vm.sh [--dry-run] run    --name NAME --zone ZONE [--slices 2] [--project P] \
#                                       -- --config=configs/pretrain.py:qwen_audio --workdir=gs://...
#   launch/tpu_vm.sh [--dry-run] logs   --name NAME --zone ZONE [--worker 0|all] [--slice 0]
#   launch/tpu_vm.sh [--dry-run] status --name NAME --zone ZONE
#   launch/tpu_vm.sh [--dry-run] delete --name NAME --zone ZONE
#
# create   asks for the slice(s) as one queued resource (Cloud TPU's way to wait for capacity);
#          --slices K > 1 makes a multislice resource whose nodes are NAME-0 ... NAME-(K-1)
#          (set config.mesh.dcn_data or dcn_fsdp to K when training on it).
# setup    copies this checkout (tracked files) to every worker of every slice and installs it
#          with the TPU extra (jax[tpu] matching the pinned jax).
# run      starts the trainer on every worker (--worker=all) with --distributed=true, detached,
#          logging to ~/qwen_audio_jax.log on each worker; jax.distributed finds the other hosts
#          through the TPU metadata and each host reads its own share of the data.
# logs     follows that log (worker 0 of slice 0 by default; --worker all for every worker).
# delete   releases the queued resource and its slices.
# --dry-run prints every command instead of running it.
set -euo pipefail

dry_run=0
if [[ ${1:-} == "--dry-run" ]]; then dry_run=1; shift; fi
usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[[ $# -ge 1 ]] || usage
command=$1; shift

name="" zone="" project="" type="" runtime="" slices=1 spot=0 worker=0 slice=0
train_flags=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --name) name=$2; shift 2 ;;
    --zone) zone=$2; shift 2 ;;
    --project) project=$2; shift 2 ;;
    --type) type=$2; shift 2 ;;
    --runtime) runtime=$2; shift 2 ;;
    --slices) slices=$2; shift 2 ;;
    --spot) spot=1; shift ;;
    --worker) worker=$2; shift 2 ;;
    --slice) slice=$2; shift 2 ;;
    --) shift; train_flags=("$@"); break ;;
    *) echo "launch/tpu_vm.sh: unknown option '$1'" >&2; usage ;;
  esac
done
[[ -n $name ]] || { echo "launch/tpu_vm.sh $command: --name is required" >&2; exit 2; }
[[ -n $zone ]] || { echo "launch/tpu_vm.sh $command: --zone is required" >&2; exit 2; }
[[ $slices =~ ^[1-9][0-9]*$ ]] || { echo "launch/tpu_vm.sh: --slices must be >= 1, got '$slices'" >&2; exit 2; }

project_flag=()
[[ -n $project ]] && project_flag=(--project "$project")

# Prints the command (shell-quoted) on --dry-run, runs it otherwise.
run_cmd() {
  if [[ $dry_run == 1 ]]; then
    printf '%q ' "$@" | sed 's/ $//'
    printf '\n'
  else
    "$@"
  fi
}

# The TPU VM nodes of the resource: NAME alone, or NAME-0 ... NAME-(K-1) for multislice.
nodes() {
  if [[ $slices == 1 ]]; then echo "$name"; else
    for ((i = 0; i < slices; i++)); do echo "$name-$i"; done
  fi
}

default_runtime() {  # Cloud TPU's software versions per generation (cloud.google.com/tpu/docs/runtimes)
  case $1 in
    v4-*) echo tpu-ubuntu2204-base ;;
    v5litepod-*|v5e-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) echo "launch/tpu_vm.sh create: no default --runtime for --type '$1'; pass --runtime" >&2
       exit 2 ;;
  esac
}

accelerator_type() {  # gcloud spells v5e slices v5litepod-N
  case $1 in v5e-*) echo "v5litepod-${1#v5e-}" ;; *) echo "$1" ;; esac
}

case $command in
  create)
    [[ -n $type ]] || { echo "launch/tpu_vm.sh create: --type is required (e.g. v5p-64)" >&2; exit 2; }
    [[ -n $runtime ]] || runtime=$(default_runtime "$type")
    node_flags=(--node-id "$name")
    [[ $slices -gt 1 ]] && node_flags=(--node-count "$slices" --node-prefix "$name")
    capacity=()
    [[ $spot == 1 ]] && capacity=(--spot)
    run_cmd gcloud compute tpus queued-resources create "$name" "${node_flags[@]}" \
        --zone "$zone" "${project_flag[@]}" --accelerator-type "$(accelerator_type "$type")" \
        --runtime-version "$runtime" "${capacity[@]}"
    ;;
  setup)
    repo_root=$(cd "$(dirname "$0")/.." && pwd)
    archive=/tmp/qwen_audio_jax-$name.tar.gz
    run_cmd git -C "$repo_root" archive --format=tar.gz -o "$archive" HEAD
    for node in $(nodes); do
      run_cmd gcloud compute tpus tpu-vm scp "$archive" "$node:qwen_audio_jax.tar.gz" \
          --worker=all --zone "$zone" "${project_flag[@]}"
      run_cmd gcloud compute tpus tpu-vm ssh "$node" --worker=all --zone "$zone" \
          "${project_flag[@]}" --command \
          "mkdir -p ~/qwen_audio_jax && tar -xzf ~/qwen_audio_jax.tar.gz -C ~/qwen_audio_jax && cd ~/qwen_audio_jax && pip install -q -e '.[tpu]'"
    done
    ;;
  run)
    [[ ${#train_flags[@]} -gt 0 ]] || { echo "launch/tpu_vm.sh run: give the training flags after --, e.g. -- --config=configs/pretrain.py:qwen_audio --workdir=gs://bucket/run" >&2; exit 2; }
    quoted=$(printf ' %q' "${train_flags[@]}")
    remote="cd ~/qwen_audio_jax && nohup python -m qwen_audio_jax.train --distributed=true${quoted} > ~/qwen_audio_jax.log 2>&1 &"
    for node in $(nodes); do
      run_cmd gcloud compute tpus tpu-vm ssh "$node" --worker=all --zone "$zone" \
          "${project_flag[@]}" --command "$remote"
    done
    ;;
  logs)
    node=$name
    [[ $slices -gt 1 ]] && node=$name-$slice
    run_cmd gcloud compute tpus tpu-vm ssh "$node" --worker="$worker" --zone "$zone" \
        "${project_flag[@]}" --command "tail -n +1 -f ~/qwen_audio_jax.log"
    ;;
  status)
    run_cmd gcloud compute tpus queued-resources describe "$name" --zone "$zone" "${project_flag[@]}"
    ;;
  delete)
    run_cmd gcloud compute tpus queued-resources delete "$name" --zone "$zone" \
        "${project_flag[@]}" --force --quiet
    ;;
  *) echo "launch/tpu_vm.sh: unknown command '$command' (create, setup, run, logs, status, delete)" >&2
     exit 2 ;;
esac
