"""open_r1.video.cache: entries read back exactly, are plain safetensors, and damage or other settings are refused."""

import json

import pytest
import torch
from _video_utils import REAL_VIDEOS

from open_r1.configs import VideoSettings
from open_r1.video import (
    VideoCache,
    decode_video,
)

PAPER = VideoSettings()  # 2 fps, 3584*28*28 total pixels, 16*28*28 min pixels, 768 frames


def test_cache_round_trip_is_exact(tmp_path):
    clip = decode_video(REAL_VIDEOS["carphone_pristine"])
    cache = VideoCache(tmp_path)
    size = cache.save("carphone", clip, PAPER)
    assert size == (tmp_path / "carphone.safetensors").stat().st_size
    assert size < clip.frames.numel() + 16_384  # raw uint8 plus a small header
    loaded = cache.load("carphone", PAPER)
    assert torch.equal(loaded.frames, clip.frames)
    for name in (
        "sample_fps",
        "frame_indices",
        "duration",
        "source_fps",
        "source_size",
        "decoder",
        "source_num_frames",
    ):
        assert getattr(loaded, name) == getattr(clip, name), name
    assert not list(tmp_path.glob("*.tmp"))


def test_cache_file_is_plain_safetensors_without_pickle(tmp_path):
    from safetensors import safe_open

    VideoCache(tmp_path).save("clip", decode_video(REAL_VIDEOS["carphone_pristine"]), PAPER)
    with safe_open(tmp_path / "clip.safetensors", framework="pt") as handle:
        assert list(handle.keys()) == ["frames"]
        meta = handle.metadata()
    assert json.loads(meta["settings"]) == {
        "fps": 2.0,
        "total_pixels": 3584 * 28 * 28,
        "min_pixels": 12544,
        "max_frames": 768,
    }
    assert float(meta["sample_fps"]) == pytest.approx(1.998, abs=1e-3)
    assert meta["decoder"] == "decord" and meta["source_width"] == "176"


def test_cache_detects_damage_and_other_settings(tmp_path):
    cache = VideoCache(tmp_path)
    cache.save("clip", decode_video(REAL_VIDEOS["carphone_pristine"]), PAPER)
    assert cache.has("clip", PAPER)
    assert "other settings" in cache.problem("clip", VideoSettings(fps=1.0))
    path = tmp_path / "clip.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    assert "truncated" in cache.problem("clip")
    path.write_bytes(b"\x01")
    assert "truncated" in cache.problem("clip")
    assert cache.problem("absent") == "no cache entry"
    with pytest.raises(ValueError):
        cache.path("../escape")
