#!/usr/bin/env bash
# Evaluate a checkpoint with one process per GPU of this node; every argument goes to evaluate.py.
#
#   bash scripts/evaluate.sh --model_base CKPT --dataset charades --video_dir VIDEOS [--cache_dir CACHE]
#   NPROC_PER_NODE=4 bash scripts/evaluate.sh --model_base CKPT --dataset activitynet --cache_dir CACHE
#
# NPROC_PER_NODE: processes (default: visible GPUs, 1 without any); --standalone picks a free rendezvous port.
# Each rank writes predictions.rank<r>.jsonl; rank 0 merges them into predictions.jsonl and writes metrics.json.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NPROC_PER_NODE="${NPROC_PER_NODE:-$(python -c 'import torch; print(max(torch.cuda.device_count(), 1))')}"

# The checks that need no model, in one process before torchrun starts: a problem is one message, not a failure block
# per worker (PREFLIGHT=0 skips them).
if [[ "${PREFLIGHT:-1}" != "0" ]]; then
    python "${ROOT}/evaluate.py" --preflight "$@" || exit $?
fi
exec torchrun --standalone --nproc_per_node "${NPROC_PER_NODE}" "${ROOT}/evaluate.py" "$@"
