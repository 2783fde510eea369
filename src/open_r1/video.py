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

import errno
import hashlib
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
# Frames decoded and resized together: at most 32, fewer for large frames so that the float32 working copy of one
# chunk stays under _CHUNK_BYTES (a 4K frame is ~100 MB as float32; 32 of them were ~3 GB per worker).
_CHUNK_FRAMES = 32
_CHUNK_BYTES = 192 * 2**20
# A frame whose real timestamp is this far (and more than one frame interval) from index / fps marks the file as
# variable-frame-rate.
VFR_TOLERANCE_S = 0.1


def chunk_frames(height: int, width: int) -> int:
    """How many source frames of ``height`` x ``width`` are decoded and resized at once."""
    return max(1, min(_CHUNK_FRAMES, _CHUNK_BYTES // max(1, height * width * 3 * 4)))


class VideoDecodeError(RuntimeError):
    """A video could not be turned into frames; the message says why."""


class InvalidVideoId(ValueError):
    """A video id that cannot name a file inside the video folder or the cache; the message says why."""


# Cache files are "<id>.safetensors" and are written as ".<id>.safetensors.<pid>.tmp" first: 200 bytes of id leave
# room for both under the usual 255-byte file name limit.
MAX_VIDEO_ID_BYTES = 200


def video_id_problem(video_id) -> str | None:
    """Why ``video_id`` cannot name a video file inside its folder (or a cache entry), or None when it can.

    The one rule for preprocessing, training and evaluation: an id is a plain file name, so ``folder / id`` stays
    inside the folder. Refused: empty ids, path separators (``../x``, ``/abs/path``), names starting with ``.``
    (``..``, hidden files, macOS ``._x`` AppleDouble files), control characters, and ids over
    :data:`MAX_VIDEO_ID_BYTES` bytes.
    """
    if not isinstance(video_id, str):
        return f"is a {type(video_id).__name__}, not a string"
    if not video_id:
        return "is empty"
    if any(sep in video_id for sep in ("/", "\\", os.sep, os.altsep or "/")):
        return "contains a path separator (an id names a file inside the video folder)"
    if video_id.startswith("."):
        return "starts with '.' (hidden files, '..' and macOS '._' files are not videos)"
    if any(ord(char) < 32 or ord(char) == 127 for char in video_id):
        return "contains control characters"
    size = len(video_id.encode("utf-8", "surrogatepass"))
    if size > MAX_VIDEO_ID_BYTES:
        return f"is {size} bytes long (at most {MAX_VIDEO_ID_BYTES}: it must fit a file name)"
    return None


def check_video_id(video_id) -> str:
    """``video_id`` itself, or :class:`InvalidVideoId` saying why it cannot name a file."""
    problem = video_id_problem(video_id)
    if problem is not None:
        shown = repr(video_id) if len(repr(video_id)) <= 80 else repr(video_id)[:77] + "..."
        raise InvalidVideoId(f"video id {shown} {problem}")
    return video_id


def file_problem(path) -> str | None:
    """Why ``path`` is not a readable video file (absolute path in the message), or None when it is a non-empty file.

    Tells a missing file from a broken symlink, a symlink loop, a folder and an empty file.
    """
    path = Path(path)
    shown = os.path.abspath(path)
    if path.is_file():
        return f"file is empty (0 bytes): {shown}" if path.stat().st_size == 0 else None
    if path.is_symlink():
        try:
            path.stat()
        except OSError as error:
            if error.errno == errno.ELOOP:
                return f"symlink loop: {shown}"
            return f"broken symlink: {shown} -> {os.readlink(path)}"
    if path.is_dir():
        return f"is a folder, not a video file: {shown}"
    if os.path.lexists(path):
        return f"not a regular file: {shown}"
    return f"file not found: {shown}"


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
    container_duration: float = 0.0  # seconds the container's metadata claims (0: unknown)
    # Largest gap (seconds) between a frame's real timestamp and the constant-rate time index / fps that sampling
    # assumes (qwen-vl-utils does the same); large on variable-frame-rate files.
    timestamp_max_offset: float = 0.0

    @property
    def variable_frame_rate(self) -> bool:
        return self.timestamp_max_offset > max(VFR_TOLERANCE_S, 1.0 / max(self.source_fps, 1e-6))

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
    step = chunk_frames(height, width)
    try:
        for start in range(0, len(indices), step):
            batch = reader.get_batch(indices[start : start + step]).asnumpy()
            chunks.append(resize_frames(torch.from_numpy(batch).permute(0, 3, 1, 2), size))
    except Exception as error:
        raise VideoDecodeError(f"decord failed while reading frames: {_short(error)}") from error
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
        raise VideoDecodeError(f"PyAV cannot decode the file: {_short(error)}") from error
    clip = _decoded_clip(
        torch.stack([kept[i] for i in indices]), indices, total_frames, video_fps, (height, width), "pyav"
    )
    return _add_timing(clip, info)


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
        raise VideoDecodeError(f"cannot decode {os.path.abspath(path)}: {_short(error)}") from error


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

    def __init__(self, root, verify: bool = False):
        self.root = Path(root)
        self.verify = verify

    def path(self, video_id: str) -> Path:
        """The entry's file; :class:`InvalidVideoId` (a ValueError) for an id that cannot name one."""
        return self.root / f"{check_video_id(video_id)}{self.SUFFIX}"

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
        try:
            stored = json.loads(meta.get("settings", "{}"))
        except ValueError as error:
            raise CacheEntryError("entry header has unreadable settings") from error
        if settings is not None and stored != settings_key(settings):
            raise CacheEntryError(f"entry was made with other settings: {meta.get('settings')}")
        problem = header_problem(info, meta, settings)
        if problem is not None:
            raise CacheEntryError(f"entry header is inconsistent: {problem}")
        return meta

    def load(self, video_id: str, settings: VideoSettings | None = None, verify: bool | None = None) -> VideoClip:
        """Read an entry (memory-mapped). Raises :class:`CacheEntryError` if it is absent, damaged or mismatched.

        The header is always validated (:func:`header_problem`); the frames' checksum only with ``verify`` (default:
        the cache's ``verify``), which reads every byte (~20 ms per 13 MiB entry on one core: benchmarks/cache_checksum.py).
        """
        from safetensors import SafetensorError, safe_open

        self._read_header(video_id, settings)
        try:
            with safe_open(self.path(video_id), framework="pt") as handle:
                meta = handle.metadata()
                frames = handle.get_tensor("frames")
        except (SafetensorError, OSError) as error:
            raise CacheEntryError(f"entry is unreadable: {_short(error)}") from error
        if self.verify if verify is None else verify:
            problem = checksum_problem(frames, meta)
            if problem is not None:
                raise CacheEntryError(problem)
        return clip_from_metadata(frames, meta)

    def metadata(self, video_id: str, settings: VideoSettings | None = None) -> dict[str, str]:
        """The entry's validated header metadata (raises :class:`CacheEntryError` like :meth:`load`)."""
        return self._read_header(video_id, settings)

    def verify_entry(self, video_id: str, settings: VideoSettings | None = None) -> str | None:
        """Why the entry is not usable, reading and checksumming its frames; None when it is intact."""
        try:
            self.load(video_id, settings, verify=True)
        except CacheEntryError as error:
            return str(error)
        return None

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
        "container_duration": repr(float(clip.container_duration)),
        "timestamp_max_offset": repr(float(clip.timestamp_max_offset)),
        "frames_sha256": frames_sha256(clip.frames),
    }


def frames_sha256(frames: torch.Tensor) -> str:
    """SHA-256 of the frame bytes as stored (uint8, C order)."""
    return hashlib.sha256(frames.contiguous().numpy().tobytes()).hexdigest()


def checksum_problem(frames: torch.Tensor, meta: dict[str, str]) -> str | None:
    """Why the frames do not match the checksum in their header (None when they do, or for entries written before
    checksums existed, which :func:`open_r1.preprocess.verify_cache` reports as unverified)."""
    expected = meta.get("frames_sha256")
    if expected and frames_sha256(frames) != expected:
        return "entry frames do not match their checksum (the file was damaged after it was written)"
    return None


def _positive_finite(meta: dict[str, str], key: str) -> float:
    try:
        value = float(meta[key])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{key} is missing or not a number") from error
    if not math.isfinite(value) or not 1e-6 <= value <= 1e7:
        raise ValueError(f"{key} = {meta[key]} is not a positive, finite, plausible number")
    return value


def header_problem(info: dict, meta: dict[str, str], settings: VideoSettings | None = None) -> str | None:
    """Why a cache header cannot describe usable frames, or None. Cheap (no frame data is read).

    Checks: uint8 frames of shape (T, 3, H, W) with T even and >= 2; finite positive sample_fps, duration and
    source_fps; T frame indices, increasing, inside the source's frame count; sample_fps = T / source frames x
    source fps (how it is computed); H and W multiples of 28; and, given the settings, exactly the frame count and
    size that those settings give for the recorded source.
    """
    try:
        if info.get("dtype") != "U8":
            return f"frames are {info.get('dtype')}, not uint8"
        shape = [int(x) for x in info["shape"]]
        if len(shape) != 4 or shape[1] != 3:
            return f"frames have shape {shape}, not (T, 3, H, W)"
        num_frames, _, height, width = shape
        if num_frames < FRAME_FACTOR or num_frames % FRAME_FACTOR:
            return f"{num_frames} frames (needs an even count >= {FRAME_FACTOR})"
        begin, end = (int(x) for x in info["data_offsets"])
        if end - begin != num_frames * 3 * height * width:
            return f"frame data is {end - begin} bytes for shape {shape}"
        sample_fps = _positive_finite(meta, "sample_fps")
        _positive_finite(meta, "duration")
        source_fps = _positive_finite(meta, "source_fps")
        source_frames = int(meta["source_num_frames"])
        indices = json.loads(meta["frame_indices"])
        if not isinstance(indices, list) or len(indices) != num_frames:
            return f"{len(indices) if isinstance(indices, list) else 'no'} frame indices for {num_frames} frames"
        if any(not isinstance(i, int) for i in indices) or indices != sorted(set(indices)):
            return "frame indices are not increasing integers"
        if indices[0] < 0 or indices[-1] >= source_frames:
            return f"frame indices leave the source's {source_frames} frames"
        if not math.isclose(sample_fps, num_frames / source_frames * source_fps, rel_tol=1e-6):
            return f"sample_fps {sample_fps} is not {num_frames} / {source_frames} x {source_fps}"
        if height % IMAGE_FACTOR or width % IMAGE_FACTOR:
            return f"frame size {height}x{width} is not a multiple of {IMAGE_FACTOR}"
        if settings is not None:
            expected_frames = num_sampled_frames(source_frames, source_fps, settings)
            source_size = (int(meta["source_height"]), int(meta["source_width"]))
            expected_size = resized_frame_size(*source_size, expected_frames, settings)
            if (num_frames, height, width) != (expected_frames, *expected_size):
                return (
                    f"{num_frames} frames of {height}x{width}, but these settings give {expected_frames} of "
                    f"{expected_size[0]}x{expected_size[1]} for the recorded source"
                )
    except (KeyError, TypeError, ValueError, VideoDecodeError) as error:
        return _short(error)
    return None


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
        container_duration=float(meta.get("container_duration", 0.0)),
        timestamp_max_offset=float(meta.get("timestamp_max_offset", 0.0)),
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
        try:
            check_video_id(video_id)
        except InvalidVideoId as error:
            raise VideoDecodeError(str(error)) from error
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
            where = f" in {self.video_dir.resolve()}" if self.video_dir is not None else ""
            raise VideoDecodeError(f"{video_id}: {cache_problem}, and no video file{where}")
        return decode_video(path, self.settings, decoder=self.decoder)

    def missing(self, video_ids) -> list[str]:
        """The ids (in order, without repeats) that neither the cache nor the video folder can provide (invalid ids,
        damaged cache entries without a video file, broken symlinks and empty files included)."""
        missing, seen = [], set()
        for video_id in video_ids:
            if video_id in seen:
                continue
            seen.add(video_id)
            if self.unavailable(video_id) is not None:
                missing.append(video_id)
        return missing

    def known_duration(self, video_id: str) -> float | None:
        """Seconds of frames the clip will have, without decoding: the cache header's duration, else (raw file) the
        container's claim after a cheap probe (:func:`probe_video`, which raises :class:`VideoDecodeError` for a file
        that cannot be opened or decoded). None when unknown."""
        if self.cache is not None:
            try:
                return float(self.cache.metadata(video_id, self.settings)["duration"])
            except CacheEntryError:
                pass
        path = self.video_path(video_id)
        return probe_video(path) if path is not None else None

    def unavailable(self, video_id) -> str | None:
        """Why ``video_id`` cannot be provided (without decoding anything), or None when it can."""
        problem = video_id_problem(video_id)
        if problem is not None:
            return f"invalid id: {problem}"
        cache_problem = None
        if self.cache is not None:
            cache_problem = self.cache.problem(video_id, self.settings)
            if cache_problem is None:
                return None
        path = self.video_path(video_id)
        if path is not None:
            return file_problem(path)
        return cache_problem or "no video file"


def describe_missing(source: VideoSource, video_ids, shown: int = 5) -> str | None:
    """None when ``source`` can provide every video; else how many are missing (videos and queries), the first ids,
    where they were looked for (absolute paths), and the reasons that are not plain absence: invalid ids, damaged
    cache entries, broken symlinks, entries cached at other video settings."""
    video_ids = list(video_ids)
    reasons = {video_id: source.unavailable(video_id) for video_id in dict.fromkeys(video_ids)}
    missing = [video_id for video_id, reason in reasons.items() if reason is not None]
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
        f"{len(missing)} of {len(reasons)} videos ({num_rows} of {len(video_ids)} queries) are not available from "
        f"{' or '.join(where)}; first missing: {', '.join(str(m)[:80] or repr(m) for m in missing[:shown])}."
    )
    other_settings = "entry was made with other settings: "
    kinds: dict[str, list[str]] = {}
    for video_id in missing:
        reason = reasons[video_id]
        if reason in ("no cache entry", "no video file"):
            continue
        kind = "cached at other settings" if reason.startswith(other_settings) else reason.split(":")[0]
        kinds.setdefault(kind, []).append(video_id)
    for kind, ids in kinds.items():
        if kind == "cached at other settings":
            stored = reasons[ids[0]][len(other_settings) :]
            message += (
                f" {len(ids)} of them are cached at other settings ({stored}; this run asks for "
                f"{json.dumps(settings_key(source.settings))}): pass the video flags the cache was built with."
            )
        else:
            message += f" {kind}: {len(ids)} (e.g. {ids[0]!r:.80}: {reasons[ids[0]]})."
    return message
