#!/usr/bin/env bash
# Supervised warm start (optional, before GRPO): the same launcher, recipes and variables as run_grpo_video.sh
# (`--help` lists them); relative paths are relative to the folder you run it from.
#
#   bash scripts/run_sft_video.sh                                   # Charades warm-start recipe, 4 GPUs, ZeRO-3 offload
#   bash scripts/run_sft_video.sh --cache_dir /data/cache --output_dir outputs/my_sft
#   bash scripts/run_grpo_video.sh --model_name_or_path outputs/charades/sft_qwen2_5_vl_7b   # then GRPO from it
set -euo pipefail
export ENTRY=open_r1.sft_video
export RECIPE="${RECIPE:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/recipes/charades/sft_qwen2_5_vl_7b.yaml}"
exec bash "$(dirname "${BASH_SOURCE[0]}")/run_grpo_video.sh" "$@"
