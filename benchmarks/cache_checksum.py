"""What checking a cache entry's SHA-256 on load costs: loads of one paper-sized entry with and without it.

    python benchmarks/cache_checksum.py [--repeats 20]

Writes one entry of random frames at the paper's settings for a 60 s, 24 fps, 480x640 source (the shape is
printed), then times `VideoCache.load` with `verify=False` (the default: header checks, memory-mapped frames) and
`verify=True` (also a SHA-256 of every frame byte), and prints both, the difference and the ratio.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import torch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60.0, help="Source length; longer = more frames.")
    args = parser.parse_args()

    from open_r1.video import (
        DEFAULT_SETTINGS,
        VideoCache,
        VideoClip,
        num_sampled_frames,
        resized_frame_size,
        sampled_frame_indices,
    )

    source_fps, source = 24.0, (480, 640)
    total = int(args.seconds * source_fps)
    count = num_sampled_frames(total, source_fps, DEFAULT_SETTINGS)
    height, width = resized_frame_size(*source, count, DEFAULT_SETTINGS)
    frames = torch.randint(0, 256, (count, 3, height, width), dtype=torch.uint8)
    clip = VideoClip(frames, count / total * source_fps, sampled_frame_indices(total, count), total / source_fps,
                     source_fps, source, "decord", total)  # fmt: skip
    with tempfile.TemporaryDirectory() as root:
        cache = VideoCache(root)
        cache.save("v", clip, DEFAULT_SETTINGS)
        print(f"entry: {count} frames of {height}x{width} ({frames.numel() / 2**20:.1f} MiB), {args.repeats} loads")
        timings = {}
        for verify in (False, True):
            cache.load("v", DEFAULT_SETTINGS, verify=verify)  # warm the page cache
            started = time.perf_counter()
            for _ in range(args.repeats):
                cache.load("v", DEFAULT_SETTINGS, verify=verify)
            timings[verify] = (time.perf_counter() - started) / args.repeats * 1000
            print(f"verify={verify!s:<5} {timings[verify]:7.2f} ms per load")
        print(
            f"checksum adds {timings[True] - timings[False]:.2f} ms per load ({timings[True] / timings[False]:.2f}x)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
