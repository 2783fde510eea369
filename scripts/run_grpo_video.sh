#!/usr/bin/env bash
# Train TimeZero: GRPO on videos under torchrun (DeepSpeed on GPUs). Runs from any folder.
#
#   bash scripts/run_grpo_video.sh                                   # Charades recipe, every visible GPU, ZeRO-3 offload
#   bash scripts/run_grpo_video.sh --cache_dir /data/cache --save_steps 100   # extra flags override the recipe
#   RECIPE=recipes/activitynet/grpo_qwen2_5_vl_7b.yaml DEEPSPEED_CONFIG=scripts/zero2.json bash scripts/run_grpo_video.sh
#   RECIPE=recipes/demo/grpo_tiny.yaml bash scripts/run_grpo_video.sh --max_steps 2   # CPU, after `python -m open_r1.demo`
#   bash scripts/run_grpo_video.sh --help                            # the entry point's flags and these variables
#
# Environment variables (defaults in brackets):
#   RECIPE            YAML of flags, passed as --config [recipes/charades/grpo_qwen2_5_vl_7b.yaml in this repository]
#   DEEPSPEED_CONFIG  DeepSpeed JSON, or "none" [scripts/zero3_offload.json with GPUs, none without]
#   GPUS_PER_NODE     processes on this node [visible GPUs; 1 without GPUs]
#   NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT   multi-node rendezvous [1, 0, 127.0.0.1, 29500]: run the same
#                     command on every node with NODE_RANK 0..NNODES-1 and MASTER_ADDR = node 0's address
#   ENTRY             module torchrun runs [open_r1.grpo_video]; scripts/run_sft_video.sh sets open_r1.sft_video
#   WANDB_PROJECT     [timezero]; with --report_to wandb a missing key is reported before the model loads
#   PREFLIGHT         [1]; 0 skips the checks that run before torchrun (model, data, output, batch sizes)
# Relative paths (RECIPE, DEEPSPEED_CONFIG, and the paths inside recipes and flags) are relative to the folder you run
# the command from, as in any shell command; the two defaults point into this repository.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ENTRY="${ENTRY:-open_r1.grpo_video}"
PYTHON="${PYTHON:-python}"

for arg in "$@"; do
    if [[ "$arg" == "-h" || "$arg" == "--help" ]]; then
        sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -n 's/^# \{0,1\}//p'
        echo
        exec "$PYTHON" -m "$ENTRY" --help
    fi
done

RECIPE="${RECIPE:-$ROOT/recipes/charades/grpo_qwen2_5_vl_7b.yaml}"
if [[ ! -f "$RECIPE" ]]; then
    echo "recipe not found: $(realpath -m "$RECIPE") (RECIPE is relative to $(pwd))" >&2
    exit 2
fi
NUM_GPUS="$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)"
GPUS_PER_NODE="${GPUS_PER_NODE:-$(( NUM_GPUS > 0 ? NUM_GPUS : 1 ))}"
if [[ -z "${DEEPSPEED_CONFIG:-}" ]]; then
    if (( NUM_GPUS > 0 )); then DEEPSPEED_CONFIG="$ROOT/scripts/zero3_offload.json"; else DEEPSPEED_CONFIG=none; fi
fi
DEEPSPEED_ARGS=()
if [[ "$DEEPSPEED_CONFIG" != "none" ]]; then
    if [[ ! -f "$DEEPSPEED_CONFIG" ]]; then
        echo "DeepSpeed config not found: $(realpath -m "$DEEPSPEED_CONFIG") (relative to $(pwd))" >&2
        exit 2
    fi
    DEEPSPEED_ARGS=(--deepspeed "$DEEPSPEED_CONFIG")
fi
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29500}"
export WANDB_PROJECT="${WANDB_PROJECT:-timezero}"

echo "entry=$ENTRY recipe=$(realpath "$RECIPE") deepspeed=$DEEPSPEED_CONFIG nodes=$NNODES rank=$NODE_RANK" \
     "processes/node=$GPUS_PER_NODE (GPUs visible: $NUM_GPUS) master=$MASTER_ADDR:$MASTER_PORT"
# Every check that needs no model, before torchrun starts any worker: one short message naming every problem.
if [[ "${PREFLIGHT:-1}" != "0" ]]; then
    "$PYTHON" -m "$ENTRY" --preflight "$(( NNODES * GPUS_PER_NODE ))" --config "$RECIPE" "$@" || exit $?
fi
exec torchrun \
    --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$GPUS_PER_NODE" \
    --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
    -m "$ENTRY" --config "$RECIPE" "${DEEPSPEED_ARGS[@]}" "$@"
