"""Small synthetic grounding videos with known answers, for tests and the demo.

Each video is a dark background on which coloured shapes appear and disappear at known times. The annotation file
uses TimeZero's JSON layout (``{video_id: {"duration", "timestamps", "sentences"}}``) and the queries name the shape
("the red square appears."), so the whole pipeline — annotation loading, preprocessing, training, evaluation — can run
on real encoded mp4 files in seconds.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 200, 60),
    "blue": (40, 70, 230),
    "yellow": (235, 220, 40),
    "white": (240, 240, 240),
}
SHAPES = ("square", "circle")
BACKGROUND = (24, 24, 32)

# Container for each codec written by `write_video`; anything else goes in mp4.
_CONTAINER_FOR_CODEC = {"libvpx-vp9": "webm", "libvpx": "webm"}


def write_video(
    path, frames: np.ndarray, fps: float, codec: str = "libx264", timestamps: list[float] | None = None
) -> Path:
    """Encode ``frames`` (uint8, ``(T, H, W, 3)`` RGB) to a video file with PyAV.

    Args:
        path: output file; its folder is created. The container follows the suffix (``.mp4``, ``.webm``, ``.mkv``).
        frames: uint8 RGB frames. Odd heights or widths are kept exactly (written as yuv444p instead of yuv420p;
            libx264 and libvpx-vp9 accept that, mpeg4 does not).
        fps: frame rate; fractional rates such as 29.97 are stored as a rational (30000/1001).
        codec: an encoder in PyAV's bundled ffmpeg, e.g. ``"libx264"``, ``"mpeg4"``, ``"libvpx-vp9"``.
        timestamps: presentation time of each frame in seconds (a variable-frame-rate file); None: ``i / fps``.

    Returns:
        The path written.
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    if len(frames) == 0:
        raise ValueError("cannot write a video with no frames")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames.shape[1:3]
    # 4:2:0 chroma (what real footage uses) needs even sizes; 4:4:4 keeps odd sizes exact.
    pix_fmt = "yuv420p" if height % 2 == 0 and width % 2 == 0 else "yuv444p"
    rate = _frame_rate(fps)
    if timestamps is not None and len(timestamps) != len(frames):
        raise ValueError(f"{len(timestamps)} timestamps for {len(frames)} frames")
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if timestamps is not None:
            stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        if codec == "libx264":
            stream.options = {"crf": "12", "preset": "veryfast"}
        elif codec.startswith("libvpx"):
            stream.options = {"crf": "20", "b": "0", "deadline": "realtime", "cpu-used": "8"}
        for index, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if timestamps is not None:
                frame.pts, frame.time_base = round(timestamps[index] * 1000), Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _frame_rate(fps: float) -> Fraction:
    """29.97 -> 30000/1001 (NTSC rates are written that way by cameras), 12.5 -> 25/2."""
    ntsc = round(fps * 1.001)
    if abs(fps - round(fps)) > 1e-6 and abs(fps - ntsc / 1.001) < 0.005:
        return Fraction(ntsc * 1000, 1001)
    return Fraction(fps).limit_denominator(1001)


def _draw(frame: np.ndarray, shape: str, color: tuple[int, int, int], top: int, left: int, side: int) -> None:
    if shape == "square":
        frame[top : top + side, left : left + side] = color
        return
    yy, xx = np.ogrid[:side, :side]
    radius = (side - 1) / 2
    disk = (yy - radius) ** 2 + (xx - radius) ** 2 <= radius**2
    frame[top : top + side, left : left + side][disk] = color


