"""Evaluation of a whole test split: the work it does, before and after the per-run video reuse, and its H200 bound.

For the bundled Charades-STA test (3,720 queries, 1,334 videos) and ActivityNet Captions val_2 splits it counts, from
the annotation files and the paper's video settings (2 fps, 3,584 x 28 x 28 pixels per clip, frames of
``--source_size``):

- vision-tower passes: ``before`` = the previous runner (queries in file order, batches of ``--old_batch_size``, each
  batch encoding its distinct videos, so a video whose queries straddle two batches is encoded twice), ``now`` = the
  current runner (queries sorted by video, each video encoded once per run, the features carried across batches);
- the bound on one H200 (``bound.py``'s formulas: FLOPs incl. attention at 989 TFLOP/s, bytes at 4.8 TB/s), per
  phase: the tower once per video, a prefill per query, and ``--answer_tokens`` greedy decode steps per batch of
  ``--batch_size`` rows (each step reads every weight once and the rows' KV caches).

With ``--measured_minutes DATASET=MIN`` (a GPU run of ``scripts/evaluate.sh``, e.g. 256 queries timed and scaled
to the split) it prints measured / bound. Nothing here runs a model: the counts come from the same batching rules
as ``open_r1.evaluation.runner`` (``tests/test_evaluation_runner.py`` checks the runner encodes each video once).

    python benchmarks/eval_bound.py
    python benchmarks/eval_bound.py --answer_tokens 200 --measured_minutes charades=12.5
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from bound import (  # noqa: E402
    bound_seconds,
    head_flops,
    kv_bytes,
    text_forward_flops,
    text_weight_bytes,
    vision_forward_flops,
    vision_weight_bytes,
)

SPLITS = {"charades": "test", "activitynet": "val_2"}
SOURCE_FPS = 30.0
PROMPT_TEXT_TOKENS = 66  # the paper's question around the video, as in bound.py


def tower_passes(video_ids: list[str], batch_size: int) -> int:
    """The previous runner: file order, each batch encodes its distinct videos."""
    return sum(len(set(video_ids[i : i + batch_size])) for i in range(0, len(video_ids), batch_size))


def video_grid(duration: float, source_size: tuple[int, int]) -> tuple[int, int, int]:
    """``(t, h, w)`` patches of one clip under the paper's settings (qwen-vl-utils' frame count and resize rules)."""
    from open_r1.configs import VideoSettings
    from open_r1.video.sampling import PATCH_SIZE, num_sampled_frames, resized_frame_size

    settings = VideoSettings()
    frames = num_sampled_frames(max(2, round(duration * SOURCE_FPS)), SOURCE_FPS, settings)
    height, width = resized_frame_size(*source_size, frames, settings)
    return frames // 2, height // PATCH_SIZE, width // PATCH_SIZE


def split_bound(config, rows: list[dict], batch_size: int, answer_tokens: int, source_size) -> dict:
    """Per phase: FLOPs, bytes and bound seconds of evaluating ``rows`` (sorted by video, as the runner does)."""
    text, vision = config.text_config, config.vision_config
    merge = vision.spatial_merge_size**2
    durations = {}
    for row in rows:
        durations.setdefault(row["video_id"], float(row["duration"]))
    grids = {video: video_grid(duration, source_size) for video, duration in durations.items()}
    phases = {"vision": [0.0, 0.0, 0.0], "prefill": [0.0, 0.0, 0.0], "decode": [0.0, 0.0, 0.0]}

    def add(name, flops, nbytes):
        phases[name][0] += flops
        phases[name][1] += nbytes
        phases[name][2] += bound_seconds(flops, nbytes)

    for grid in grids.values():
        add("vision", vision_forward_flops(vision, grid), vision_weight_bytes(vision))
    ordered = sorted(rows, key=lambda row: row["video_id"])
    for start in range(0, len(ordered), batch_size):
        batch = ordered[start : start + batch_size]
        prompts = [math.prod(grids[row["video_id"]]) // merge + PROMPT_TEXT_TOKENS for row in batch]
        flops = sum(text_forward_flops(text, p, p * (p + 1) // 2) for p in prompts) + head_flops(text, len(batch))
        add("prefill", flops, text_weight_bytes(text) + sum(kv_bytes(text, p) for p in prompts))
        for step in range(1, answer_tokens + 1):
            flops = sum(text_forward_flops(text, 1, p + step) for p in prompts) + head_flops(text, len(batch))
            add("decode", flops, text_weight_bytes(text) + sum(kv_bytes(text, p + step) for p in prompts))
    return {name: {"flops": v[0], "bytes": v[1], "bound_s": v[2]} for name, v in phases.items()}


def main(argv=None) -> dict:
    from transformers import AutoConfig

    from open_r1.data import load_split
    from open_r1.modeling import ASSETS_DIR

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(SPLITS), choices=list(SPLITS))
    parser.add_argument("--batch_size", type=int, default=64, help="Rows per batch on the GPU (the bound's).")
    parser.add_argument("--old_batch_size", type=int, default=8, help="The previous runner's batch size.")
    parser.add_argument("--answer_tokens", type=int, default=40, help="Greedy tokens per answer.")
    parser.add_argument("--source_size", type=int, nargs=2, default=[270, 480], help="Source frame height, width.")
    parser.add_argument("--measured_minutes", nargs="*", default=[], help="DATASET=MINUTES of a GPU run.")
    args = parser.parse_args(argv)
    measured = {k: float(v) for k, v in (item.split("=", 1) for item in args.measured_minutes)}
    config = AutoConfig.from_pretrained(ASSETS_DIR)
    results = {}
    for dataset in args.datasets:
        rows = load_split(dataset, SPLITS[dataset])
        video_ids = [row["video_id"] for row in rows]
        before, now = tower_passes(video_ids, args.old_batch_size), len(set(video_ids))
        phases = split_bound(config, rows, args.batch_size, args.answer_tokens, tuple(args.source_size))
        total = sum(p["bound_s"] for p in phases.values())
        results[dataset] = {"queries": len(rows), "videos": now, "tower_passes_before": before,
                            "tower_passes_now": now, "phases": phases, "bound_min": total / 60}  # fmt: skip
        print(f"{dataset} {SPLITS[dataset]}: {len(rows):,} queries, {now:,} videos")
        print(f"  vision-tower passes: before {before:,} (file order, batches of {args.old_batch_size}), now {now:,} "
              f"({before / now:.2f}x fewer; {100 * (before - now) / before:.0f}% of the old passes re-encoded a video)")  # fmt: skip
        print(f"  H200 bound at batch {args.batch_size}, {args.answer_tokens} answer tokens:")
        for name, values in phases.items():
            print(f"    {name:<8}{values['flops'] / 1e15:>9.2f} PFLOP{values['bytes'] / 1e12:>9.2f} TB"
                  f"{values['bound_s'] / 60:>9.2f} min")  # fmt: skip
        line = f"    {'total':<8}{'':>24}{total / 60:>9.2f} min"
        if dataset in measured:
            line += f"   measured {measured[dataset]:.2f} min: {60 * measured[dataset] / total:.1f}x the bound"
        print(line)
    return results


if __name__ == "__main__":
    main()
