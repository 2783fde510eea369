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


def test_a_damaged_entry_is_caught_the_first_time_a_run_reads_it(tmp_path, clips, monkeypatch, caplog):
    import logging

    from open_r1.video import cache as cache_module

    cache = VideoCache(tmp_path / "cache")
    for name in ("portrait", "low_fps"):
        cache.save(name, decode_video(clips[name]), PAPER)
    path = cache.path("portrait")
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # one frame byte flipped after the entry was written; the header still checks out
    path.write_bytes(bytes(data))
    checksums = []
    real = cache_module.frames_sha256

    def counting(frames):
        checksums.append(1)
        return real(frames)

    monkeypatch.setattr(cache_module, "frames_sha256", counting)
    only_cache = VideoSource(PAPER, cache_dir=tmp_path / "cache")
    for _ in range(2):  # refused on every read, not only the first (training reads each video many times)
        with pytest.raises(VideoDecodeError, match="portrait: entry frames do not match their checksum"):
            only_cache.get("portrait")  # before: the flipped frames were returned
    for _ in range(3):
        only_cache.get("low_fps")
    assert len(checksums) == 3  # an intact entry is checked once per source, a damaged one on every read
    with_videos = VideoSource(PAPER, cache_dir=tmp_path / "cache", video_dir=clips["portrait"].parent)
    with caplog.at_level(logging.WARNING):
        clip = with_videos.get("portrait")
    assert "cache entry portrait not used (entry frames do not match their checksum" in caplog.text
    assert torch.equal(clip.frames, decode_video(clips["portrait"]).frames)  # decoded again from the file
