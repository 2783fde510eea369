"""The hardware bound of one GRPO step at the paper's shape on one H200, phase by phase.

For each phase of a step (1 query x G completions of C tokens, a prompt of ~3.65k tokens of which 3,584 are video,
beta > 0 so a reference pass, gradient checkpointing, frozen vision tower) it counts, from the real Qwen2.5-VL-7B
config, the FLOPs (every matmul and the attention scores) and the bytes that must cross HBM (weights, KV cache,
optimizer state), and prints the time neither the tensor cores nor the memory can beat:
``max(FLOPs / 989 TFLOP/s, bytes / 4.8 TB/s)`` (H200, bf16 dense). Decode steps are bounded one by one (each reads
every weight once). With ``--measured FILE`` (JSON: phase -> seconds, e.g. from a GPU run of step_bench.py) it
prints measured / bound per phase.

The FLOP formulas are the ones torch's FLOP counter applies (2 per multiply-add, attention as two batched matmuls);
``tests/test_bound.py`` checks them against the counter on the tiny model's vision tower and language model.

    python benchmarks/bound.py
    python benchmarks/bound.py --completion_tokens 1024 --measured outputs/step_h200.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

PEAK_FLOPS = 989e12  # H200 bf16 dense
BANDWIDTH = 4.8e12  # H200 HBM3e bytes/s
BF16 = 2


# --------------------------------------------------------------------------------------------------------------------
# FLOPs, as torch.utils.flop_counter counts them


def attention_flops(heads: int, head_dim: int, pairs: int) -> int:
    """Scores and weighted values for ``pairs`` (query, key) pairs: two matmuls of ``head_dim`` per pair and head."""
    return 4 * heads * head_dim * pairs


def text_dims(text) -> tuple[int, int, int, int, int]:
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return text.hidden_size, text.intermediate_size, text.num_attention_heads, text.num_key_value_heads, head_dim


def text_linear_flops(text, tokens: int) -> int:
    """The decoder layers' projections and MLP (q, k, v, o; gate, up, down) for ``tokens`` tokens, all layers."""
    hidden, ff, heads, kv_heads, head_dim = text_dims(text)
    per_token = hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim + heads * head_dim * hidden
    per_token += 3 * hidden * ff
    return 2 * tokens * per_token * text.num_hidden_layers


def text_forward_flops(text, tokens: int, pairs: int) -> int:
    """The language model's layers (no output head) over ``tokens`` tokens whose attention computes ``pairs`` scores
    per head and layer."""
    _, _, heads, _, head_dim = text_dims(text)
    return text_linear_flops(text, tokens) + text.num_hidden_layers * attention_flops(heads, head_dim, pairs)


def head_flops(text, tokens: int) -> int:
    return 2 * tokens * text.hidden_size * text.vocab_size


def vision_windows(vision, grid: tuple[int, int, int]) -> list[int]:
    """Patch counts of the windows of one video (``grid`` = (t, h, w) in patches), as the tower cuts them."""
    t, h, w = grid
    merge = vision.spatial_merge_size
    units = vision.window_size // merge // vision.patch_size  # merged units per window side
    rows, cols = h // merge, w // merge
    sizes = []
    for top in range(0, rows, units):
        for left in range(0, cols, units):
            sizes.append(min(units, rows - top) * min(units, cols - left) * merge * merge)
    return sizes * t


def vision_forward_flops(vision, grid: tuple[int, int, int]) -> int:
    """The vision tower over one video: patch embedding, blocks (window or full attention), merger."""
    t, h, w = grid
    patches = t * h * w
    hidden, ff = vision.hidden_size, vision.intermediate_size
    head_dim = hidden // vision.num_heads
    patch_width = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
    flops = 2 * patches * patch_width * hidden
    linear = 2 * patches * (3 * hidden * hidden + hidden * hidden + 3 * hidden * ff)
    window_pairs = sum(size * size for size in vision_windows(vision, grid))
    frame_pairs = t * (h * w) ** 2
    for block in range(vision.depth):
        pairs = frame_pairs if block in vision.fullatt_block_indexes else window_pairs
        flops += linear + attention_flops(vision.num_heads, head_dim, pairs)
    merged, width = patches // vision.spatial_merge_size**2, hidden * vision.spatial_merge_size**2
    return flops + 2 * merged * (width * width + width * vision.out_hidden_size)


# --------------------------------------------------------------------------------------------------------------------
# Bytes


def text_weight_bytes(text, dtype_bytes: int = BF16) -> int:
    hidden, ff, heads, kv_heads, head_dim = text_dims(text)
    per_layer = hidden * heads * head_dim * 2 + 2 * hidden * kv_heads * head_dim + 3 * hidden * ff
    return dtype_bytes * (text.num_hidden_layers * per_layer + 2 * text.vocab_size * hidden)


def kv_bytes(text, tokens: int, dtype_bytes: int = BF16) -> int:
    _, _, _, kv_heads, head_dim = text_dims(text)
    return 2 * text.num_hidden_layers * kv_heads * head_dim * tokens * dtype_bytes


def vision_weight_bytes(vision, dtype_bytes: int = BF16) -> int:
    hidden, ff = vision.hidden_size, vision.intermediate_size
    width = hidden * vision.spatial_merge_size**2
    patch_width = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
    per_block = 4 * hidden * hidden + 3 * hidden * ff
    return dtype_bytes * (
        vision.depth * per_block + patch_width * hidden + width * width + width * vision.out_hidden_size
    )


