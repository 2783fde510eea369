"""Frames for a video id from the cache or the raw file, and one report of what is missing."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from open_r1.configs import VideoSettings
from open_r1.video.cache import CacheEntryError, VideoCache, settings_key
from open_r1.video.clip import VideoClip, VideoDecodeError
from open_r1.video.decode import decode_video, probe_video
from open_r1.video.ids import InvalidVideoId, check_video_id, file_problem, find_video, video_id_problem
from open_r1.video.sampling import DEFAULT_SETTINGS

logger = logging.getLogger(__name__)


class VideoSource:
    """Frames for a video id: from the cache when it has a matching entry, else decoded from ``video_dir``.

    Both paths give identical tensors, so training and evaluation do not care whether preprocessing ran. The first
    time this source reads an entry it checks the frames' checksum (~20 ms per 13 MiB entry,
    benchmarks/cache_checksum.py; later reads of the same entry skip it), so a damaged entry is never trained or
    evaluated on unnoticed: it is reported and the raw video decoded instead, or, without one, it fails by name.
    """

    def __init__(self, settings: VideoSettings = DEFAULT_SETTINGS, cache_dir=None, video_dir=None, decoder="decord"):
        self.settings = settings
        self.cache = VideoCache(cache_dir) if cache_dir is not None else None
        self.video_dir = Path(video_dir) if video_dir is not None else None
        self.decoder = decoder
        self._warned_about_cache = False
        self._verified: set[str] = set()  # entries whose checksum this source has checked
        if self.cache is None and self.video_dir is None:
            raise ValueError("VideoSource needs a cache_dir, a video_dir, or both")

    def video_path(self, video_id: str) -> Path | None:
        if self.video_dir is None:
            return None
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
                clip = self.cache.load(video_id, self.settings, verify=video_id not in self._verified)
                self._verified.add(video_id)
                return clip
            except CacheEntryError as error:
                cache_problem = str(error)
                damaged = "checksum" in cache_problem
                if damaged or (cache_problem != "no cache entry" and not self._warned_about_cache):
                    # Usually a cache built with other --fps/--total_pixels: every video is then decoded again (said
                    # once); a damaged entry is named every time.
                    logger.warning("cache entry %s not used (%s); decoding the video instead", video_id, cache_problem)
                    self._warned_about_cache = self._warned_about_cache or not damaged
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
