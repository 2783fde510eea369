"""qwen-vl-utils 0.0.14's rules for which frames a video gives and at what size (see :mod:`open_r1.video`)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from open_r1.configs import VideoSettings
from open_r1.video.clip import VideoDecodeError

# Qwen2.5-VL geometry and qwen-vl-utils 0.0.14 constants.
PATCH_SIZE = 14
SPATIAL_MERGE_SIZE = 2
IMAGE_FACTOR = PATCH_SIZE * SPATIAL_MERGE_SIZE  # frame sides are multiples of 28
FRAME_FACTOR = 2  # frame counts are multiples of the temporal patch
MIN_SAMPLED_FRAMES = 4  # qwen-vl-utils FPS_MIN_FRAMES
VIDEO_MAX_TOKEN_NUM = 768  # per-frame cap: 768 * 28 * 28 pixels
MAX_ASPECT_RATIO = 200
DEFAULT_SETTINGS = VideoSettings()  # the paper's settings


def _round_to(value: float, factor: int) -> int:
    return round(value / factor) * factor


def _floor_to(value: float, factor: int) -> int:
    return math.floor(value / factor) * factor


def _ceil_to(value: float, factor: int) -> int:
    return math.ceil(value / factor) * factor


def num_sampled_frames(total_frames: int, video_fps: float, settings: VideoSettings) -> int:
    """How many frames qwen-vl-utils samples from a ``total_frames`` video at ``video_fps`` (its ``smart_nframes``)."""
    if total_frames < FRAME_FACTOR:
        raise VideoDecodeError(
            f"video has {total_frames} decodable frame(s); Qwen2.5-VL needs at least {FRAME_FACTOR} "
            "(qwen-vl-utils rejects such clips too)"
        )
    if video_fps <= 0:
        raise VideoDecodeError(f"video reports a frame rate of {video_fps}")
    wanted = total_frames / video_fps * settings.fps
    lower = _ceil_to(MIN_SAMPLED_FRAMES, FRAME_FACTOR)
    upper = _floor_to(settings.max_frames, FRAME_FACTOR)
    return _floor_to(min(max(wanted, lower), upper, total_frames), FRAME_FACTOR)


def sampled_frame_indices(total_frames: int, num_frames: int) -> list[int]:
    """Evenly spread positions from the first to the last frame (float32 linspace, rounded half to even)."""
    return torch.linspace(0, total_frames - 1, num_frames).round().long().tolist()


def smart_resize(height: int, width: int, min_pixels: int, max_pixels: int, factor: int = IMAGE_FACTOR):
    """Target ``(height, width)``: multiples of ``factor``, about the same aspect ratio, pixels within bounds."""
    if min(height, width) <= 0:
        raise VideoDecodeError(f"video frames have an empty size {height}x{width}")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise VideoDecodeError(f"aspect ratio of {height}x{width} exceeds {MAX_ASPECT_RATIO}")
    new_h = max(factor, _round_to(height, factor))
    new_w = max(factor, _round_to(width, factor))
    if new_h * new_w > max_pixels:
        scale = math.sqrt(height * width / max_pixels)
        new_h = _floor_to(height / scale, factor)
        new_w = _floor_to(width / scale, factor)
    elif new_h * new_w < min_pixels:
        scale = math.sqrt(min_pixels / (height * width))
        new_h = _ceil_to(height * scale, factor)
        new_w = _ceil_to(width * scale, factor)
    return new_h, new_w


def frame_pixel_bounds(num_frames: int, settings: VideoSettings) -> tuple[int, float]:
    """Per-frame ``(min_pixels, max_pixels)``: the clip budget is shared by the frames (qwen-vl-utils ``fetch_video``)."""
    max_pixels = max(
        min(VIDEO_MAX_TOKEN_NUM * IMAGE_FACTOR * IMAGE_FACTOR, settings.total_pixels / num_frames * FRAME_FACTOR),
        int(settings.min_pixels * 1.05),
    )
    return settings.min_pixels, max_pixels


def resized_frame_size(height: int, width: int, num_frames: int, settings: VideoSettings) -> tuple[int, int]:
    min_pixels, max_pixels = frame_pixel_bounds(num_frames, settings)
    return smart_resize(height, width, min_pixels=min_pixels, max_pixels=max_pixels)


def resize_frames(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic, antialiased resize of uint8 ``(T, C, H, W)`` frames, rounded back to uint8."""
    if tuple(frames.shape[-2:]) == tuple(size):
        # torchvision's resize returns the input untouched when the size already matches.
        return frames.contiguous()
    resized = F.interpolate(frames.float(), size=list(size), mode="bicubic", align_corners=False, antialias=True)
    return resized.clamp_(0, 255).round_().to(torch.uint8)
