"""The frame cache: one safetensors file per video, validated headers, checksums, atomic writes."""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import torch

from open_r1.configs import VideoSettings
from open_r1.video.clip import VideoClip, VideoDecodeError, short_error
from open_r1.video.ids import check_video_id
from open_r1.video.sampling import FRAME_FACTOR, IMAGE_FACTOR, num_sampled_frames, resized_frame_size

CACHE_FORMAT_VERSION = "1"
# An entry is written as ".<id>.safetensors.<writer pid>.tmp", then renamed.
TEMPORARY_GLOB = ".*.safetensors.*.tmp"
# A temporary file whose writer is not running on this machine is removed only once it is this old: on a shared (network)
# disk the writer may be another machine's process, and writing one entry takes seconds, not minutes.
ABANDONED_AFTER_S = 600.0


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
            raise CacheEntryError(f"entry header is unreadable: {short_error(error)}") from error
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
            raise CacheEntryError(f"entry is unreadable: {short_error(error)}") from error
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
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # matches TEMPORARY_GLOB
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
        return short_error(error)
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


def _process_is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except (OverflowError, ValueError):
        return False
    return True


def abandoned_temporary_files(root, min_age_s: float = ABANDONED_AFTER_S, now: float | None = None) -> list[Path]:
    """Temporary entry files under ``root`` that no writer will rename: their writer (the process id in the name) is
    not running on this machine and they are at least ``min_age_s`` old. A file still being written by a live run,
    here or (younger than ``min_age_s``) on another machine sharing the disk, is never listed."""
    import time

    now = time.time() if now is None else now
    abandoned = []
    for tmp in Path(root).glob(TEMPORARY_GLOB):
        pid_text = tmp.name[: -len(".tmp")].rsplit(".", 1)[-1]
        if pid_text.isdigit() and _process_is_running(int(pid_text)):
            continue
        try:
            age = now - tmp.stat().st_mtime
        except FileNotFoundError:  # renamed or removed meanwhile
            continue
        if age >= min_age_s:
            abandoned.append(tmp)
    return abandoned
