#!/usr/bin/env bash
# The whole pipeline on a CPU in about 6 minutes on 2 idle cores: synthetic videos -> preprocess -> tiny model -> warm
# start -> data selection -> GRPO -> evaluate. One thread unless OMP_NUM_THREADS says otherwise (the tiny model gains
# nothing from more; the README's numbers were measured so).
#   bash scripts/demo.sh [--output_dir outputs/demo] [--seed 0] [--warm_start bundled]   (flags: python -m open_r1.demo --help)
set -euo pipefail
cd "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
exec python -m open_r1.demo "$@"
