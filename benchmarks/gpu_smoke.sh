#!/usr/bin/env bash
# GPU smoke test for a bare CUDA machine that has PyTorch and transformers but no package registry.
#
#   bash benchmarks/gpu_smoke.sh [WHEELS_DIR]
#
# WHEELS_DIR: a folder of wheels for the project's other dependencies (trl, accelerate, datasets, dill, multiprocess,
# transformers>=5.24, tokenizers, and deepspeed + hjson + pydantic for --deepspeed); they are installed with
# --no-index --no-deps into $SMOKE_SITE. Missing modules are listed and the script stops before any GPU work.
# Stages (SMOKE_STAGES, default "tiny recipe"):
#   tiny  the pipeline on CUDA in bf16 + sdpa: cached clips -> tiny Qwen2.5-VL -> 4 GRPO steps -> evaluation
#   recipe the shipped Charades recipe as written (flash_attention_2 where flash-attn is installed, else sdpa with a
#         warning; bf16, ZeRO-3 offload, accumulation 2, whole groups) plus --decode static, at the 7B shapes on
#         random weights, then a static-decode evaluation of the checkpoint; prints per-phase seconds against
#         bound.py's bound, the kernel that ran, dynamo's compiled graphs, decode shapes and peak memory
#         (SMOKE_STEPS, default 2; needs deepspeed among the wheels, ~17 GB + a 15 GB checkpoint in SMOKE_OUT)
#   7b    GRPO steps of the real 7B architecture (random weights) at the paper's shapes: ~3.6k video tokens,
#         8 completions of 200 tokens; prints seconds/step, tokens/s and peak GPU memory
#         SMOKE_DEEPSPEED=scripts/zero3.json SMOKE_OPTIM=adafactor runs it under ZeRO-3 on one GPU (torchrun; AdamW's
#         fp32 moments do not fit one card next to ZeRO-3's fp32 master weights); SMOKE_STEPS (default 2);
#         SMOKE_SHARED_WORK=false runs the per-row path (the tower over every row in every pass) for comparison.
#         Without DeepSpeed the trained weights are fp32 masters (bf16 autocast): use SMOKE_OPTIM=adafactor on one card.
#         Needs ~17 GB free disk in SMOKE_OUT for the random weights.
# Results: one JSON line per stage in $SMOKE_OUT/gpu_smoke.jsonl.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
WHEELS_DIR="${1:-${WHEELS_DIR:-}}"
SMOKE_SITE="${SMOKE_SITE:-/tmp/timezero_site}"
SMOKE_OUT="${SMOKE_OUT:-/tmp/timezero_smoke}"
SMOKE_STAGES="${SMOKE_STAGES:-tiny recipe}"

fail() { echo "gpu_smoke: $*" >&2; exit 1; }

"$PY" -c "import torch, transformers" 2>/dev/null || fail "$PY cannot import torch and transformers"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || fail "no CUDA device visible to torch"

if [[ -n "$WHEELS_DIR" ]]; then
    compgen -G "$WHEELS_DIR/*.whl" >/dev/null || fail "no .whl files in $WHEELS_DIR"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SMOKE_SITE" \
        "$WHEELS_DIR"/*.whl || fail "installing the wheels in $WHEELS_DIR failed"
    export PYTHONPATH="$SMOKE_SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

NEEDED="trl accelerate datasets dill multiprocess safetensors tokenizers yaml"
[[ -n "${SMOKE_DEEPSPEED:-}" || " $SMOKE_STAGES " == *" recipe "* ]] && NEEDED="$NEEDED deepspeed"
"$PY" - $NEEDED <<'PY' || fail "missing modules (put their wheels in WHEELS_DIR)"
import importlib, sys
from packaging.version import Version
missing = []
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except Exception as error:  # an import that breaks counts as missing
        missing.append(f"{name} ({type(error).__name__}: {error})")
import torch, transformers
if Version(transformers.__version__) < Version("5.24"):
    missing.append(f"transformers>=5.24 (found {transformers.__version__})")
for line in missing:
    print("missing:", line, file=sys.stderr)
print("torch", torch.__version__, "| transformers", transformers.__version__, "|", torch.cuda.get_device_name())
sys.exit(1 if missing else 0)
PY

mkdir -p "$SMOKE_OUT"
for stage in $SMOKE_STAGES; do
    echo "== stage $stage"
    launch=("$PY")
    extra=()
    if [[ "$stage" == recipe ]]; then
        launch=("$PY" -m torch.distributed.run --standalone --nproc_per_node 1)  # the recipe runs under DeepSpeed
        extra=(--steps "${SMOKE_STEPS:-2}")
    fi
    if [[ "$stage" == 7b && -n "${SMOKE_DEEPSPEED:-}" ]]; then
        # DeepSpeed wants a launched process group, even for one GPU.
        launch=("$PY" -m torch.distributed.run --standalone --nproc_per_node 1)
        extra=(--deepspeed "$SMOKE_DEEPSPEED")
    fi
    [[ "$stage" == 7b ]] && extra+=(--optim "${SMOKE_OPTIM:-adamw_torch}" --steps "${SMOKE_STEPS:-2}" \
        --shared_work "${SMOKE_SHARED_WORK:-true}")
    "${launch[@]}" benchmarks/gpu_smoke.py --stage "$stage" --out "$SMOKE_OUT" --json "$SMOKE_OUT/gpu_smoke.jsonl" \
        "${extra[@]}"
done
echo "results: $SMOKE_OUT/gpu_smoke.jsonl"
