#!/usr/bin/env bash
# The whole pipeline on a CPU in a few minutes: synthetic videos -> preprocess -> tiny model -> GRPO -> evaluate.
#   bash scripts/demo.sh [--output_dir outputs/demo] [--max_steps 12]
set -euo pipefail
cd "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
exec python -m open_r1.demo "$@"
