#!/usr/bin/env bash
# A training run on a GKE cluster of TPU slices through XPK (github.com/AI-Hypercomputer/xpk).
#
#   launch/xpk.sh [--dry-run] --cluster CLUSTER --workload NAME --type v5p-64 [--slices 2] \
#       --image IMAGE [--project P] [--zone Z] -- --config=configs/pretrain.py:qwen_audio \
#       --workdir=gs://bucket/runs/stage1
#
# IMAGE is a container with this repository installed (`pip install '.[tpu]'`), e.g. built
# from a Dockerfile whose last lines are `COPY . /app` and `RUN pip install '/app[tpu]'`.
# XPK starts one pod per host of every slice and sets the multislice environment; the trainer
# runs with --distributed=true everywhere (set config.mesh.dcn_data to the number of slices).
# --dry-run prints the command instead of running it.
set -euo pipefail

dry_run=0
if [[ ${1:-} == "--dry-run" ]]; then dry_run=1; shift; fi
usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

cluster="" workload="" type="" image="" project="" zone="" slices=1
train_flags=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --cluster) cluster=$2; shift 2 ;;
    --workload) workload=$2; shift 2 ;;
    --type) type=$2; shift 2 ;;
    --slices) slices=$2; shift 2 ;;
    --image) image=$2; shift 2 ;;
    --project) project=$2; shift 2 ;;
    --zone) zone=$2; shift 2 ;;
    --) shift; train_flags=("$@"); break ;;
    *) echo "launch/xpk.sh: unknown option '$1'" >&2; usage ;;
  esac
done
for required in cluster workload type image; do
  [[ -n ${!required} ]] || { echo "launch/xpk.sh: --$required is required" >&2; exit 2; }
done
[[ ${#train_flags[@]} -gt 0 ]] || { echo "launch/xpk.sh: give the training flags after --" >&2; exit 2; }

extra=()
[[ -n $project ]] && extra+=(--project "$project")
[[ -n $zone ]] && extra+=(--zone "$zone")
train_command="python -m qwen_audio_jax.train --distributed=true$(printf ' %q' "${train_flags[@]}")"
cmd=(xpk workload create --cluster "$cluster" --workload "$workload" --tpu-type "$type"
     --num-slices "$slices" --docker-image "$image" "${extra[@]}" --command "$train_command")
if [[ $dry_run == 1 ]]; then
  printf '%q ' "${cmd[@]}" | sed 's/ $//'
  printf '\n'
else
  "${cmd[@]}"
fi
