"""Peak memory of decoding one 4K clip: the chunked resize (now) against whole 32-frame chunks (before).

    python benchmarks/decode_memory.py [--frames 40] [--height 2160] [--width 3840]

Writes a synthetic 4K clip, then decodes it in fresh processes (decord and PyAV, each with the old and the new
chunking) and prints each one's peak resident memory and the ratio. Every frame is sampled (--video_fps equal to
the clip's rate), as for a long video at 2 fps, so that chunks are full.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, sys
from open_r1 import video
from open_r1.configs import VideoSettings
from open_r1.preprocess import peak_rss_bytes
path, decoder, chunk_bytes, fps = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
video._CHUNK_BYTES = chunk_bytes
before = peak_rss_bytes()
clip = video.decode_video(path, VideoSettings(fps=fps), decoder=decoder)
peak = peak_rss_bytes()
print(json.dumps({"peak_mib": peak / 2**20, "after_import_mib": before / 2**20, "frames": clip.num_frames,
                  "size": list(clip.frames.shape[-2:])}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--height", type=int, default=2160)
    parser.add_argument("--width", type=int, default=3840)
    parser.add_argument("--fps", type=float, default=8.0)
    args = parser.parse_args()

    import numpy as np

    from open_r1.synthetic import write_video

    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        base = rng.integers(0, 255, (args.height // 8, args.width // 8, 3), dtype=np.uint8)
        frames = np.stack([np.roll(base.repeat(8, 0).repeat(8, 1), 16 * i, axis=1) for i in range(args.frames)])
        path = write_video(Path(tmp) / "uhd.mp4", frames, args.fps)
        del frames
        print(f"clip: {args.frames} frames of {args.width}x{args.height} at {args.fps:g} fps")
        for decoder in ("decord", "pyav"):
            results = {}
            for name, chunk_bytes in (("whole chunks (before)", 2**62), ("bounded chunks (now)", 192 * 2**20)):
                out = subprocess.run(
                    [sys.executable, "-c", CHILD, str(path), decoder, str(chunk_bytes), str(args.fps)],
                    check=True, capture_output=True, text=True,
                )  # fmt: skip
                results[name] = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"{decoder:>7} {name:<22} peak RSS {results[name]['peak_mib']:7.0f} MiB "
                      f"(after imports {results[name]['after_import_mib']:.0f} MiB)")  # fmt: skip
            before, now = (r["peak_mib"] for r in results.values())
            print(f"{decoder:>7} peak ratio before / now: {before / now:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
