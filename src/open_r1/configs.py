"""Argument dataclasses shared by preprocessing, training and evaluation.

Every value that preprocessing, training and evaluation must agree on (frame rate, pixel budgets) is defined once
here; the three entry points read these defaults instead of repeating them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The paper's video settings (TimeZero section 4.1): 2 fps, at most 3584*28*28 pixels for the whole clip and at least
# 16*28*28 pixels per frame. The frame cap is qwen-vl-utils' FPS_MAX_FRAMES.
DEFAULT_FPS = 2.0
DEFAULT_TOTAL_PIXELS = 3584 * 28 * 28
DEFAULT_MIN_PIXELS = 16 * 28 * 28
DEFAULT_MAX_FRAMES = 768


@dataclass(frozen=True)
class VideoSettings:
    """How a raw video becomes model frames: sampling rate, pixel budget and frame cap."""

    fps: float = DEFAULT_FPS
    total_pixels: int = DEFAULT_TOTAL_PIXELS
    min_pixels: int = DEFAULT_MIN_PIXELS
    max_frames: int = DEFAULT_MAX_FRAMES

    def __post_init__(self):
        if self.fps <= 0:
            raise ValueError(f"fps must be positive, got {self.fps}")
        if self.min_pixels <= 0 or self.total_pixels < self.min_pixels:
            raise ValueError(f"need 0 < min_pixels <= total_pixels, got {self.min_pixels} and {self.total_pixels}")
        if self.max_frames < 2:
            raise ValueError(f"max_frames must be at least 2, got {self.max_frames}")


@dataclass
class VideoArguments:
    """Command-line form of :class:`VideoSettings` (the same flags in preprocess, train and evaluate)."""

    video_fps: float = field(default=DEFAULT_FPS, metadata={"help": "Frames sampled per second of video."})
    video_total_pixels: int = field(
        default=DEFAULT_TOTAL_PIXELS, metadata={"help": "Pixel budget for all frames of one video (paper: 3584*28*28)."}
    )
    video_min_pixels: int = field(
        default=DEFAULT_MIN_PIXELS, metadata={"help": "Minimum pixels per frame (paper: 16*28*28)."}
    )
    video_max_frames: int = field(default=DEFAULT_MAX_FRAMES, metadata={"help": "Upper bound on sampled frames."})

    def to_settings(self) -> VideoSettings:
        return VideoSettings(
            fps=self.video_fps,
            total_pixels=self.video_total_pixels,
            min_pixels=self.video_min_pixels,
            max_frames=self.video_max_frames,
        )
