#!/usr/bin/env bash
# train.py across nodes: torchrun with c10d rendezvous. Run the same command on every node.
# Usage: NNODES=2 NODE_RANK=0 MASTER_ADDR=gpu01 launch/multi_node.sh [CONFIG] [--section.key=value ...]
#
# Environment (read on every node):
#   NNODES          number of nodes (required)
#   NODE_RANK       0 on the node at MASTER_ADDR, which hosts the rendezvous; 1..NNODES-1 elsewhere (required)
#   MASTER_ADDR     address of node 0, reachable from every node (required)
#   MASTER_PORT     rendezvous port on node 0 (default 29500)
#   NPROC_PER_NODE  processes (GPUs) on this node (default: every visible GPU, or 1 without GPUs)
#   RDZV_ID         a job id the nodes share (default medslm-$MASTER_PORT); SLURM passes its job id
#   LOG_DIR         if set, each rank's stdout/stderr also goes to LOG_DIR/node$NODE_RANK/
#   PYTHON          the interpreter with medslm's requirements (default python)
# Global ranks are assigned by the rendezvous; rank 0 writes the run (config.yaml, metrics, adapter),
# so output_dir must be on storage every node can reach only if you want the other nodes to see it.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${NNODES:?set NNODES (number of nodes)}"
: "${NODE_RANK:?set NODE_RANK (0 on the node at MASTER_ADDR)}"
: "${MASTER_ADDR:?set MASTER_ADDR (address of node 0)}"
port=${MASTER_PORT:-29500}
py=${PYTHON:-python}
config=configs/medgemma-4b.yaml
if [[ $# -gt 0 && $1 != --* ]]; then config=$1; shift; fi
nproc=${NPROC_PER_NODE:-$("$py" -c 'import torch; print(torch.cuda.device_count() or 1)')}
is_host=$([[ $NODE_RANK == 0 ]] && echo 1 || echo 0)
logs=()
if [[ -n ${LOG_DIR:-} ]]; then logs=(--log_dir "$LOG_DIR/node$NODE_RANK" --tee 3); fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
exec "$py" -m torch.distributed.run \
  --nnodes "$NNODES" --nproc_per_node "$nproc" \
  --rdzv_backend c10d --rdzv_endpoint "$MASTER_ADDR:$port" --rdzv_id "${RDZV_ID:-medslm-$port}" \
  --rdzv_conf "is_host=$is_host" --max_restarts 0 "${logs[@]}" \
  train.py --config "$config" "$@"
