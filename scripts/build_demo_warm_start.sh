#!/usr/bin/env bash
# Rebuild the demo's bundled warm start (src/open_r1/assets/demo_warm_start): the demo's stages 1-3 with seed 0 and
# 300 supervised steps on the demo's one CPU thread (~3 minutes; the same weights as the default demo run's warm start
# under constraints.txt), then only the files a checkpoint loads from are copied.
#   bash scripts/build_demo_warm_start.sh [DESTINATION]   # default: the bundled folder
# Floating-point reductions differ between machines, so a rebuild matches the shipped weights closely, not bit for bit.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DESTINATION="${1:-$ROOT/src/open_r1/assets/demo_warm_start}"
exec python -m open_r1.demo --build_warm_start "$DESTINATION" --seed 0 --sft_steps 300 \
    --output_dir "${OUTPUT_DIR:-$ROOT/outputs/demo_warm_start_build}"
