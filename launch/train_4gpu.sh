#!/usr/bin/env bash
# QLoRA + FSDP2 (adapter-only sharding) on 4 GPUs of one node with the paper's settings.
# Usage: launch/train_4gpu.sh [CONFIG] [--section.key=value ...]
#   e.g. launch/train_4gpu.sh configs/medgemma-4b.yaml --data.medqa=/data/medqa/US --data.kormedmcqa=/data/KorMedMCQA
# (the paper configs name no data: without --data.* they stop with one line naming the keys)
set -euo pipefail
cd "$(dirname "$0")/.."
config=${1:-configs/medgemma-4b.yaml}
shift || true
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
exec torchrun --standalone --nproc_per_node "${NPROC:-4}" train.py --config "$config" "$@"
