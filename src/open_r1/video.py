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

The cache (:class:`VideoCache`) stores one safetensors file per video; :class:`VideoSource` reads the cache and falls
back to decoding the raw file, with identical results.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from open_r1.configs import VideoSettings

logger = logging.getLogger(__name__)

# Qwen2.5-VL geometry and qwen-vl-utils 0.0.14 constants.
PATCH_SIZE = 14
SPATIAL_MERGE_SIZE = 2
IMAGE_FACTOR = PATCH_SIZE * SPATIAL_MERGE_SIZE  # frame sides are multiples of 28
FRAME_FACTOR = 2  # frame counts are multiples of the temporal patch
MIN_SAMPLED_FRAMES = 4  # qwen-vl-utils FPS_MIN_FRAMES
VIDEO_MAX_TOKEN_NUM = 768  # per-frame cap: 768 * 28 * 28 pixels
MAX_ASPECT_RATIO = 200

DECODERS = ("decord", "pyav")
CACHE_FORMAT_VERSION = "1"
DEFAULT_SETTINGS = VideoSettings()  # the paper's settings
# Frames decoded and resized together; bounds memory on long, high-resolution videos.
_CHUNK_FRAMES = 32


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

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])


# ----------------------------------------------------------------------------------------------------------------
# Sampling and resizing rules


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


# ----------------------------------------------------------------------------------------------------------------
# Decoders


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
        raise VideoDecodeError(f"decord cannot open the file: {_short(error)}") from error
    total_frames, video_fps = len(reader), float(reader.get_avg_fps())
    if total_frames == 0:
        raise VideoDecodeError("video has no frames")
    height, width = reader[0].shape[:2]
    indices, size = _plan(total_frames, video_fps, height, width, settings)
    chunks = []
    try:
        for start in range(0, len(indices), _CHUNK_FRAMES):
            batch = reader.get_batch(indices[start : start + _CHUNK_FRAMES]).asnumpy()
            chunks.append(resize_frames(torch.from_numpy(batch).permute(0, 3, 1, 2), size))
    except Exception as error:
        raise VideoDecodeError(f"decord failed while reading frames: {_short(error)}") from error
    return _decoded_clip(torch.cat(chunks), indices, total_frames, video_fps, (height, width), "decord")


