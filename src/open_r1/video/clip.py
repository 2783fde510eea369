"""The clip every video step hands on (:class:`VideoClip`) and the error every video step raises."""

from __future__ import annotations

from dataclasses import dataclass

import torch

# A frame whose real timestamp is this far (and more than one frame interval) from index / fps marks the file as
# variable-frame-rate.
VFR_TOLERANCE_S = 0.1


class VideoDecodeError(RuntimeError):
    """A video could not be turned into frames; the message says why."""


@dataclass
class VideoClip:
    """Model-ready frames of one video plus what is needed to place them in time."""

    frames: torch.Tensor  # uint8 (T, C, H, W), already resized
    sample_fps: float  # frames per second of `frames`; second_per_grid_ts = 2 / sample_fps
    frame_indices: list[int]  # positions of the sampled frames in the source
    duration: float  # seconds: source frame count / source fps
    source_fps: float
    source_size: tuple[int, int]  # (height, width) of the source
    decoder: str  # "decord" or "pyav" (the one that produced the frames)
    source_num_frames: int = 0
    fallback_reason: str = ""  # why decord was abandoned for PyAV, empty otherwise
    container_duration: float = 0.0  # seconds the container's metadata claims (0: unknown)
    # Largest gap (seconds) between a frame's real timestamp and the constant-rate time index / fps that sampling
    # assumes (qwen-vl-utils does the same); large on variable-frame-rate files.
    timestamp_max_offset: float = 0.0

    @property
    def variable_frame_rate(self) -> bool:
        return self.timestamp_max_offset > max(VFR_TOLERANCE_S, 1.0 / max(self.source_fps, 1e-6))

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])


def short_error(error: BaseException, limit: int = 300) -> str:
    """``error`` as one line of at most ``limit`` characters (its type name when it has no message)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
