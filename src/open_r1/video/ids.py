"""Which file a video id names: the one id rule (no path leaves its folder) and the lookup of a video's file."""

from __future__ import annotations

import errno
import os
from pathlib import Path


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


VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov")


def find_video(video_dir: str | Path, video_id: str) -> Path | None:
    """Path of ``video_id``'s file in ``video_dir`` or None.

    Tries the extensions in :data:`VIDEO_EXTENSIONS` (in that order) and, for ActivityNet, the id with and without
    its ``v_`` prefix (annotations say ``v_abc``, downloads are often named ``abc.mp4``, and the reverse). The id
    must be a plain file name (:func:`check_video_id` raises ``InvalidVideoId`` otherwise), so the path
    never leaves ``video_dir``. A broken symlink or a symlink loop is returned too, so that decoding names the problem
    instead of "not found".
    """
    video_dir = Path(video_dir)
    check_video_id(video_id)
    other = video_id[2:] if video_id.startswith("v_") else f"v_{video_id}"
    for name in [video_id] + ([other] if other and not other.startswith(".") else []):
        for extension in VIDEO_EXTENSIONS:
            candidate = video_dir / f"{name}{extension}"
            if candidate.is_file() or candidate.is_symlink():
                return candidate
    return None
