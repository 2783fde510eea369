#!/usr/bin/env bash
# Decode every video once into the frame cache read by training and evaluation.
# Works from any directory; every argument is passed to `python -m open_r1.preprocess` (see --help).
#   bash preprocess_video.sh charades --video_dir /data/Charades_v1 --output_dir cache/charades --num_workers 8
set -euo pipefail
# Needs the package installed (`pip install -e .`); paths in the arguments are relative to where you call it from.
exec "${PYTHON:-python}" -m open_r1.preprocess "$@"
