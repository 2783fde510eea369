"""Frames decoded by open_r1.video are the frames qwen-vl-utils would give the model, and the cache returns them."""

import itertools
import json

import numpy as np
import pytest
import torch
from _video_utils import REAL_VIDEOS, make_clip
from qwen_vl_utils import vision_process

from open_r1.configs import VideoSettings
from open_r1.synthetic import make_grounding_dataset, write_video
from open_r1.video import (
    VideoCache,
    VideoDecodeError,
    VideoSource,
    decode_video,
    frame_pixel_bounds,
    num_sampled_frames,
    resized_frame_size,
    sampled_frame_indices,
    smart_resize,
)

PAPER = VideoSettings()  # 2 fps, 3584*28*28 total pixels, 16*28*28 min pixels, 768 frames


def reference(path, settings=PAPER):
    """qwen-vl-utils' answer (decord reader), as TimeZero called it: float frames and sample fps."""
    element = {
        "type": "video",
        "video": str(path),
        "fps": settings.fps,
        "total_pixels": settings.total_pixels,
        "min_pixels": settings.min_pixels,
        "max_frames": settings.max_frames,
    }
    (frames, metadata), sample_fps = vision_process.fetch_video(
        element, return_video_sample_fps=True, return_video_metadata=True
    )
    return frames, metadata, sample_fps


