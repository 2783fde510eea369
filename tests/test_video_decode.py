"""open_r1.video.decode: decoded frames are the frames qwen-vl-utils would give the model; failures say why."""

import json

import numpy as np
import pytest
import torch
from _video_utils import REAL_VIDEOS, make_clip, random_frames
from qwen_vl_utils import vision_process

from open_r1.configs import VideoSettings
from open_r1.synthetic import make_grounding_dataset, write_video
from open_r1.video import (
    VideoDecodeError,
    decode_video,
)
from open_r1.video import decode as video_decode

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


def test_odd_size_video_written_and_read_back(tmp_path):
    frames = np.full((6, 31, 45, 3), 200, dtype=np.uint8)
    path = write_video(tmp_path / "odd.mp4", frames, fps=6)
    clip = decode_video(path)
    assert clip.source_size == (31, 45)
    assert abs(clip.frames.float().mean().item() - 200) < 3


@pytest.mark.parametrize("decoder", ["decord", "pyav"])
def test_large_frames_are_resized_in_bounded_chunks(tmp_path, monkeypatch, decoder):
    path = write_video(tmp_path / "big.mp4", random_frames(24, 480, 640), 8.0)
    budget = 8 * 2**20  # 8 MiB of float32 per chunk: 2 frames of 640x480
    monkeypatch.setattr(video_decode, "_CHUNK_BYTES", budget)
    seen = []
    real_resize = video_decode.resize_frames

    def recording(batch, size):
        seen.append(batch.shape[0] * batch.shape[2] * batch.shape[3] * 3 * 4)
        return real_resize(batch, size)

    monkeypatch.setattr(video_decode, "resize_frames", recording)
    chunked = decode_video(path, VideoSettings(fps=4.0), decoder=decoder)
    assert seen and max(seen) <= budget
    monkeypatch.setattr(video_decode, "_CHUNK_BYTES", 2**40)
    whole = decode_video(path, VideoSettings(fps=4.0), decoder=decoder)
    assert torch.equal(chunked.frames, whole.frames)  # chunking changes nothing but memory
