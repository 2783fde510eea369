"""Decode a video into the frames Qwen2.5-VL sees, and read them back from the preprocessing cache.

Frame sampling and resizing reproduce qwen-vl-utils 0.0.14 (``fetch_video`` with the decord reader) for the settings
in :class:`open_r1.configs.VideoSettings`:

* frame count (``smart_nframes``): ``duration * fps`` frames, at least 4, at most ``max_frames`` and the number of
  frames in the file, rounded down to a multiple of 2 (the temporal patch);
* frame positions: ``linspace(0, total_frames - 1, nframes)`` rounded to the nearest index;
* frame size (``smart_resize``): multiples of 28, aspect ratio kept, per-frame pixels between ``min_pixels`` and
  ``max(min(768 * 28 * 28, total_pixels / nframes * 2), int(min_pixels * 1.05))``;
* bicubic resize with antialiasing, rounded and clamped to uint8 (what torchvision does to uint8 input before
  qwen-vl-utils casts it to float, so nothing is lost by caching uint8);
* ``sample_fps = nframes / total_frames * video_fps``, which the processor turns into ``second_per_grid_ts``.

One module per job:

* :mod:`~open_r1.video.ids` — the one video-id rule (an id is a plain file name) and :func:`find_video`;
* :mod:`~open_r1.video.clip` — :class:`VideoClip` and :class:`VideoDecodeError`;
* :mod:`~open_r1.video.sampling` — the frame count, positions and size rules above;
* :mod:`~open_r1.video.decode` — decord / PyAV decoding (:func:`decode_video`), the cheap :func:`probe_video`, VFR
  timing;
* :mod:`~open_r1.video.cache` — :class:`VideoCache`, one safetensors file per video (validated headers, checksums,
  atomic writes);
* :mod:`~open_r1.video.source` — :class:`VideoSource` reads the cache and falls back to decoding the raw file, with
  identical results; :func:`describe_missing` reports what neither can provide.
"""

from open_r1.video.cache import (
    CACHE_FORMAT_VERSION,
    CacheEntryError,
    VideoCache,
    checksum_problem,
    clip_from_metadata,
    clip_metadata,
    frames_sha256,
    header_problem,
    settings_key,
)
from open_r1.video.clip import VFR_TOLERANCE_S, VideoClip, VideoDecodeError
from open_r1.video.decode import DECODERS, chunk_frames, decode_video, probe_video, timestamp_max_offset
from open_r1.video.ids import (
    MAX_VIDEO_ID_BYTES,
    VIDEO_EXTENSIONS,
    InvalidVideoId,
    check_video_id,
    file_problem,
    find_video,
    video_id_problem,
)
from open_r1.video.sampling import (
    DEFAULT_SETTINGS,
    FRAME_FACTOR,
    IMAGE_FACTOR,
    frame_pixel_bounds,
    num_sampled_frames,
    resize_frames,
    resized_frame_size,
    sampled_frame_indices,
    smart_resize,
)
from open_r1.video.source import VideoSource, describe_missing

__all__ = [
    "CACHE_FORMAT_VERSION",
    "DECODERS",
    "DEFAULT_SETTINGS",
    "FRAME_FACTOR",
    "IMAGE_FACTOR",
    "MAX_VIDEO_ID_BYTES",
    "VFR_TOLERANCE_S",
    "VIDEO_EXTENSIONS",
    "CacheEntryError",
    "InvalidVideoId",
    "VideoCache",
    "VideoClip",
    "VideoDecodeError",
    "VideoSource",
    "check_video_id",
    "checksum_problem",
    "chunk_frames",
    "clip_from_metadata",
    "clip_metadata",
    "decode_video",
    "describe_missing",
    "file_problem",
    "find_video",
    "frame_pixel_bounds",
    "frames_sha256",
    "header_problem",
    "num_sampled_frames",
    "probe_video",
    "resize_frames",
    "resized_frame_size",
    "sampled_frame_indices",
    "settings_key",
    "smart_resize",
    "timestamp_max_offset",
    "video_id_problem",
]
