"""Decoders: a video file -> :class:`VideoClip` with decord (the paper's reader) or PyAV, and a cheap probe."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from open_r1.configs import VideoSettings
from open_r1.video.clip import VideoClip, VideoDecodeError, short_error
from open_r1.video.ids import file_problem
from open_r1.video.sampling import (
    DEFAULT_SETTINGS,
    num_sampled_frames,
    resize_frames,
    resized_frame_size,
    sampled_frame_indices,
)

logger = logging.getLogger(__name__)

DECODERS = ("decord", "pyav")
# Frames decoded and resized together: at most 32, fewer for large frames so that the float32 working copy of one
# chunk stays under _CHUNK_BYTES (a 4K frame is ~100 MB as float32; 32 of them were ~3 GB per worker).
_CHUNK_FRAMES = 32
_CHUNK_BYTES = 192 * 2**20


def chunk_frames(height: int, width: int) -> int:
    """How many source frames of ``height`` x ``width`` are decoded and resized at once."""
    return max(1, min(_CHUNK_FRAMES, _CHUNK_BYTES // max(1, height * width * 3 * 4)))


def _plan(total_frames: int, video_fps: float, height: int, width: int, settings: VideoSettings):
    num_frames = num_sampled_frames(total_frames, video_fps, settings)
    indices = sampled_frame_indices(total_frames, num_frames)
    size = resized_frame_size(height, width, num_frames, settings)
    return indices, size


def _decoded_clip(frames, indices, total_frames, video_fps, size, decoder) -> VideoClip:
    """A decoder's result; ``sample_fps`` is computed as qwen-vl-utils does (it sets ``second_per_grid_ts``)."""
    return VideoClip(
        frames=frames,
        sample_fps=len(indices) / max(total_frames, 1e-6) * video_fps,
        frame_indices=indices,
        duration=total_frames / video_fps,
        source_fps=video_fps,
        source_size=(int(size[0]), int(size[1])),
        decoder=decoder,
        source_num_frames=total_frames,
    )


def _decode_decord(path: Path, settings: VideoSettings, num_threads: int) -> VideoClip:
    import decord

    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=num_threads)
    except Exception as error:  # decord raises its own DECORDError and RuntimeError subclasses
        raise VideoDecodeError(f"decord cannot open the file: {short_error(error)}") from error
    total_frames, video_fps = len(reader), float(reader.get_avg_fps())
    if total_frames == 0:
        raise VideoDecodeError("video has no frames")
    height, width = reader[0].shape[:2]
    indices, size = _plan(total_frames, video_fps, height, width, settings)
    chunks = []
    step = chunk_frames(height, width)
    try:
        for start in range(0, len(indices), step):
            batch = reader.get_batch(indices[start : start + step]).asnumpy()
            chunks.append(resize_frames(torch.from_numpy(batch).permute(0, 3, 1, 2), size))
    except Exception as error:
        raise VideoDecodeError(f"decord failed while reading frames: {short_error(error)}") from error
    return _decoded_clip(torch.cat(chunks), indices, total_frames, video_fps, (height, width), "decord")


@dataclass
class _StreamInfo:
    packets: int  # non-empty packets: the frame count the container promises
    fps: float
    size: tuple[int, int]
    container_duration: float  # seconds the metadata claims (0: unknown)
    timestamps: list[float]  # packet presentation times in seconds, sorted, from the first


