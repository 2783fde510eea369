"""Decode every video of a dataset once into the frame cache that training and evaluation read.

Usage (``bash preprocess_video.sh`` passes its arguments here)::

    python -m open_r1.preprocess charades --video_dir /data/Charades_v1 --output_dir cache/charades
    python -m open_r1.preprocess my_annotations.json --video_dir videos --output_dir cache --num_workers 8

Sources are bundled dataset names (``charades``, ``activitynet:val_2``, ...; a name alone means all its splits) or
annotation files in any format :func:`open_r1.data.load_annotations` reads; with no source, every video file in
``--video_dir`` is processed. One ``<video_id>.safetensors`` per video (see :class:`open_r1.video.VideoCache`) and a
``manifest.jsonl`` land in ``--output_dir``. Reruns resume: complete entries made with the same settings are skipped,
damaged ones or ones made with other settings are redone. Failures (missing, empty, corrupt, undecodable files) are
recorded with their reason and do not stop the run; the exit status is 1 when more than ``--max_failures`` occurred.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from tqdm.auto import tqdm

from open_r1.configs import (
    DEFAULT_FPS,
    DEFAULT_MAX_FRAMES,
    DEFAULT_MIN_PIXELS,
    DEFAULT_TOTAL_PIXELS,
    VideoSettings,
    parse_int_expression,
)
from open_r1.jsonl import read_jsonl, repair_tail
from open_r1.video import DECODERS, VideoCache, VideoDecodeError, decode_video, settings_key, video_id_problem
from open_r1.video.cache import CacheEntryError, abandoned_temporary_files
from open_r1.worker_pool import WORKER_MEMORY_BYTES, default_num_workers, peak_rss_bytes, run_parallel

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.jsonl"
# Workers are forked: they start in milliseconds instead of re-importing torch.


# --------------------------------------------------------------------------------------------------------------------
# Which videos


def video_ids_from_sources(sources: list[str]) -> list[str]:
    """Unique video ids (first-seen order) of bundled dataset names / ``name:split`` / annotation file paths."""
    return list(video_durations_from_sources(sources))


def video_durations_from_sources(sources: list[str]) -> dict[str, float | None]:
    """Video id -> the longest duration the annotations give it (first-seen order), None when they give none."""
    from open_r1.data import DATASETS, TIMELENS_BENCH, dataset_splits, load_annotations, split_path

    ids: dict[str, float | None] = {}
    for source in sources:
        if Path(source).is_file():
            paths = [Path(source)]
        else:
            name, _, split = source.partition(":")
            known = dataset_splits(name)
            if known is None:
                raise ValueError(
                    f"{source!r} is neither an annotation file nor a dataset; datasets: "
                    f"{', '.join([*sorted(DATASETS), *TIMELENS_BENCH])}"
                )
            splits = [split] if split else known
            paths = [split_path(name, one) for one in splits]
        for path in paths:
            for row in load_annotations(path):
                known = [d for d in (ids.get(row["video_id"]), row.get("duration")) if d is not None]
                ids[row["video_id"]] = max(map(float, known)) if known else None
    return ids


def video_ids_in_folder(video_dir) -> list[str]:
    """Stems of the video files in ``video_dir``; hidden files (``.x.mp4``, macOS ``._x.mp4``) are skipped."""
    from open_r1.video import VIDEO_EXTENSIONS

    names = [path for path in Path(video_dir).iterdir() if path.suffix.lower() in VIDEO_EXTENSIONS]
    hidden = [path.name for path in names if path.name.startswith(".")]
    if hidden:
        logger.info("skipping %d hidden file(s) in %s (e.g. %s)", len(hidden), video_dir, hidden[0])
    return sorted(path.stem for path in names if not path.name.startswith("."))


# --------------------------------------------------------------------------------------------------------------------
# Manifest


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_manifest(output_dir) -> dict[str, dict]:
    """Latest ``entry`` or ``failure`` record per video id (a torn last line from a killed run is ignored)."""
    latest: dict[str, dict] = {}
    for record in read_jsonl(Path(output_dir) / MANIFEST_NAME):
        if isinstance(record, dict) and record.get("type") in ("entry", "failure") and "video_id" in record:
            latest[str(record["video_id"])] = record
    return latest


def _entry_record(video_id: str, cache: VideoCache, source, seconds: float, **extra) -> dict:
    from safetensors import safe_open

    path = cache.path(video_id)
    with safe_open(path, framework="pt") as handle:
        meta = handle.metadata()
        shape = handle.get_slice("frames").get_shape()
    return {
        "type": "entry",
        "video_id": video_id,
        "file": path.name,
        "bytes": path.stat().st_size,
        "num_frames": shape[0],
        "height": shape[2],
        "width": shape[3],
        "sample_fps": float(meta["sample_fps"]),
        "duration": float(meta["duration"]),
        "decoder": meta["decoder"],
        "fallback_reason": meta.get("fallback_reason", ""),
        "source": str(source) if source is not None else None,
        "seconds": round(seconds, 3),
        "time": _now(),
        **extra,
    }


# --------------------------------------------------------------------------------------------------------------------
# Work


@dataclass
class _Task:
    video_id: str
    source: str | None
    redo_reason: str = ""
    expected_duration: float | None = None  # from the annotations


@dataclass(frozen=True)
class DurationPolicy:
    """How much shorter than its annotation (or its container's claim) a decoded video may be.

    A truncated file that still decodes gives a shorter clip; its ground-truth windows may then lie past its last
    frame. A shortfall over ``max(tolerance_seconds, tolerance_fraction x expected)`` is a failure unless
    ``accept_short``; every shortfall is recorded in the manifest.
    """

    tolerance_seconds: float = 1.0
    tolerance_fraction: float = 0.05
    accept_short: bool = False

    def shortfall(self, decoded: float, expected: float | None, claimed: float | None) -> tuple[str, float] | None:
        """``(what said it, by how many seconds)`` for the larger reference the clip falls short of beyond the
        tolerance, else None."""
        worst = None
        for name, reference in (("annotation", expected), ("container", claimed)):
            if reference and reference > 0:
                missing = reference - decoded
                if missing > max(self.tolerance_seconds, self.tolerance_fraction * reference):
                    if worst is None or missing > worst[1]:
                        worst = (f"the {name} says {reference:.2f} s", missing)
        return worst


@dataclass
class PreprocessSummary:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    missing: int = 0  # failures because the video file does not exist
    redone: int = 0
    invalid_ids: int = 0  # failures because the id cannot name a file
    short: int = 0  # decoded shorter than annotation/container beyond the tolerance (failed unless accepted)
    variable_frame_rate: int = 0
    peak_worker_rss_mb: float = 0.0
    bytes_written: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def videos_per_second(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        return (
            f"done {self.done} (redone {self.redone}), skipped {self.skipped} (already cached), "
            f"failed {self.failed} ({self.missing} missing files, {self.invalid_ids} invalid ids); "
            f"{self.short} shorter than their annotation/container, {self.variable_frame_rate} variable-frame-rate; "
            f"{self.bytes_written / 2**20:.1f} MiB written in {self.seconds:.1f} s "
            f"({self.videos_per_second:.2f} videos/s); peak memory per worker {self.peak_worker_rss_mb:.0f} MiB"
        )


def _process(
    task: _Task,
    output_dir: str,
    settings: VideoSettings,
    decoder: str,
    num_threads: int,
    policy: DurationPolicy = DurationPolicy(),  # noqa: B008 (frozen dataclass)
) -> dict:
    """Decode one video and write its entry. Runs in a worker; returns a manifest record, never raises."""
    started = time.perf_counter()
    cache = VideoCache(output_dir)
    if task.source is None:
        return {
            "type": "failure",
            "video_id": task.video_id,
            "source": None,
            "reason": "video file not found in --video_dir",  # the folder is logged, absolute, once per run
        }
    timing: dict = {}
    try:
        clip = decode_video(task.source, settings, decoder=decoder, num_threads=num_threads)
        timing = {
            "expected_duration": task.expected_duration,
            "container_duration": round(clip.container_duration, 4) or None,
            "timestamp_max_offset": round(clip.timestamp_max_offset, 4),
            "variable_frame_rate": clip.variable_frame_rate,
        }
        short = policy.shortfall(clip.duration, task.expected_duration, clip.container_duration)
        if short is not None:
            timing["duration_shortfall"] = round(short[1], 3)
            if not policy.accept_short:
                raise VideoDecodeError(
                    f"decoded {clip.duration:.2f} s but {short[0]}: the file looks truncated (frames after "
                    f"{clip.duration:.2f} s are missing); --accept_short_videos caches it anyway"
                )
        cache.save(task.video_id, clip, settings)
        extra = {"redone_because": task.redo_reason} if task.redo_reason else {}
        return _entry_record(
            task.video_id, cache, task.source, time.perf_counter() - started, **timing, **extra,
            peak_rss_mb=round(peak_rss_bytes() / 2**20, 1),
        )  # fmt: skip
    except VideoDecodeError as error:
        reason = str(error)
    except Exception as error:  # a bug or an unexpected decoder error must not stop the whole run
        reason = f"{type(error).__name__}: {error}"
    return {
        "type": "failure", "video_id": task.video_id, "source": task.source, "reason": reason, **timing,
        "peak_rss_mb": round(peak_rss_bytes() / 2**20, 1),
    }  # fmt: skip


def preprocess_videos(
    videos: dict[str, str | Path | None],
    output_dir,
    settings: VideoSettings = VideoSettings(),  # noqa: B008 (frozen dataclass)
    decoder: str = "decord",
    num_workers: int = 1,
    progress: bool = True,
    durations: dict[str, float | None] | None = None,
    policy: DurationPolicy = DurationPolicy(),  # noqa: B008 (frozen dataclass)
    verify_existing: bool = True,
) -> PreprocessSummary:
    """Fill the cache in ``output_dir`` for ``videos`` (video id -> file, None when the file is missing).

    Complete entries made with ``settings`` are skipped (their frames' checksum is verified first unless
    ``verify_existing`` is false); damaged or mismatched ones are redone. ``durations`` (video id -> seconds from the
    annotations) and the container's own duration are compared with the decoded length under ``policy``. An id that
    cannot name a file (:func:`open_r1.video.video_id_problem`) is one failure; the others are processed. Every
    entry and every failure is appended to ``manifest.jsonl``.
    """
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; choose one of {', '.join(DECODERS)}")
    started = time.perf_counter()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    cache = VideoCache(output_dir)
    # Temporary files left by a killed run are never read, only removed; those of a run still writing are left alone.
    for stale in abandoned_temporary_files(output_dir):
        stale.unlink(missing_ok=True)

    manifest = read_manifest(output_dir)
    summary = PreprocessSummary()
    tasks: list[_Task] = []
    recovered: list[dict] = []
    invalid: list[dict] = []
    durations = durations or {}
    for video_id in tqdm(videos, desc="checking cache", unit="video", disable=not progress or not verify_existing):
        source = videos[video_id]
        id_problem = video_id_problem(video_id)
        if id_problem is not None:
            invalid.append({"type": "failure", "video_id": str(video_id), "source": None,
                            "reason": f"invalid video id: {id_problem}"})  # fmt: skip
            continue
        # verify_entry makes every check problem() makes, then reads the frames against their checksum.
        problem = cache.verify_entry(video_id, settings) if verify_existing else cache.problem(video_id, settings)
        if problem is None:
            summary.skipped += 1
            if manifest.get(video_id, {}).get("type") != "entry":
                # Written by a run killed before it could log it: record it now so the manifest lists every entry.
                recovered.append(_entry_record(video_id, cache, source, 0.0, recovered=True))
            continue
        redo = "" if problem == "no cache entry" else problem
        tasks.append(_Task(video_id, str(source) if source is not None else None, redo, durations.get(video_id)))

    missing = [task.video_id for task in tasks if task.source is None]
    if missing:
        logger.warning(
            "%d of %d videos have no file in the video folder (e.g. %s)%s; they are recorded as failures",
            len(missing),
            len(videos),
            ", ".join(missing[:3]),
            " - is --video_dir right?" if len(missing) == len(videos) else "",
        )
    logger.info(
        "%d videos: %d already cached, %d to process (%d files missing) with %s, %d worker(s); settings %s",
        len(videos),
        summary.skipped,
        len(tasks),
        len(missing),
        decoder,
        num_workers,
        settings_key(settings),
    )
    # One decoding thread per worker when several run side by side; decord's own default when alone.
    run_args = (str(output_dir), settings, decoder, 1 if num_workers > 1 else 0, policy)
    manifest_path = output_dir / MANIFEST_NAME
    repair_tail(manifest_path)  # a line a killed run left half-written
    with open(manifest_path, "a") as manifest_file:

        def log(record: dict) -> None:
            manifest_file.write(json.dumps(record) + "\n")
            manifest_file.flush()

        for record in recovered:
            log(record)
        for record in invalid:
            record["time"] = _now()
            summary.failed += 1
            summary.invalid_ids += 1
            summary.failures.append((record["video_id"], record["reason"]))
            logger.warning("failed %r: %s", record["video_id"][:80], record["reason"])
            log(record)
        if num_workers > 1 and len(tasks) > 1:
            results = run_parallel(_process, tasks, run_args, num_workers)
        else:
            results = (_process(task, *run_args) for task in tasks)
        for record in tqdm(results, total=len(tasks), desc="videos", unit="video", disable=not progress):
            summary.peak_worker_rss_mb = max(summary.peak_worker_rss_mb, record.get("peak_rss_mb") or 0.0)
            summary.short += "duration_shortfall" in record
            if record.get("variable_frame_rate"):
                summary.variable_frame_rate += 1
                logger.warning(
                    "%s has a variable frame rate: frames are up to %.2f s from the constant-rate times that sampling "
                    "assumes (as qwen-vl-utils does); re-encode it at a constant rate for exact timing",
                    record["video_id"], record["timestamp_max_offset"],
                )  # fmt: skip
            if record["type"] == "failure":
                record["time"] = _now()
                summary.failed += 1
                summary.failures.append((record["video_id"], record["reason"]))
                if record["source"] is None:
                    summary.missing += 1  # already announced above, not worth a line each
                else:
                    logger.warning("failed %s: %s", record["video_id"], record["reason"])
            else:
                summary.done += 1
                summary.redone += bool(record.get("redone_because"))
                summary.bytes_written += record["bytes"]
                if record["fallback_reason"]:
                    logger.info("%s: decord failed, used PyAV (%s)", record["video_id"], record["fallback_reason"])
            log(record)
        summary.seconds = time.perf_counter() - started
        log(
            {
                "type": "run",
                "time": _now(),
                "done": summary.done,
                "redone": summary.redone,
                "skipped": summary.skipped,
                "failed": summary.failed,
                "bytes_written": summary.bytes_written,
                "seconds": round(summary.seconds, 3),
                "videos_per_second": round(summary.videos_per_second, 4),
                "decoder": decoder,
                "num_workers": num_workers,
                "settings": settings_key(settings),
                "invalid_ids": summary.invalid_ids,
                "short": summary.short,
                "variable_frame_rate": summary.variable_frame_rate,
                "peak_worker_rss_mb": summary.peak_worker_rss_mb,
            }
        )
    return summary


# --------------------------------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m open_r1.preprocess",
        allow_abbrev=False,  # a misspelled flag fails instead of matching another one
        description="Decode each video once (qwen-vl-utils sampling and resizing) into a resumable safetensors cache.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "sources",
        nargs="*",
        help="Dataset names (charades, activitynet:val_2, ...; a bare name means every split) or annotation files. "
        "None: every video file in --video_dir.",
    )
    parser.add_argument(
        "--video_dir", default=None, help="Folder holding the raw videos (<video_id>.mp4, .webm, ...)."
    )
    parser.add_argument("--output_dir", required=True, help="Cache folder: <video_id>.safetensors + manifest.jsonl.")
    # The same flag names (and product syntax) as training and evaluation; the short names stay as aliases.
    parser.add_argument(
        "--video_fps", "--fps", type=float, default=DEFAULT_FPS, help="Frames sampled per second of video."
    )
    parser.add_argument(
        "--video_total_pixels",
        "--total_pixels",
        type=parse_int_expression,
        default=DEFAULT_TOTAL_PIXELS,
        help="Pixel budget for all frames of one video; products such as 3584*28*28 are accepted.",
    )
    parser.add_argument(
        "--video_min_pixels",
        "--min_pixels",
        type=parse_int_expression,
        default=DEFAULT_MIN_PIXELS,
        help="Minimum pixels per frame.",
    )
    parser.add_argument(
        "--video_max_frames",
        "--max_frames",
        type=int,
        default=DEFAULT_MAX_FRAMES,
        help="Upper bound on sampled frames.",
    )
    parser.add_argument(
        "--num_workers",
        type=int,
        default=None,
        help="Decoding processes (1: in this process). Default: one per core, at most 8, and no more than the "
        f"available memory holds at {WORKER_MEMORY_BYTES / 2**30:.1f} GiB each.",
    )
    parser.add_argument(
        "--decoder",
        choices=DECODERS,
        default="decord",
        help="decord (the paper's; falls back to PyAV per file) or pyav.",
    )
    parser.add_argument(
        "--max_failures", type=int, default=0, help="Failures tolerated before the exit status becomes non-zero."
    )
    parser.add_argument(
        "--accept_short_videos",
        action="store_true",
        help="Cache videos that decode shorter than their annotation or container says (truncated files); the "
        "shortfall is still recorded in the manifest.",
    )
    parser.add_argument(
        "--duration_tolerance",
        type=float,
        default=DurationPolicy.tolerance_seconds,
        help="Seconds a decoded video may fall short of its annotated/container duration (or 5%% of it, if more).",
    )
    parser.add_argument(
        "--no_verify_existing",
        action="store_true",
        help="On resume, trust existing entries without reading their frames against the checksum.",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="Only check the cache: every entry's header and frame checksum (no decoding); exit 1 if any is damaged.",
    )
    parser.add_argument("--no_progress", action="store_true", help="Hide the progress bar.")
    return parser


def verify_cache(output_dir, video_ids=None, settings: VideoSettings | None = None, progress: bool = True) -> dict:
    """Read every entry of the cache (or those of ``video_ids``) against its header checks and frame checksum.

    An entry is checked against the settings it records (its frame count and size included); one that is intact but
    was made with settings other than ``settings`` is listed apart, not as damaged. Returns ``{"checked", "damaged": [(id, reason)], "unverified": [ids
    written without a checksum], "other_settings": [(id, its settings)]}``.
    """
    cache = VideoCache(output_dir)
    if video_ids is None:
        video_ids = sorted(path.name[: -len(VideoCache.SUFFIX)] for path in Path(output_dir).glob("*.safetensors"))
    report = {"checked": 0, "damaged": [], "unverified": [], "other_settings": []}
    for video_id in tqdm(video_ids, desc="verifying", unit="entry", disable=not progress):
        report["checked"] += 1
        problem = video_id_problem(video_id)
        if problem is not None:
            report["damaged"].append((video_id, f"invalid video id: {problem}"))
            continue
        try:
            meta = cache.metadata(video_id)
        except CacheEntryError as error:
            report["damaged"].append((video_id, str(error)))
            continue
        try:
            recorded = VideoSettings(**json.loads(meta.get("settings", "{}")))
        except (TypeError, ValueError) as error:
            report["damaged"].append(
                (video_id, f"entry header records unusable settings {meta.get('settings')}: {error}")
            )
            continue
        problem = cache.verify_entry(video_id, recorded)
        if problem is not None:
            report["damaged"].append((video_id, problem))
            continue
        if "frames_sha256" not in meta:
            report["unverified"].append(video_id)
        if settings is not None and settings_key(settings) != settings_key(recorded):
            report["other_settings"].append((video_id, meta.get("settings", "")))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = VideoSettings(
        fps=args.video_fps,
        total_pixels=args.video_total_pixels,
        min_pixels=args.video_min_pixels,
        max_frames=args.video_max_frames,
    )
    from open_r1.video import find_video

    if args.verify:
        if not Path(args.output_dir).is_dir():
            logger.error("--verify: no cache folder at %s", os.path.abspath(args.output_dir))
            return 2
        ids = video_ids_from_sources(args.sources) if args.sources else None
        report = verify_cache(args.output_dir, ids, settings, progress=not args.no_progress)
        for video_id, reason in report["damaged"]:
            logger.error("damaged %s: %s", video_id, reason)
        if report["other_settings"]:
            video_id, stored = report["other_settings"][0]
            logger.warning(
                "%d intact entries were made with other video settings than these flags (e.g. %s: %s; the flags "
                "give %s): pass the flags the cache was built with to train or evaluate from it",
                len(report["other_settings"]), video_id, stored, json.dumps(settings_key(settings), sort_keys=True),
            )  # fmt: skip
        logger.info(
            "verified %d entries in %s: %d damaged, %d without a checksum (written before checksums; rerun "
            "preprocessing after deleting them to add one)",
            report["checked"], os.path.abspath(args.output_dir), len(report["damaged"]), len(report["unverified"]),
        )  # fmt: skip
        return 1 if report["damaged"] else 0
    if args.video_dir is None:
        parser.error("--video_dir is required (except with --verify)")
    if not Path(args.video_dir).is_dir():
        logger.error("--video_dir %s is not a folder", os.path.abspath(args.video_dir))
        return 2
    durations = video_durations_from_sources(args.sources) if args.sources else None
    video_ids = list(durations) if durations is not None else video_ids_in_folder(args.video_dir)
    videos = {
        video_id: find_video(args.video_dir, video_id) if video_id_problem(video_id) is None else None
        for video_id in video_ids
    }
    num_workers = args.num_workers if args.num_workers is not None else default_num_workers()
    logger.info("videos from %s, cache in %s", os.path.abspath(args.video_dir), os.path.abspath(args.output_dir))
    summary = preprocess_videos(
        videos,
        args.output_dir,
        settings,
        decoder=args.decoder,
        num_workers=max(1, num_workers),
        progress=not args.no_progress,
        durations=durations,
        policy=DurationPolicy(tolerance_seconds=args.duration_tolerance, accept_short=args.accept_short_videos),
        verify_existing=not args.no_verify_existing,
    )
    logger.info("Summary: %s", summary.describe())
    logger.info("Cache: %s (manifest: %s)", args.output_dir, Path(args.output_dir) / MANIFEST_NAME)
    if summary.failed > args.max_failures:
        shown = "; ".join(f"{video_id}: {reason}" for video_id, reason in summary.failures[:5])
        logger.error(
            "%d failures exceed --max_failures %d (first: %s). See the manifest for all of them.",
            summary.failed,
            args.max_failures,
            shown,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
