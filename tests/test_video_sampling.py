"""open_r1.video.sampling: frame count, positions and size equal qwen-vl-utils' own functions."""

import itertools

import pytest
import torch
from qwen_vl_utils import vision_process

from open_r1.configs import VideoSettings
from open_r1.video import (
    frame_pixel_bounds,
    num_sampled_frames,
    resized_frame_size,
    sampled_frame_indices,
    smart_resize,
)

PAPER = VideoSettings()  # 2 fps, 3584*28*28 total pixels, 16*28*28 min pixels, 768 frames


# The rules, checked against qwen-vl-utils' own functions over a grid


def test_frame_count_matches_qwen_vl_utils_on_a_grid():
    for total, fps, cap in itertools.product(
        [2, 3, 4, 5, 9, 31, 250, 901, 30000], [3.0, 23.976, 25.0, 29.97, 60.0], [6, 7, 768]
    ):
        settings = VideoSettings(max_frames=cap)
        element = {"fps": settings.fps, "max_frames": cap}
        assert num_sampled_frames(total, fps, settings) == vision_process.smart_nframes(element, total, fps), (
            total,
            fps,
            cap,
        )


@pytest.mark.parametrize(
    ("total_frames", "video_fps", "max_frames", "expected"),
    [
        (750, 25.0, 768, 60),  # a 30 s Charades clip: 2 frames per second
        (10, 30.0, 768, 4),  # a third of a second still gets qwen-vl-utils' minimum of 4 frames
        (3, 30.0, 768, 2),  # ...unless the file has fewer: rounded down to the temporal patch of 2
        (216_000, 30.0, 768, 768),  # a 2-hour video hits the frame cap
        (216_000, 30.0, 7, 6),  # caps are rounded down to an even count
    ],
)
def test_frame_count_cases(total_frames, video_fps, max_frames, expected):
    assert num_sampled_frames(total_frames, video_fps, VideoSettings(max_frames=max_frames)) == expected


def test_frame_positions_span_the_video_like_linspace():
    assert sampled_frame_indices(750, 60)[:3] == [0, 13, 25]
    assert sampled_frame_indices(750, 60)[-1] == 749
    for total, count in [(250, 20), (45, 4), (901, 60), (3, 2)]:
        expected = torch.linspace(0, total - 1, count).round().long().tolist()
        assert sampled_frame_indices(total, count) == expected


def test_resize_matches_qwen_vl_utils_on_a_grid():
    for (height, width), frames in itertools.product(
        [(720, 1280), (1080, 1920), (272, 640), (144, 176), (33, 47), (1920, 1080), (360, 480), (28, 5000)],
        [2, 4, 20, 60, 768],
    ):
        low, high = frame_pixel_bounds(frames, PAPER)
        assert smart_resize(height, width, low, high) == vision_process.smart_resize(
            height, width, factor=28, min_pixels=low, max_pixels=high
        )


def test_pixel_budget_is_shared_by_the_frames():
    # 60 frames of 720p: at most 3584*28*28 * 2 / 60 pixels per frame -> 224x392 = 8x14 merged tokens per
    # 2-frame temporal patch; 30 patches x 112 = 3360 tokens, within the paper's 3584.
    assert resized_frame_size(720, 1280, 60, PAPER) == (224, 392)
    # A short clip is capped per frame at 768 tokens (768*28*28 pixels), not by the clip budget.
    assert resized_frame_size(720, 1280, 4, PAPER) == (560, 1008)
    # 768 frames would get 7317 pixels each; the floor of int(min_pixels * 1.05) = 13171 wins, then the size is
    # rounded down to multiples of 28 (so it may end slightly under min_pixels, as in qwen-vl-utils).
    assert frame_pixel_bounds(768, PAPER) == (12544, 13171)
    assert resized_frame_size(720, 1280, 768, PAPER) == (84, 140)
