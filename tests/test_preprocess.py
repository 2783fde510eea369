"""`python -m open_r1.preprocess`: one entry per video, failures reported, reruns resume without redoing work."""

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from _video_utils import REAL_VIDEOS, SMALL_SETTINGS, make_clip, random_frames

from open_r1 import preprocess
from open_r1.configs import VideoSettings
from open_r1.preprocess import (
    MANIFEST_NAME,
    default_num_workers,
    main,
    parse_int_expression,
    preprocess_videos,
    read_manifest,
    video_ids_from_sources,
)
from open_r1.synthetic import make_grounding_dataset, write_video
from open_r1.video import VideoCache, decode_video

REPO = Path(__file__).resolve().parents[1]
SETTINGS = VideoSettings()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Four synthetic videos, a real one, a corrupt one, a narrow one decord cannot read, and one listed but absent."""
    root = tmp_path_factory.mktemp("dataset")
    annotation, video_dir = make_grounding_dataset(root, num_videos=4, seed=1, duration=6.0, fps=4.0)
    records = json.loads(annotation.read_text())
    shutil.copy(REAL_VIDEOS["carphone_pristine"], video_dir / "carphone.mp4")
    (video_dir / "corrupt.mp4").write_bytes(REAL_VIDEOS["bikes"].read_bytes()[:5000])
    make_clip(video_dir / "narrow.webm", 12, size=(32, 48), fps=6, codec="libvpx-vp9")
    carphone = decode_video(video_dir / "carphone.mp4", decoder="pyav").duration
    for video_id, duration in (("carphone", carphone), ("corrupt", 4.0), ("narrow", 2.0), ("absent", 4.0)):
        records[video_id] = {"duration": duration, "timestamps": [[0.0, 1.0]], "sentences": ["something happens."]}
    annotation.write_text(json.dumps(records))
    return annotation, video_dir


def run_cli(*args):
    return main([*map(str, args), "--no_progress"])


def manifest_lines(output_dir):
    return [json.loads(line) for line in (output_dir / MANIFEST_NAME).read_text().splitlines()]


def test_cli_builds_entries_and_reports_failures(dataset, tmp_path):
    annotation, video_dir = dataset
    out = tmp_path / "cache"
    assert run_cli(annotation, "--video_dir", video_dir, "--output_dir", out, "--num_workers", 1) == 1
    latest = read_manifest(out)
    assert set(latest) == {
        "synth_000",
        "synth_001",
        "synth_002",
        "synth_003",
        "carphone",
        "corrupt",
        "narrow",
        "absent",
    }
    failures = {vid: record["reason"] for vid, record in latest.items() if record["type"] == "failure"}
    assert set(failures) == {"corrupt", "absent"}
    assert "not found" in failures["absent"]
    assert "PyAV" in failures["corrupt"]  # both decoders were tried
    narrow = latest["narrow"]
    assert narrow["decoder"] == "pyav" and "decord" in narrow["fallback_reason"]
    assert latest["carphone"]["num_frames"] == 8 and latest["carphone"]["decoder"] == "decord"
    run = manifest_lines(out)[-1]
    assert (run["type"], run["done"], run["failed"], run["skipped"]) == ("run", 6, 2, 0)
    assert run["bytes_written"] == sum(p.stat().st_size for p in out.glob("*.safetensors"))
    # Every entry is what decoding on the fly gives.
    cache = VideoCache(out)
    for video_id in ("synth_002", "carphone", "narrow"):
        source = latest[video_id]["source"]
        assert torch.equal(cache.load(video_id, SETTINGS).frames, decode_video(source).frames)
    # Two failures are within a tolerance of 2, and everything already cached is skipped.
    assert run_cli(annotation, "--video_dir", video_dir, "--output_dir", out, "--max_failures", 2) == 0
    run = manifest_lines(out)[-1]
    assert (run["done"], run["failed"], run["skipped"]) == (0, 2, 6)


def dead_pid() -> int:
    """The id of a process that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_resume_after_an_interrupted_run(dataset, tmp_path):
    annotation, video_dir = dataset
    videos = {p.stem: p for p in sorted(video_dir.glob("synth_*.mp4"))}
    out = tmp_path / "cache"
    first = preprocess_videos(videos, out, SETTINGS, progress=False)
    assert (first.done, first.failed) == (4, 0)
    # Cloned: loaded frames are memory-mapped, and this test truncates a file in place (atomic saves never do).
    reference = {vid: VideoCache(out).load(vid).frames.clone() for vid in videos}
    # Simulate a run killed mid-way: a half-written temporary file, a truncated entry (e.g. a disk-full copy), an
    # entry whose manifest line was never written, and an entry that was never made.
    killed = dead_pid()
    partial = out / f".synth_000.safetensors.{killed}.tmp"
    partial.write_bytes(b"partial")
    os.utime(partial, (time.time() - 3600, time.time() - 3600))  # the killed writer's file, an hour old
    damaged = out / "synth_001.safetensors"
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    (out / "synth_003.safetensors").unlink()
    lines = (out / MANIFEST_NAME).read_text().splitlines()
    (out / MANIFEST_NAME).write_text("\n".join(line for line in lines if "synth_002" not in line) + "\n{torn")
    untouched = {vid: (out / f"{vid}.safetensors").stat().st_mtime_ns for vid in ("synth_000", "synth_002")}

    second = preprocess_videos(videos, out, SETTINGS, progress=False)
    assert (second.done, second.redone, second.skipped, second.failed) == (2, 1, 2, 0)
    assert not list(out.glob("*.tmp"))
    for vid, mtime in untouched.items():  # nothing done twice
        assert (out / f"{vid}.safetensors").stat().st_mtime_ns == mtime
    for vid, frames in reference.items():  # nothing lost
        assert torch.equal(VideoCache(out).load(vid, SETTINGS).frames, frames)
    latest = read_manifest(out)
    assert "truncated" in latest["synth_001"]["redone_because"]
    assert latest["synth_002"].get("recovered") is True
    assert all(latest[vid]["type"] == "entry" for vid in videos)