def _pyav_stream_info(path: Path):
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise VideoDecodeError("file has no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        size = (stream.codec_context.height, stream.codec_context.width)
        packets = sum(1 for packet in container.demux(stream) if packet.size > 0)
        return packets, float(rate) if rate else 0.0, size


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
                if len(pending) >= _CHUNK_FRAMES:
                    flush()
            count += 1
    flush()
    return kept, count


def _decode_pyav(path: Path, settings: VideoSettings) -> VideoClip:
    import av

    try:
        total_frames, video_fps, (height, width) = _pyav_stream_info(path)
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
        raise VideoDecodeError(f"PyAV cannot decode the file: {_short(error)}") from error
    return _decoded_clip(
        torch.stack([kept[i] for i in indices]), indices, total_frames, video_fps, (height, width), "pyav"
    )


def _short(error: BaseException, limit: int = 300) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
    if not path.is_file():
        raise VideoDecodeError(f"file not found: {path}")
    if path.stat().st_size == 0:
        raise VideoDecodeError(f"file is empty (0 bytes): {path}")
    if decoder == "pyav":
        return _decode_pyav(path, settings)
    try:
        return _decode_decord(path, settings, num_threads)
    except VideoDecodeError as decord_error:
        try:
            clip = _decode_pyav(path, settings)
        except VideoDecodeError as pyav_error:
            raise VideoDecodeError(f"{decord_error}; PyAV fallback: {pyav_error}") from pyav_error
        logger.info("decord failed on %s (%s); decoded with PyAV", path, decord_error)
        clip.fallback_reason = str(decord_error)
        return clip


# ----------------------------------------------------------------------------------------------------------------
# Cache


def settings_key(settings: VideoSettings) -> dict:
    return {
        "fps": float(settings.fps),
        "total_pixels": int(settings.total_pixels),
        "min_pixels": int(settings.min_pixels),
        "max_frames": int(settings.max_frames),
    }


class CacheEntryError(RuntimeError):
    """A cache entry is absent, damaged, or was made with other settings; the message says which."""


class VideoCache:
    """One ``<video_id>.safetensors`` file per video under ``root``.

    Each file holds one tensor, ``frames`` (uint8, ``(T, C, H, W)``), and string metadata in the safetensors header:
    ``format_version, video_id, sample_fps, frame_indices (JSON list), duration, source_fps, source_height,
    source_width, source_num_frames, decoder, fallback_reason, settings (JSON)``. Floats are stored with ``repr`` so
    they read back bit-exact. Reading memory-maps the file (no pickle).
    """

    SUFFIX = ".safetensors"

    def __init__(self, root):
        self.root = Path(root)

    def path(self, video_id: str) -> Path:
        if not video_id or "/" in video_id or os.sep in video_id or video_id.startswith("."):
            raise ValueError(f"video id {video_id!r} cannot name a cache file")
        return self.root / f"{video_id}{self.SUFFIX}"

    def has(self, video_id: str, settings: VideoSettings | None = None) -> bool:
        """Whether a complete entry exists (and, given ``settings``, was made with them)."""
        return self.problem(video_id, settings) is None

    def problem(self, video_id: str, settings: VideoSettings | None = None) -> str | None:
        """Why the entry cannot be used, or None when it is complete (and matches ``settings`` when given)."""
        try:
            self._read_header(video_id, settings)
        except CacheEntryError as error:
            return str(error)
        return None

    def _read_header(self, video_id: str, settings: VideoSettings | None) -> dict:
        path = self.path(video_id)
        if not path.is_file():
            raise CacheEntryError("no cache entry")
        try:
            with open(path, "rb") as handle:
                head = handle.read(8)
                if len(head) < 8:
                    raise CacheEntryError("entry is truncated (no header)")
                header_size = int.from_bytes(head, "little")
                if header_size > 100_000_000:
                    raise CacheEntryError("entry header is corrupt")
                header = json.loads(handle.read(header_size))
        except (OSError, ValueError) as error:
            raise CacheEntryError(f"entry header is unreadable: {_short(error)}") from error
        try:
            info = header["frames"]
            meta = header["__metadata__"]
            end = int(info["data_offsets"][1])
        except (KeyError, TypeError, IndexError) as error:
            raise CacheEntryError("entry header lacks frames or metadata") from error
        if path.stat().st_size != 8 + header_size + end:
            raise CacheEntryError("entry is truncated (data shorter than its header says)")
        if meta.get("format_version") != CACHE_FORMAT_VERSION:
            raise CacheEntryError(
                f"entry has cache format {meta.get('format_version')}, expected {CACHE_FORMAT_VERSION}"
            )
        if settings is not None and json.loads(meta.get("settings", "{}")) != settings_key(settings):
            raise CacheEntryError(f"entry was made with other settings: {meta.get('settings')}")
        return meta

    def load(self, video_id: str, settings: VideoSettings | None = None) -> VideoClip:
        """Read an entry (memory-mapped). Raises :class:`CacheEntryError` if it is absent, damaged or mismatched."""
        from safetensors import SafetensorError, safe_open

        self._read_header(video_id, settings)
        try:
            with safe_open(self.path(video_id), framework="pt") as handle:
                meta = handle.metadata()
                frames = handle.get_tensor("frames")
        except (SafetensorError, OSError) as error:
            raise CacheEntryError(f"entry is unreadable: {_short(error)}") from error
        return clip_from_metadata(frames, meta)

    def save(self, video_id: str, clip: VideoClip, settings: VideoSettings) -> int:
        """Write an entry atomically (temporary file, then rename) and return its size in bytes."""
        from safetensors.torch import save_file

        path = self.path(video_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            save_file({"frames": clip.frames.contiguous()}, str(tmp), metadata=clip_metadata(video_id, clip, settings))
            os.chmod(tmp, 0o644)  # safetensors creates owner-only files; a shared cache must be readable by others
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        return path.stat().st_size


def clip_metadata(video_id: str, clip: VideoClip, settings: VideoSettings) -> dict[str, str]:
    return {
        "format_version": CACHE_FORMAT_VERSION,
        "video_id": video_id,
        "sample_fps": repr(float(clip.sample_fps)),
        "frame_indices": json.dumps([int(i) for i in clip.frame_indices]),
        "duration": repr(float(clip.duration)),
        "source_fps": repr(float(clip.source_fps)),
        "source_height": str(int(clip.source_size[0])),
        "source_width": str(int(clip.source_size[1])),
        "source_num_frames": str(int(clip.source_num_frames)),
        "decoder": clip.decoder,
        "fallback_reason": clip.fallback_reason,
        "settings": json.dumps(settings_key(settings), sort_keys=True),
    }


def clip_from_metadata(frames: torch.Tensor, meta: dict[str, str]) -> VideoClip:
    return VideoClip(
        frames=frames,
        sample_fps=float(meta["sample_fps"]),
        frame_indices=json.loads(meta["frame_indices"]),
        duration=float(meta["duration"]),
        source_fps=float(meta["source_fps"]),
        source_size=(int(meta["source_height"]), int(meta["source_width"])),
        decoder=meta["decoder"],
        source_num_frames=int(meta["source_num_frames"]),
        fallback_reason=meta.get("fallback_reason", ""),
    )


class VideoSource:
    """Frames for a video id: from the cache when it has a matching entry, else decoded from ``video_dir``.

    Both paths give identical tensors, so training and evaluation do not care whether preprocessing ran.
    """

    def __init__(self, settings: VideoSettings = DEFAULT_SETTINGS, cache_dir=None, video_dir=None, decoder="decord"):
        self.settings = settings
        self.cache = VideoCache(cache_dir) if cache_dir is not None else None
        self.video_dir = Path(video_dir) if video_dir is not None else None
        self.decoder = decoder
        self._warned_about_cache = False
        if self.cache is None and self.video_dir is None:
            raise ValueError("VideoSource needs a cache_dir, a video_dir, or both")

    def video_path(self, video_id: str) -> Path | None:
        if self.video_dir is None:
            return None
        from open_r1.data import find_video

        return find_video(self.video_dir, video_id)

    def get(self, video_id: str) -> VideoClip:
        """The clip for ``video_id``. Raises :class:`VideoDecodeError` when neither cache nor file can provide it."""
        cache_problem = "no cache folder given"
        if self.cache is not None:
            try:
                return self.cache.load(video_id, self.settings)
            except CacheEntryError as error:
                cache_problem = str(error)
                if cache_problem != "no cache entry" and not self._warned_about_cache:
                    # Usually a cache built with other --fps/--total_pixels: every video is then decoded again.
                    logger.warning("cache entry %s not used (%s); decoding the video instead", video_id, cache_problem)
                    self._warned_about_cache = True
        path = self.video_path(video_id)
        if path is None:
            where = f" in {self.video_dir}" if self.video_dir is not None else ""
            raise VideoDecodeError(f"{video_id}: {cache_problem}, and no video file{where}")
        return decode_video(path, self.settings, decoder=self.decoder)

    def missing(self, video_ids) -> list[str]:
        """The ids (in order, without repeats) that neither the cache nor the video folder can provide."""
        missing, seen = [], set()
        for video_id in video_ids:
            if video_id in seen:
                continue
            seen.add(video_id)
            if self.cache is not None and self.cache.has(video_id, self.settings):
                continue
            if self.video_path(video_id) is not None:
                continue
            missing.append(video_id)
        return missing


def describe_missing(source: VideoSource, video_ids, shown: int = 5) -> str | None:
    """None when ``source`` can provide every video; else how many are missing (videos and queries), the first ids,
    where they were looked for (absolute paths), and whether the cache holds them at other video settings."""
    video_ids = list(video_ids)
    missing = source.missing(video_ids)
    if not missing:
        return None
    missing_set = set(missing)
    num_rows = sum(video_id in missing_set for video_id in video_ids)
    where = []
    if source.cache is not None:
        where.append(f"cache {source.cache.root.resolve()}")
    if source.video_dir is not None:
        where.append(f"video folder {source.video_dir.resolve()}")
    message = (
        f"{len(missing)} of {len(set(video_ids))} videos ({num_rows} of {len(video_ids)} queries) are in neither "
        f"{' nor '.join(where)}; first missing: {', '.join(missing[:shown])}."
    )
    if source.cache is not None:
        other = [
            problem.split(": ", 1)[1]
            for problem in (source.cache.problem(video_id, source.settings) for video_id in missing)
            if problem and problem.startswith("entry was made with other settings")
        ]
        if other:
            message += (
                f" {len(other)} of them are cached at other settings ({other[0]}; this run asks for "
                f"{json.dumps(settings_key(source.settings))}): pass the video flags the cache was built with."
            )
    return message
