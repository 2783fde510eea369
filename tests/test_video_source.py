"""open_r1.video.source: the cache and the raw file give identical clips; what neither has is reported."""

import pytest
import torch

from open_r1.configs import VideoSettings
from open_r1.video import (
    VideoCache,
    VideoDecodeError,
    VideoSource,
    decode_video,
)

PAPER = VideoSettings()  # 2 fps, 3584*28*28 total pixels, 16*28*28 min pixels, 768 frames


def test_source_reads_cache_or_decodes_identically(tmp_path, clips):
    video_dir = clips["portrait"].parent
    on_the_fly = VideoSource(PAPER, video_dir=video_dir).get("portrait")
    cache = VideoCache(tmp_path / "cache")
    cache.save("portrait", decode_video(clips["portrait"]), PAPER)
    cached_source = VideoSource(PAPER, cache_dir=tmp_path / "cache", video_dir=video_dir)
    from_cache = cached_source.get("portrait")
    assert torch.equal(from_cache.frames, on_the_fly.frames)
    assert from_cache.sample_fps == on_the_fly.sample_fps
    assert from_cache.frame_indices == on_the_fly.frame_indices
    # Entries made with other settings are not served: the source decodes with its own.
    small = VideoSettings(total_pixels=8 * 28 * 28, min_pixels=4 * 28 * 28)
    other = VideoSource(small, cache_dir=tmp_path / "cache", video_dir=video_dir).get("portrait")
    assert torch.equal(other.frames, decode_video(clips["portrait"], small).frames)
    assert other.frames.shape[-2:] != from_cache.frames.shape[-2:]
    assert cached_source.missing(["portrait", "low_fps", "nowhere", "nowhere"]) == ["nowhere"]
    with pytest.raises(VideoDecodeError, match="no video file"):
        cached_source.get("nowhere")