def test_other_settings_redo_entries(dataset, tmp_path):
    _, video_dir = dataset
    videos = {"synth_000": video_dir / "synth_000.mp4"}
    preprocess_videos(videos, tmp_path, SETTINGS, progress=False)
    one_fps = VideoSettings(fps=1.0)
    summary = preprocess_videos(videos, tmp_path, one_fps, progress=False)
    assert (summary.done, summary.redone) == (1, 1)
    clip = VideoCache(tmp_path).load("synth_000", one_fps)
    assert clip.num_frames == 6 and clip.sample_fps == pytest.approx(1.0)  # 6 s at 1 fps


def test_parallel_workers_match_serial_and_survive_a_crash(dataset, tmp_path, monkeypatch):
    _, video_dir = dataset
    videos = {p.stem: p for p in sorted(video_dir.glob("synth_*.mp4"))}
    real_decode = preprocess.decode_video

    def crash_on_synth_002(path, *args, **kwargs):
        if Path(path).stem == "synth_002":
            os._exit(11)  # what a segfault inside decord looks like to the pool
        return real_decode(path, *args, **kwargs)

    monkeypatch.setattr(preprocess, "decode_video", crash_on_synth_002)  # inherited by the forked workers
    summary = preprocess_videos(videos, tmp_path, SETTINGS, num_workers=2, progress=False)
    assert (summary.done, summary.failed) == (3, 1)
    assert summary.failures[0][0] == "synth_002" and "crashed" in summary.failures[0][1]
    for vid in ("synth_000", "synth_001", "synth_003"):
        assert torch.equal(VideoCache(tmp_path).load(vid).frames, real_decode(videos[vid]).frames)


def test_total_pixels_expression_and_sources(dataset):
    assert parse_int_expression("3584*28*28") == 2_809_856
    assert parse_int_expression("16 * 28 * 28") == 12_544
    with pytest.raises(Exception, match="3584"):
        parse_int_expression("3584*28*28; rm -rf /")
    annotation, _ = dataset
    assert video_ids_from_sources([str(annotation)])[:2] == ["synth_000", "synth_001"]
    assert len(video_ids_from_sources(["charades:test"])) == 1334
    with pytest.raises(ValueError, match="charades"):
        video_ids_from_sources(["charadez"])