def _pyav_stream_info(path: Path) -> _StreamInfo:
    """What the container says about its first video stream; demuxes packets (cheap: nothing is decoded)."""
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise VideoDecodeError("file has no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        size = (stream.codec_context.height, stream.codec_context.width)
        pts, packets = [], 0
        for packet in container.demux(stream):
            if packet.size > 0:
                packets += 1
                if packet.pts is not None and stream.time_base:
                    pts.append(float(packet.pts * stream.time_base))
        pts.sort()
        timestamps = [t - pts[0] for t in pts] if len(pts) == packets else []
        return _StreamInfo(
            packets, float(rate) if rate else 0.0, size, _claimed_duration(container, stream), timestamps
        )


def _claimed_duration(container, stream) -> float:
    """Seconds the metadata claims for ``stream`` (the stream's own duration, else the container's); 0 if none."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return container.duration / 1e6 if container.duration else 0.0


def timestamp_max_offset(timestamps: list[float], fps: float) -> float:
    """Largest ``|timestamp_i - i / fps|``: how far constant-rate timing (what qwen-vl-utils assumes) is off."""
    if not timestamps or fps <= 0:
        return 0.0
    return max(abs(t - i / fps) for i, t in enumerate(timestamps))


def _add_timing(clip: VideoClip, info: _StreamInfo) -> VideoClip:
    clip.container_duration = info.container_duration
    clip.timestamp_max_offset = timestamp_max_offset(info.timestamps, clip.source_fps)
    return clip


def _pyav_frames(path: Path, wanted: list[int], size: tuple[int, int] | None):
    """Decode the whole stream once, keeping (resized) frames at ``wanted``; also returns the decoded frame count."""
    import av

    wanted_set = set(wanted)
    kept: dict[int, torch.Tensor] = {}
    pending_idx: list[int] = []
    pending: list[np.ndarray] = []

    def flush():
        if pending:
            batch = torch.from_numpy(np.stack(pending)).permute(0, 3, 1, 2)
            resized = resize_frames(batch, size) if size is not None else batch
            kept.update(zip(pending_idx, resized, strict=True))
            pending.clear()
            pending_idx.clear()

    count = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            if count in wanted_set:
                pending.append(frame.to_ndarray(format="rgb24"))
                pending_idx.append(count)
                if len(pending) >= chunk_frames(frame.height, frame.width):
                    flush()
            count += 1
    flush()
    return kept, count


def _decode_pyav(path: Path, settings: VideoSettings) -> VideoClip:
    import av

    try:
        info = _pyav_stream_info(path)
        total_frames, video_fps, (height, width) = info.packets, info.fps, info.size
        if total_frames == 0:
            raise VideoDecodeError("video has no frames")
        # The packet count is what the container promises; the decoded count is the truth. Plan with the first and
        # decode again only if they disagree.
        indices, size = _plan(total_frames, video_fps, height, width, settings)
        kept, decoded = _pyav_frames(path, indices, size)
        if decoded == 0:
            raise VideoDecodeError("video has no decodable frames")
        if decoded != total_frames:
            total_frames = decoded
            indices, size = _plan(total_frames, video_fps, height, width, settings)
            kept, _ = _pyav_frames(path, indices, size)
    except VideoDecodeError:
        raise
    except (av.FFmpegError, OSError, ValueError) as error:
        raise VideoDecodeError(f"PyAV cannot decode the file: {short_error(error)}") from error
    clip = _decoded_clip(
        torch.stack([kept[i] for i in indices]), indices, total_frames, video_fps, (height, width), "pyav"
    )
    return _add_timing(clip, info)


def decode_video(
    path, settings: VideoSettings = DEFAULT_SETTINGS, decoder: str = "decord", num_threads: int = 0
) -> VideoClip:
    """Decode ``path`` into model-ready frames following qwen-vl-utils' sampling and resizing rules.

    Args:
        path: video file (any container ffmpeg reads: mp4, webm, mkv, avi, ...).
        settings: sampling rate, pixel budgets and frame cap.
        decoder: ``"decord"`` (the paper's reader; on failure the file is retried with PyAV and the clip records
            why in ``fallback_reason``) or ``"pyav"``.
        num_threads: decord decoding threads (0: decord's default).

    Raises:
        VideoDecodeError: missing, empty, corrupt or undecodable file, or fewer than 2 frames; the message says which.
    """
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; choose one of {', '.join(DECODERS)}")
    path = Path(path)
    problem = file_problem(path)
    if problem is not None:
        raise VideoDecodeError(problem)
    if decoder == "pyav":
        return _decode_pyav(path, settings)
    try:
        clip = _decode_decord(path, settings, num_threads)
    except VideoDecodeError as decord_error:
        try:
            clip = _decode_pyav(path, settings)
        except VideoDecodeError as pyav_error:
            raise VideoDecodeError(f"{decord_error}; PyAV fallback: {pyav_error}") from pyav_error
        logger.info("decord failed on %s (%s); decoded with PyAV", path, decord_error)
        clip.fallback_reason = str(decord_error)
        return clip
    try:  # the container's claimed duration and the frames' real timestamps, which decord does not expose
        _add_timing(clip, _pyav_stream_info(path))
    except Exception as error:  # PyAV reading what decord read is not required; the clip stays usable
        logger.debug("no container timing for %s: %s", path, error)
    return clip


def probe_video(path) -> float | None:
    """Open ``path`` with PyAV and decode its first frame: cheap (no full decode), catches missing, empty, corrupt and
    stream-less files. Returns the container's claimed duration in seconds (None when it claims none)."""
    import av

    problem = file_problem(path)
    if problem is not None:
        raise VideoDecodeError(problem)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoDecodeError(f"file has no video stream: {os.path.abspath(path)}")
            stream = container.streams.video[0]
            if next(container.decode(stream), None) is None:
                raise VideoDecodeError(f"no frame decodes: {os.path.abspath(path)}")
            return _claimed_duration(container, stream) or None
    except (av.FFmpegError, OSError, ValueError) as error:
        raise VideoDecodeError(f"cannot decode {os.path.abspath(path)}: {short_error(error)}") from error