def trained_parameters(text) -> int:
    return text_weight_bytes(text, dtype_bytes=1)


# --------------------------------------------------------------------------------------------------------------------
# The step


def bound_seconds(flops: float, nbytes: float) -> float:
    return max(flops / PEAK_FLOPS, nbytes / BANDWIDTH)


def step_phases(config, grid=(32, 16, 28), text_tokens: int = 66, completions: int = 8, completion_tokens: int = 200):
    """Per phase: FLOPs, bytes, bound seconds (and for the packed passes the dense-mask score count)."""
    text, vision = config.text_config, config.vision_config
    video_tokens = math.prod(grid) // vision.spatial_merge_size**2
    prompt = video_tokens + text_tokens
    G, C = completions, completion_tokens
    phases = {}

    flops = vision_forward_flops(vision, grid)
    phases["vision"] = (flops, vision_weight_bytes(vision))

    # Generation: one prefill of the prompt (causal), then C decode steps of G rows, each reading every weight and
    # the rows' KV caches.
    flops = text_forward_flops(text, prompt, prompt * (prompt + 1) // 2) + head_flops(text, 1)
    seconds = bound_seconds(flops, text_weight_bytes(text) + kv_bytes(text, prompt))
    total_flops, total_bytes = flops, text_weight_bytes(text) + kv_bytes(text, prompt)
    for step in range(1, C + 1):
        step_flops = text_forward_flops(text, G, G * (prompt + step)) + head_flops(text, G)
        step_bytes = text_weight_bytes(text) + kv_bytes(text, G * (prompt + step))
        seconds += bound_seconds(step_flops, step_bytes)
        total_flops, total_bytes = total_flops + step_flops, total_bytes + step_bytes
    phases["generation"] = (total_flops, total_bytes, seconds)

    # A packed log-prob pass: prompt[:-1] then G blocks of C tokens; each block sees the prompt and itself (causal).
    tokens = prompt - 1 + G * C
    useful_pairs = (prompt - 1) * prompt // 2 + G * (C * (prompt - 1) + C * (C + 1) // 2)
    forward = text_forward_flops(text, tokens, useful_pairs) + head_flops(text, G * C)
    phases["reference"] = (forward, text_weight_bytes(text))
    phases["policy_forward"] = (forward, text_weight_bytes(text))
    # Backward: twice the forward's matmuls, plus the forward recomputed under gradient checkpointing.
    phases["backward"] = (3 * forward, 2 * text_weight_bytes(text))
    # Optimizer: fp32 master read and written, fp32 gradient read, bf16 weight written, per trained parameter.
    phases["optimizer"] = (0, trained_parameters(text) * (4 + 4 + 4 + 2))
    out = {}
    for name, values in phases.items():
        flops, nbytes = values[0], values[1]
        out[name] = {
            "flops": flops,
            "bytes": nbytes,
            "bound_s": values[2] if len(values) > 2 else bound_seconds(flops, nbytes),
        }
    out["packed_dense_over_useful_scores"] = tokens * tokens / useful_pairs
    return out


def main(argv=None) -> dict:
    from transformers import AutoConfig

    from open_r1.modeling import ASSETS_DIR

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--completions", type=int, default=8)
    parser.add_argument("--completion_tokens", type=int, default=200)
    parser.add_argument("--measured", help="JSON of phase -> measured seconds on the GPU")
    args = parser.parse_args(argv)
    config = AutoConfig.from_pretrained(ASSETS_DIR)
    phases = step_phases(config, completions=args.completions, completion_tokens=args.completion_tokens)
    measured = json.loads(Path(args.measured).read_text()) if args.measured else {}
    dense = phases.pop("packed_dense_over_useful_scores")
    print(
        f"Qwen2.5-VL-7B, 1 query x {args.completions} x {args.completion_tokens} tokens, one H200 "
        f"({PEAK_FLOPS / 1e12:.0f} TFLOP/s, {BANDWIDTH / 1e12:.1f} TB/s)"
    )
    print(f"{'phase':<16}{'TFLOP':>10}{'GB':>10}{'bound ms':>10}{'measured s':>12}{'ratio':>8}")
    total = 0.0
    for name, values in phases.items():
        total += values["bound_s"]
        seen = measured.get(name)
        ratio = f"{seen / values['bound_s']:.1f}x" if seen else ""
        seen_text = f"{seen:.3f}" if seen else ""
        print(
            f"{name:<16}{values['flops'] / 1e12:>10.2f}{values['bytes'] / 1e9:>10.1f}"
            f"{1e3 * values['bound_s']:>10.1f}{seen_text:>12}{ratio:>8}"
        )
    whole = measured.get("whole_step")
    print(
        f"{'whole step':<16}{'':>20}{1e3 * total:>10.1f}{(f'{whole:.3f}' if whole else ''):>12}"
        f"{(f'{whole / total:.1f}x' if whole else ''):>8}"
    )
    print(f"packed passes with a dense 4-D mask compute {dense:.2f}x the useful attention scores")
    return {"phases": phases, "whole_step_bound_s": total, "dense_over_useful": dense}


if __name__ == "__main__":
    main()
