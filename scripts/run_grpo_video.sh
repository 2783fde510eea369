#!/usr/bin/env bash
# Train TimeZero: GRPO on videos with DeepSpeed under torchrun. Runs from the repository root or from scripts/.
#
#   bash scripts/run_grpo_video.sh                                   # Charades recipe, 4 GPUs, ZeRO-3 + CPU offload
#   bash scripts/run_grpo_video.sh --cache_dir /data/cache --save_steps 100   # extra flags override the recipe
#   RECIPE=recipes/activitynet/grpo_qwen2_5_vl_7b.yaml DEEPSPEED_CONFIG=scripts/zero2.json bash scripts/run_grpo_video.sh
#
# Multi-node: run the same command on every node with NNODES, NODE_RANK (0..NNODES-1), MASTER_ADDR (node 0's
# address), MASTER_PORT and GPUS_PER_NODE set. Relative paths (recipe, flags) are relative to the repository root.
# ENTRY (default open_r1.grpo_video) is the module torchrun runs; scripts/run_sft_video.sh sets it to the warm start.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

ENTRY="${ENTRY:-open_r1.grpo_video}"
RECIPE="${RECIPE:-recipes/charades/grpo_qwen2_5_vl_7b.yaml}"
DEEPSPEED_CONFIG="${DEEPSPEED_CONFIG:-scripts/zero3_offload.json}"
GPUS_PER_NODE="${GPUS_PER_NODE:-4}"
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29500}"
export WANDB_PROJECT="${WANDB_PROJECT:-timezero}"

echo "entry=$ENTRY recipe=$RECIPE deepspeed=$DEEPSPEED_CONFIG nodes=$NNODES rank=$NODE_RANK gpus/node=$GPUS_PER_NODE master=$MASTER_ADDR:$MASTER_PORT"
exec torchrun \
    --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$GPUS_PER_NODE" \
    --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
    -m "$ENTRY" --config "$RECIPE" --deepspeed "$DEEPSPEED_CONFIG" "$@"