def test_cli_reads_settings_and_folder_without_annotations(tmp_path):
    video_dir = tmp_path / "videos"
    make_clip(video_dir / "a.mp4", 30, size=(48, 64), fps=10)
    make_clip(video_dir / "b.mkv", 30, size=(48, 64), fps=10)
    out = tmp_path / "cache"
    rc = run_cli(
        "--video_dir",
        video_dir,
        "--output_dir",
        out,
        "--fps",
        1.0,
        "--total_pixels",
        "64*28*28",
        "--min_pixels",
        "4*28*28",
    )
    assert rc == 0
    clip = VideoCache(out).load("b")
    assert clip.num_frames == 4  # 3 s at 1 fps, raised to qwen-vl-utils' minimum of 4
    assert clip.frames.shape[-2:] == (
        56,
        56,
    )  # 48x64 rounded to multiples of 28 (the default min_pixels gives 112x140)
    run = manifest_lines(out)[-1]
    assert run["done"] == 2
    assert run["settings"] == {"fps": 1.0, "total_pixels": 64 * 28 * 28, "min_pixels": 4 * 28 * 28, "max_frames": 768}


def test_shell_wrapper_runs_from_any_directory(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    result = subprocess.run(
        ["bash", str(REPO / "preprocess_video.sh"), "--help"], cwd=tmp_path, capture_output=True, text=True, env=env
    )
    assert result.returncode == 0
    assert "--total_pixels" in result.stdout and "--max_failures" in result.stdout


def test_one_spelling_of_the_video_flags_everywhere():
    """Preprocessing, training and evaluation take --video_fps/--video_total_pixels/... with products, and the old
    preprocessing names as aliases."""
    from trl import GRPOConfig, ModelConfig, TrlParser

    from open_r1.configs import EvalArguments, GRPOScriptArguments, normalize_video_flags
    from open_r1.preprocess import build_parser

    for flags in (
        ["--video_fps", "1.0", "--video_total_pixels", "64*28*28", "--video_min_pixels=4*28*28"],
        ["--fps", "1.0", "--total_pixels", "64*28*28", "--min_pixels=4*28*28"],
    ):
        pre = build_parser().parse_args(["--video_dir", "v", "--output_dir", "o", *flags])
        assert (pre.video_fps, pre.video_total_pixels, pre.video_min_pixels) == (1.0, 64 * 28 * 28, 4 * 28 * 28)
        normalized = normalize_video_flags(["--cache_dir", "c", *flags])
        assert normalized[2:] == ["--video_fps", "1.0", "--video_total_pixels", "50176", "--video_min_pixels=3136"]
        train, _, _ = TrlParser((GRPOScriptArguments, GRPOConfig, ModelConfig)).parse_args_and_config(
            args=normalized + ["--output_dir", "o", "--use_cpu", "true", "--bf16", "false"]
        )
        (evaluation,) = TrlParser((EvalArguments,)).parse_args_and_config(args=normalized + ["--model_base", "m"])
        for args in (train, evaluation):
            assert args.to_settings() == VideoSettings(fps=1.0, total_pixels=64 * 28 * 28, min_pixels=4 * 28 * 28)


def test_default_worker_count_fits_the_memory(tmp_path):
    assert default_num_workers(cpus=16, memory=64 * 2**30) == 8
    assert default_num_workers(cpus=16, memory=4 * 2**30) == 2
    assert default_num_workers(cpus=16, memory=2**20) == 1
    assert default_num_workers(cpus=2, memory=64 * 2**30) == 2
    write_video(tmp_path / "videos" / "a.mp4", random_frames(8), 4.0)
    summary = preprocess_videos({"a": tmp_path / "videos" / "a.mp4"}, tmp_path / "c", SMALL_SETTINGS, progress=False)
    assert summary.peak_worker_rss_mb > 50 and "peak memory per worker" in summary.describe()


@pytest.mark.parametrize(
    "decoded, expected, claimed, short",
    [
        (9.0, 10.0, None, None),  # 1.0 s short of 10 s: exactly the 1-second floor, accepted
        (8.99, 10.0, None, ("the annotation says 10.00 s", 1.01)),  # just past the floor
        (38.0, 40.0, None, None),  # 2.0 s short of 40 s: exactly 5 %, accepted
        (38.5, 40.0, None, None),  # past 1 s but within 5 %: the larger of the two tolerances applies
        (37.9, 40.0, None, ("the annotation says 40.00 s", 2.1)),  # just past 5 %
        (9.0, 8.0, 20.0, ("the container says 20.00 s", 11.0)),  # the container's claim counts too
        (9.0, None, None, None),  # nothing to compare with
    ],
)
def test_duration_tolerance_is_the_larger_of_1_s_and_5_percent(decoded, expected, claimed, short):
    found = preprocess.DurationPolicy().shortfall(decoded, expected, claimed)
    if short is None:
        assert found is None
    else:
        assert found[0] == short[0] and found[1] == pytest.approx(short[1])


def test_a_second_run_leaves_a_running_writer_alone(dataset, tmp_path, monkeypatch):
    """A run writing a large entry on a slow disk pauses between writing its temporary file and renaming it; a second
    run started on the same cache meanwhile must not delete that file (the first run's save then failed with
    FileNotFoundError). Abandoned files (writer gone, old) are still removed."""
    from open_r1.video import cache as cache_module

    annotation, video_dir = dataset
    videos = {p.stem: p for p in sorted(video_dir.glob("synth_*.mp4"))}
    out = tmp_path / "cache"
    written, release = threading.Event(), threading.Event()
    real_replace = os.replace

    def slow_rename(src, dst):
        if str(src).endswith(".tmp") and "synth_000" in str(src):
            written.set()
            release.wait(60)
        return real_replace(src, dst)

    monkeypatch.setattr(cache_module.os, "replace", slow_rename)
    errors = []

    def first_run():
        try:
            preprocess_videos({"synth_000": videos["synth_000"]}, out, SETTINGS, progress=False, num_workers=1)
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    writer = threading.Thread(target=first_run)
    writer.start()
    assert written.wait(60), "the first run never wrote its temporary file"
    in_flight = list(out.glob(".*.tmp"))
    assert len(in_flight) == 1
    abandoned = out / f".synth_009.safetensors.{dead_pid()}.tmp"
    abandoned.write_bytes(b"left by a killed run")
    os.utime(abandoned, (time.time() - 3600, time.time() - 3600))
    second = preprocess_videos({"synth_001": videos["synth_001"]}, out, SETTINGS, progress=False, num_workers=1)
    assert second.done == 1
    assert in_flight[0].exists() and not abandoned.exists()
    release.set()
    writer.join(60)
    assert errors == [] and VideoCache(out).verify_entry("synth_000", SETTINGS) is None


def test_verify_a_missing_folder_or_without_the_cache_flags(dataset, tmp_path, caplog):
    import logging

    annotation, video_dir = dataset
    with caplog.at_level(logging.ERROR):
        assert main(["--verify", "--output_dir", str(tmp_path / "no_cache"), "--no_progress"]) == 2  # before: 0
    assert f"no cache folder at {tmp_path / 'no_cache'}" in caplog.text
    out = tmp_path / "cache"
    videos = {p.stem: p for p in sorted(video_dir.glob("synth_*.mp4"))}
    preprocess_videos(videos, out, SMALL_SETTINGS, progress=False)
    small_flags = ["--video_fps", "2", "--video_total_pixels", str(56 * 56 * 24), "--video_min_pixels", str(56 * 56)]
    caplog.clear()
    with caplog.at_level(logging.INFO):
        # Without the cache's video flags: intact entries are intact (before: every one reported damaged, rc 1).
        assert main(["--verify", "--output_dir", str(out), "--no_progress"]) == 0
    assert "damaged" not in caplog.text.replace("0 damaged", "")
    assert "4 intact entries were made with other video settings than these flags" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert main(["--verify", "--output_dir", str(out), "--no_progress", *small_flags]) == 0
    assert "other video settings" not in caplog.text and "verified 4 entries" in caplog.text
