#!/usr/bin/env bash
# The whole pipeline on a CPU in ~4.5 minutes: synthetic videos -> preprocess -> tiny model -> warm start -> GRPO -> evaluate.
#   bash scripts/demo.sh [--output_dir outputs/demo] [--seed 0] [--warm_start bundled]   (flags: python -m open_r1.demo --help)
set -euo pipefail
cd "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
exec python -m open_r1.demo "$@"