def make_grounding_dataset(
    out_dir,
    num_videos: int = 8,
    seed: int = 0,
    duration: float | tuple[int, int] = 8.0,
    fps: float = 4.0,
    size: tuple[int, int] = (48, 64),
    events_per_video: int = 1,
    codec: str = "libx264",
    event_seconds: tuple[int, int] | None = None,
    id_prefix: str = "synth",
    blank: bool = False,
    write_videos: bool = True,
    shape_size: float = 1 / 3,
) -> tuple[Path, Path]:
    """Write ``num_videos`` synthetic videos plus a TimeZero-format annotation file.

    Every event is one coloured shape visible from ``start`` to ``end`` seconds (both multiples of ``1 / fps``, at
    least one second long); its query is ``"the <colour> <shape> appears."``. Events of one video have distinct
    colours, so each query has exactly one answer.

    Args:
        out_dir: folder that receives ``annotations.json`` and ``videos/<video_id>.mp4``.
        num_videos: number of videos (ids ``synth_000``, ``synth_001``, ...).
        seed: seed of the event layout; the same seed gives the same files.
        duration: length of each video in seconds, or an inclusive range of whole seconds drawn per video.
        fps: frame rate of the written videos.
        size: ``(height, width)`` of the frames.
        events_per_video: number of queries per video.
        codec: encoder passed to :func:`write_video` (``libvpx-vp9`` writes ``.webm``).
        event_seconds: an inclusive range of event lengths in whole seconds, events starting on a whole second
            (short events make a constant answer weak); default: 1 s up to half the video, on any frame.
        id_prefix: video ids are ``<id_prefix>_000``, ...
        blank: write background-only videos with the same annotations (the same seed gives the same events): a
            baseline for what a model answers without seeing the events.
        write_videos: ``False`` writes the annotation file only (the same events as with videos).
        shape_size: side of a shape as a fraction of the frame's shorter side (at least 4 pixels); 1 on square
            frames makes a square event fill the frame.

    Returns:
        ``(annotation_json_path, video_dir)``.
    """
    if not 1 <= events_per_video <= len(COLORS):
        raise ValueError(f"events_per_video must be between 1 and {len(COLORS)} (one colour per event)")
    if min(duration if isinstance(duration, tuple) else (duration,)) * fps < 2 * fps:
        raise ValueError("duration must cover at least two seconds")
    if not 0 < shape_size <= 1:
        raise ValueError(f"shape_size must be in (0, 1], got {shape_size}")
    height, width = size
    side = max(4, int(min(height, width) * shape_size + 1e-9))
    out_dir = Path(out_dir)
    video_dir = out_dir / "videos"
    suffix = _CONTAINER_FOR_CODEC.get(codec, "mp4")
    rng = np.random.default_rng(seed)
    annotations = {}
    for index in range(num_videos):
        video_id = f"{id_prefix}_{index:03d}"
        seconds = int(rng.integers(duration[0], duration[1] + 1)) if isinstance(duration, tuple) else duration
        num_frames = int(round(seconds * fps))
        frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
        frames[:] = BACKGROUND
        timestamps, sentences = [], []
        for color_index in rng.choice(len(COLORS), size=events_per_video, replace=False):
            color, shape = list(COLORS)[color_index], SHAPES[int(rng.integers(len(SHAPES)))]
            # Whole frames only, so the event boundaries in the file are exactly the annotated times.
            if event_seconds is None:
                length = int(rng.integers(int(fps), max(int(fps) + 1, num_frames // 2) + 1))
                first = int(rng.integers(0, num_frames - length + 1))
            else:
                length_s = int(rng.integers(event_seconds[0], min(event_seconds[1], int(seconds)) + 1))
                length, first = int(length_s * fps), int(rng.integers(0, int(seconds) - length_s + 1) * fps)
            top = int(rng.integers(0, height - side + 1))
            left = int(rng.integers(0, width - side + 1))
            for frame in frames[first : first + length] if not blank else ():
                _draw(frame, shape, COLORS[color], top, left, side)
            timestamps.append([round(first / fps, 4), round((first + length) / fps, 4)])
            sentences.append(f"the {color} {shape} appears.")
        if write_videos:
            write_video(video_dir / f"{video_id}.{suffix}", frames, fps=fps, codec=codec)
        annotations[video_id] = {
            "duration": round(num_frames / fps, 4),
            "timestamps": timestamps,
            "sentences": sentences,
        }
    annotation_path = out_dir / "annotations.json"
    out_dir.mkdir(parents=True, exist_ok=True)
    annotation_path.write_text(json.dumps(annotations, indent=1))
    return annotation_path, video_dir