@pytest.fixture(autouse=True)
def decord_reference(monkeypatch):
    # qwen-vl-utils picks torchcodec when installed; the paper (and our default) read with decord.
    monkeypatch.setattr(vision_process, "get_video_reader_backend", lambda: "decord")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Synthetic files covering frame rates, odd sizes, a portrait frame and a VP9 webm."""
    root = tmp_path_factory.mktemp("clips")
    return {
        "ntsc_odd": make_clip(root / "ntsc_odd.mp4", 45, size=(33, 47), fps=30000 / 1001),
        "portrait": make_clip(root / "portrait.mp4", 24, size=(96, 54), fps=12),
        "low_fps": make_clip(root / "low_fps.mp4", 9, size=(48, 96), fps=3),
        "vp9": make_clip(root / "vp9.webm", 20, size=(48, 64), fps=10, codec="libvpx-vp9"),
        "one_frame": make_clip(root / "one_frame.mp4", 1, size=(48, 64), fps=25),
        # 42.5 s -> 84 sampled frames: read and resized in several chunks, unlike qwen-vl-utils' single batch.
        "long": make_clip(root / "long.mp4", 170, size=(48, 64), fps=4),
        # decord 0.6 mis-sizes the rows of some narrow frames (48 or 72 pixels wide) and refuses to read them.
        "narrow": make_clip(root / "narrow.mp4", 20, size=(32, 48), fps=10),
    }


# ---------------------------------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------------------------------
# Decoded frames against qwen-vl-utils' fetch_video


def assert_same_as_reference(clip, path, settings=PAPER):
    frames, metadata, sample_fps = reference(path, settings)
    assert clip.frames.dtype == torch.uint8
    assert tuple(clip.frames.shape) == tuple(frames.shape)
    assert clip.frame_indices == list(metadata["frames_indices"])
    assert clip.sample_fps == sample_fps  # exact: it becomes second_per_grid_ts
    assert clip.source_fps == metadata["fps"]
    assert clip.source_num_frames == metadata["total_num_frames"]
    # qwen-vl-utils returns float frames; they are uint8 values before the cast, so rounding loses nothing.
    difference = (clip.frames.float() - frames).abs()
    assert difference.max().item() <= 1
    assert difference.mean().item() < 0.01


@pytest.mark.parametrize("name", sorted(REAL_VIDEOS))
def test_real_videos_match_qwen_vl_utils(name):
    path = REAL_VIDEOS[name]
    clip = decode_video(path)
    assert clip.decoder == "decord"
    assert_same_as_reference(clip, path)


def test_default_decode_is_timezero_process_vision_info_call():
    # TimeZero's message: total_pixels and min_pixels only, qwen-vl-utils' defaults (2 fps, 768 frames) for the rest.
    path = REAL_VIDEOS["carphone_pristine"]
    video = {"type": "video", "video": str(path), "total_pixels": 3584 * 28 * 28, "min_pixels": 16 * 28 * 28}
    messages = [{"role": "user", "content": [video, {"type": "text", "text": "the person waves."}]}]
    _, videos, kwargs = vision_process.process_vision_info(messages, return_video_kwargs=True)
    clip = decode_video(path)
    assert torch.equal(clip.frames.float(), videos[0])
    assert kwargs["fps"] == [clip.sample_fps]


@pytest.mark.parametrize("name", ["ntsc_odd", "portrait", "low_fps", "long"])
def test_synthetic_videos_match_qwen_vl_utils(clips, name):
    assert_same_as_reference(decode_video(clips[name]), clips[name])


def test_real_video_shapes_and_timing():
    clip = decode_video(REAL_VIDEOS["bikes"])  # 250 frames of 640x272 at 25 fps
    assert clip.frames.shape == (20, 3, 280, 644)
    assert clip.sample_fps == 2.0
    assert clip.duration == 10.0
    assert clip.source_size == (272, 640)
    assert (clip.source_fps, clip.source_num_frames) == (25.0, 250)


def test_portrait_keeps_orientation(clips):
    clip = decode_video(clips["portrait"])  # 54 wide, 96 high
    height, width = clip.frames.shape[-2:]
    assert height > width and height % 28 == 0 and width % 28 == 0
    assert clip.source_size == (96, 54)


def test_frame_cap_on_a_long_clip(tmp_path):
    path = make_clip(tmp_path / "long.mp4", 80, size=(32, 64), fps=10)  # 8 s would give 16 frames at 2 fps
    settings = VideoSettings(max_frames=7)
    clip = decode_video(path, settings)
    assert clip.num_frames == 6
    assert clip.frame_indices == [0, 16, 32, 47, 63, 79]
    assert clip.sample_fps == pytest.approx(6 / 80 * 10)
    assert_same_as_reference(clip, path, settings)


def test_frames_land_at_the_right_times(tmp_path):
    annotation, video_dir = make_grounding_dataset(tmp_path, num_videos=1, seed=3, duration=8.0, fps=4.0)
    record = json.loads(annotation.read_text())["synth_000"]
    (start, end), color = record["timestamps"][0], record["sentences"][0].split()[1]
    clip = decode_video(video_dir / "synth_000.mp4")
    times = np.array(clip.frame_indices) / clip.source_fps
    visible = clip.frames.float().amax(dim=(1, 2, 3)) > 150  # the shape is bright, the background dark
    assert visible.tolist() == ((times >= start) & (times < end)).tolist(), color


# ---------------------------------------------------------------------------------------------------------------------
# Decoders and failures


@pytest.mark.parametrize("name", ["ntsc_odd", "long"])
def test_pyav_gives_the_same_frames_as_decord(clips, name):
    by_decord = decode_video(clips[name], decoder="decord")
    by_pyav = decode_video(clips[name], decoder="pyav")
    assert by_pyav.decoder == "pyav"
    assert by_pyav.frame_indices == by_decord.frame_indices
    assert by_pyav.sample_fps == pytest.approx(by_decord.sample_fps)
    assert (by_pyav.frames.int() - by_decord.frames.int()).abs().max().item() <= 2


def test_vp9_webm_decodes_like_the_mp4_path(clips):
    by_decord = decode_video(clips["vp9"])
    by_pyav = decode_video(clips["vp9"], decoder="pyav")
    assert by_decord.num_frames == 4 and by_decord.sample_fps == pytest.approx(2.0)
    assert (by_pyav.frames.int() - by_decord.frames.int()).abs().max().item() <= 2
    # The white square slides; the frames must differ (not a repeated first frame).
    assert not torch.equal(by_decord.frames[0], by_decord.frames[-1])


def test_decord_failure_falls_back_to_pyav_and_says_why(clips):
    clip = decode_video(clips["narrow"])
    assert clip.decoder == "pyav"
    assert "decord failed" in clip.fallback_reason
    assert clip.num_frames == 4 and clip.frame_indices == [0, 6, 13, 19]
    assert torch.equal(clip.frames, decode_video(clips["narrow"], decoder="pyav").frames)


@pytest.mark.parametrize("decoder", ["decord", "pyav"])
def test_one_frame_clip_is_rejected_with_a_reason(clips, decoder):
    with pytest.raises(VideoDecodeError, match="1 decodable frame"):
        decode_video(clips["one_frame"], decoder=decoder)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda path: None, "file not found"),
        (lambda path: path.write_bytes(b""), "empty"),
        (lambda path: path.write_bytes(REAL_VIDEOS["bikes"].read_bytes()[:4000]), "PyAV fallback"),
        (lambda path: path.write_bytes(b"\x00not a video\x00" * 64), "PyAV fallback"),
    ],
    ids=["missing", "zero_length", "truncated", "garbage"],
)
def test_bad_files_raise_a_clear_error(tmp_path, make, message):
    path = tmp_path / "bad.mp4"
    make(path)
    with pytest.raises(VideoDecodeError, match=message):
        decode_video(path)


def test_unknown_decoder_is_refused():
    with pytest.raises(ValueError, match="decord, pyav"):
        decode_video(REAL_VIDEOS["bikes"], decoder="opencv")


# ---------------------------------------------------------------------------------------------------------------------
# Cache and source


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


def test_odd_size_video_written_and_read_back(tmp_path):
    frames = np.full((6, 31, 45, 3), 200, dtype=np.uint8)
    path = write_video(tmp_path / "odd.mp4", frames, fps=6)
    clip = decode_video(path)
    assert clip.source_size == (31, 45)
    assert abs(clip.frames.float().mean().item() - 200) < 3
