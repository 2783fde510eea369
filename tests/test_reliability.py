"""Hostile input, one test per class of defect: each fails on the behaviour it replaces.

Truncated-but-decodable videos, bad ids, paths outside the video folder, damaged cache entries, malformed prediction
lines, orphaned workers, decode memory, misleading messages and variable frame rates. (Non-finite rewards are in
test_trainer.py, next to the trainer they stop.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from open_r1.configs import VideoSettings
from open_r1.data import load_annotations
from open_r1.evaluation import PredictionsFileError, read_predictions, rescore_predictions
from open_r1.grpo_video import check_videos
from open_r1.preprocess import (
    MANIFEST_NAME,
    DurationPolicy,
    main,
    preprocess_videos,
    read_manifest,
    verify_cache,
)
from open_r1.synthetic import write_video
from open_r1.video import (
    CacheEntryError,
    VideoCache,
    VideoDecodeError,
    VideoSource,
    decode_video,
    describe_missing,
)
from open_r1.video import decode as video_decode

SETTINGS = VideoSettings(fps=2.0, total_pixels=56 * 56 * 24, min_pixels=56 * 56)
RNG = np.random.default_rng(0)


def frames(num, height=48, width=64):
    return RNG.integers(0, 255, (num, height, width, 3), dtype=np.uint8)


def write_faststart(path: Path, num_frames: int, fps: int) -> Path:
    """An mp4 with its index (moov) before the data, as web videos are: a cut copy still opens and decodes."""
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for image in frames(num_frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def annotation_file(path: Path, videos: dict[str, tuple[float, list[float]]]) -> Path:
    records = {
        vid: {"duration": d, "timestamps": [w], "sentences": ["a shape appears."]} for vid, (d, w) in videos.items()
    }
    path.write_text(json.dumps(records))
    return path


# --------------------------------------------------------------------------------------------------------------------
# 1. Truncated but decodable videos


@pytest.fixture(scope="module")
def truncated(tmp_path_factory):
    root = tmp_path_factory.mktemp("truncated")
    videos = root / "videos"
    videos.mkdir()
    full = write_faststart(videos / "whole.mp4", 100, 10)  # 10 s
    data = full.read_bytes()
    (videos / "cut.mp4").write_bytes(data[: len(data) // 10])
    annotations = annotation_file(root / "ann.json", {"whole": (10.0, [6.0, 9.0]), "cut": (10.0, [6.0, 9.0])})
    return root, videos, annotations


def test_truncated_video_fails_preprocessing_by_default(truncated, tmp_path):
    root, videos, annotations = truncated
    clip = decode_video(videos / "cut.mp4", SETTINGS)
    assert clip.duration < 2 and clip.container_duration == pytest.approx(10.0, abs=0.2)  # decodes, but short
    out = tmp_path / "cache"
    code = main([str(annotations), "--video_dir", str(videos), "--output_dir", str(out), "--no_progress",
                 "--num_workers", "1", "--video_fps", "2", "--video_total_pixels", "56*56*24",
                 "--video_min_pixels", "56*56"])  # fmt: skip
    assert code == 1
    latest = read_manifest(out)
    assert latest["whole"]["type"] == "entry" and "duration_shortfall" not in latest["whole"]
    assert latest["cut"]["type"] == "failure" and "truncated" in latest["cut"]["reason"]
    assert latest["cut"]["duration_shortfall"] > 8
    assert not VideoCache(out).has("cut")


def test_accepted_short_video_is_recorded_and_its_rows_are_not_trained_on(truncated, tmp_path):
    root, videos, annotations = truncated
    rows = load_annotations(annotations)
    summary = preprocess_videos(
        {"whole": videos / "whole.mp4", "cut": videos / "cut.mp4"}, tmp_path, SETTINGS, progress=False,
        durations={"whole": 10.0, "cut": 10.0}, policy=DurationPolicy(accept_short=True),
    )  # fmt: skip
    assert summary.failed == 0 and summary.short == 1
    assert read_manifest(tmp_path)["cut"]["duration_shortfall"] > 8
    # Training: the row whose window (6-9 s) starts after the cached frames end (< 2 s) is dropped, and counted.
    kept = check_videos(rows, VideoSource(SETTINGS, cache_dir=tmp_path))
    assert [row["video_id"] for row in kept] == ["whole"]
    # Evaluation: scored (IoU 0 stays in the denominator) and flagged.
    from open_r1.evaluation import compute_metrics, generate_records

    source = VideoSource(SETTINGS, cache_dir=tmp_path)
    clips = {vid: source.get(vid) for vid in ("whole", "cut")}
    records = generate_records(lambda group, _: ["<answer>6 to 9</answer>"] * len(group), rows, clips)
    flagged = {r["video_id"]: r.get("clip_ends_before_gt", False) for r in records}
    assert flagged == {"whole": False, "cut": True}
    assert compute_metrics(records)["num_clip_ends_before_gt"] == 1


# --------------------------------------------------------------------------------------------------------------------
# 2 + 3. Bad ids, and paths outside the video folder


def test_one_bad_id_is_one_failure_the_rest_is_processed(tmp_path):
    videos = tmp_path / "videos"
    write_video(videos / "good.mp4", frames(8), 4.0)
    write_video(videos / "._good.mp4", frames(8), 4.0)  # macOS AppleDouble companion
    write_video(tmp_path / "outside.mp4", frames(8), 4.0)
    ids = {"good": None, "../outside": None, "/abs/path": None, "": None, "y" * 300: None}
    annotations = annotation_file(tmp_path / "ann.json", {vid: (2.0, [0.0, 1.0]) for vid in ids})
    out = tmp_path / "cache"
    code = main([str(annotations), "--video_dir", str(videos), "--output_dir", str(out), "--no_progress",
                 "--num_workers", "1"])  # fmt: skip
    assert code == 1  # four failures
    latest = read_manifest(out)
    assert latest["good"]["type"] == "entry"
    reasons = {vid: rec["reason"] for vid, rec in latest.items() if rec["type"] == "failure"}
    assert set(reasons) == {"../outside", "/abs/path", "", "y" * 300}
    assert all(reason.startswith("invalid video id") for reason in reasons.values())
    assert not (tmp_path / "outside.safetensors").exists()
    # Folder mode skips the AppleDouble file instead of failing on it.
    folder_out = tmp_path / "folder_cache"
    assert main(["--video_dir", str(videos), "--output_dir", str(folder_out), "--no_progress"]) == 0
    assert set(read_manifest(folder_out)) == {"good"}


def test_no_path_leaves_the_video_folder(tmp_path):
    videos = tmp_path / "videos"
    write_video(videos / "inside.mp4", frames(8), 4.0)
    write_video(tmp_path / "secret.mp4", frames(8), 4.0)
    source = VideoSource(SETTINGS, video_dir=videos)
    with pytest.raises(VideoDecodeError, match="path separator"):
        source.get("../secret")
    with pytest.raises(VideoDecodeError, match="path separator"):
        source.get(str(tmp_path / "secret"))
    assert source.missing(["inside", "../secret", str(tmp_path / "secret")]) == ["../secret", str(tmp_path / "secret")]
    # The training pre-check names the reason instead of crashing (with a cache) or accepting the file (without).
    rows = [{"video_id": vid, "windows": [[0.0, 1.0]]} for vid in ("inside", "../secret")]
    for source in (VideoSource(SETTINGS, video_dir=videos), VideoSource(SETTINGS, cache_dir=tmp_path / "c")):
        with pytest.raises(FileNotFoundError, match="invalid id: contains a path separator"):
            check_videos(rows, source)


# --------------------------------------------------------------------------------------------------------------------
# 4. Cache entries are checked, and written atomically


@pytest.fixture
def entry(tmp_path):
    path = write_video(tmp_path / "v.mp4", frames(16), 4.0)
    cache = VideoCache(tmp_path / "cache")
    clip = decode_video(path, SETTINGS)
    cache.save("v", clip, SETTINGS)
    return cache, clip, path


def rewrite_entry(cache: VideoCache, video_id: str, meta_changes: dict | None = None, flip_byte: int | None = None):
    """Rewrite an entry's header metadata and/or flip one frame byte, keeping the file self-consistent otherwise."""
    path = cache.path(video_id)
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    header["__metadata__"].update(meta_changes or {})
    body = bytearray(data[8 + size :])
    if flip_byte is not None:
        body[flip_byte] ^= 0xFF
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(len(encoded).to_bytes(8, "little") + encoded + bytes(body))


def test_flipped_frame_bytes_are_caught_by_verify_and_redone_on_resume(entry, tmp_path):
    cache, clip, path = entry
    rewrite_entry(cache, "v", flip_byte=123)
    assert cache.problem("v", SETTINGS) is None  # the header alone cannot tell
    assert "checksum" in cache.verify_entry("v", SETTINGS)
    with pytest.raises(CacheEntryError, match="checksum"):
        VideoCache(cache.root, verify=True).load("v", SETTINGS)
    report = verify_cache(cache.root, settings=SETTINGS, progress=False)
    assert [vid for vid, _ in report["damaged"]] == ["v"]
    assert main(["--verify", "--output_dir", str(cache.root), "--no_progress"]) == 1
    summary = preprocess_videos({"v": path}, cache.root, SETTINGS, progress=False)
    assert summary.redone == 1 and cache.verify_entry("v", SETTINGS) is None
    assert torch.equal(cache.load("v", SETTINGS).frames, clip.frames)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"sample_fps": "0.0"}, "sample_fps"),
        ({"sample_fps": "nan"}, "sample_fps"),
        ({"sample_fps": "1e-300"}, "sample_fps"),
        ({"sample_fps": "3.0"}, "sample_fps 3.0 is not 8 / 16 x 4.0"),  # plausible, but not how it is computed
        ({"source_fps": "inf"}, "source_fps"),
        ({"frame_indices": "[0, 1]"}, "frame indices"),
        ({"frame_indices": "[5, 4, 3, 2, 1, 0, 6, 7]"}, "increasing"),
        ({"source_num_frames": "3"}, "leave the source"),
        ({"source_height": "4000"}, "these settings give"),
        ({"settings": "{not json"}, "settings"),
    ],
)
def test_inconsistent_headers_are_refused(entry, changes, message):
    cache, clip, _ = entry
    rewrite_entry(cache, "v", changes)
    problem = cache.problem("v", SETTINGS)
    assert problem is not None and message in problem
    with pytest.raises(CacheEntryError):
        cache.load("v", SETTINGS)
    # The video source decodes the file again instead of training on the bad entry.
    source = VideoSource(SETTINGS, cache_dir=cache.root)
    assert "v" in source.missing(["v"])


def test_verify_checks_an_entry_against_the_settings_it_records(entry):
    """--verify with or without the cache's flags: a header whose frame size its own settings cannot give is damaged,
    not "made with other settings"."""
    cache, clip, _ = entry
    assert verify_cache(cache.root, progress=False)["damaged"] == []
    rewrite_entry(cache, "v", {"source_height": "4000"})
    for settings in (SETTINGS, None):
        report = verify_cache(cache.root, settings=settings, progress=False)
        assert [vid for vid, _ in report["damaged"]] == ["v"] and "these settings give" in report["damaged"][0][1]
        assert report["other_settings"] == []


def test_interrupted_write_keeps_the_previous_entry(entry, monkeypatch):
    cache, clip, _ = entry
    import safetensors.torch

    real_save = safetensors.torch.save_file

    def dies_halfway(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        data = Path(filename).read_bytes()
        Path(filename).write_bytes(data[: len(data) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", dies_halfway)
    changed = decode_video(entry[2], VideoSettings(fps=1.0, total_pixels=56 * 56 * 24, min_pixels=56 * 56))
    with pytest.raises(OSError, match="disk full"):
        cache.save("v", changed, SETTINGS)
    assert torch.equal(cache.load("v", SETTINGS).frames, clip.frames)  # the previous entry, intact
    assert cache.verify_entry("v", SETTINGS) is None
    assert list(cache.root.glob(".*tmp")) == []  # no partial file left behind, none taken as an entry
    with pytest.raises(OSError, match="disk full"):
        cache.save("new", changed, SETTINGS)
    assert cache.problem("new", SETTINGS) == "no cache entry"


# --------------------------------------------------------------------------------------------------------------------
# 5. Predictions lines of the wrong shape, duplicates, mixed runs


GOOD = {
    "query_id": "q1",
    "video_id": "v",
    "query": "x",
    "gt": [[1.0, 2.0]],
    "pred": [1.0, 2.0],
    "output": "",
    "iou": 1.0,
}


@pytest.mark.parametrize(
    "line, problem",
    [
        ([1, 2], "JSON list"),
        ({"pred": [1, 2], "gt": [[1, 2]]}, "no query_id"),
        ({**GOOD, "pred": ["a", 2]}, "pred"),
        ({k: v for k, v in GOOD.items() if k != "gt"}, "gt"),
        ({**GOOD, "gt": [[1, "b"]]}, "gt"),
    ],
)
def test_wrong_shaped_prediction_lines_name_file_and_line(tmp_path, line, problem, caplog):
    path = tmp_path / "predictions.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(line) + "\n")
    with pytest.raises(PredictionsFileError, match=rf"predictions\.jsonl:2: line .*{problem}"):
        rescore_predictions(path, write=False)
    with pytest.raises(PredictionsFileError, match=r"predictions\.jsonl:2"):  # --allow_mixed is about runs only
        rescore_predictions(path, write=False, allow_mixed=True)
    # Resume rule: the line is skipped with the same message (its query is evaluated again).
    assert [r["query_id"] for r in read_predictions(path)] == ["q1"]
    assert "predictions.jsonl:2" in caplog.text


def test_duplicates_are_reported_and_mixed_runs_refused(tmp_path, caplog):
    path = tmp_path / "predictions.jsonl"
    other = {**GOOD, "pred": [5.0, 6.0]}
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(other) + "\n")
    report: dict = {}
    read_predictions(path, report=report)
    assert report["duplicates"] == ["q1"] and "appear more than once" in caplog.text
    with pytest.raises(PredictionsFileError, match="predictions.jsonl:2: query q1 was already scored differently"):
        rescore_predictions(path, write=False)
    assert rescore_predictions(path, write=False, allow_mixed=True)["num_queries"] == 1
    path.write_text(json.dumps({**GOOD, "run_id": "a"}) + "\n" + json.dumps({**GOOD, "query_id": "q2", "run_id": "b"}))
    with pytest.raises(PredictionsFileError, match="mixes predictions of 2 runs"):
        rescore_predictions(path, write=False)


# --------------------------------------------------------------------------------------------------------------------
# 6. Decode workers die with their parent


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_exit_when_the_main_process_is_killed(tmp_path):
    script = textwrap.dedent(
        f"""
        import time
        import open_r1.preprocess as p
        def slow(task, *args):
            time.sleep(120)
        p._process = slow  # the forked workers inherit it
        p.preprocess_videos({{f"v{{i}}": "/nonexistent" for i in range(4)}}, {str(tmp_path)!r}, num_workers=2,
                            progress=False)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.time() + 60
        workers: list[int] = []
        while time.time() < deadline and len(workers) < 2:
            time.sleep(0.2)
            workers = _children(parent.pid)
        assert len(workers) >= 2, "the workers never started"
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.time() + 10
        while time.time() < deadline and any(_alive(pid) for pid in workers):
            time.sleep(0.2)
        assert not any(_alive(pid) for pid in workers), "decode workers outlived their parent"
    finally:
        for pid in _children(parent.pid) + [parent.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


# --------------------------------------------------------------------------------------------------------------------
# 7. Memory per worker


# --------------------------------------------------------------------------------------------------------------------
# 8. Messages that say what is wrong


def test_messages_name_the_real_problem(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "loop.mp4").symlink_to(videos / "loop.mp4")
    (videos / "dangling.mp4").symlink_to(tmp_path / "gone.mp4")
    with pytest.raises(VideoDecodeError, match="symlink loop"):
        VideoSource(SETTINGS, video_dir=videos).get("loop")
    with pytest.raises(VideoDecodeError, match="broken symlink"):
        VideoSource(SETTINGS, video_dir=videos).get("dangling")
    # A corrupt cache header is reported as damaged, not as a missing video.
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "bad.safetensors").write_bytes((20).to_bytes(8, "little") + b"{not a header at all")
    message = describe_missing(VideoSource(SETTINGS, cache_dir=cache), ["bad"])
    assert "entry header is unreadable" in message
    # Deeply nested JSON: the file is named, no bare RecursionError.
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="deep.json: JSON nested too deeply"):
        load_annotations(deep)
    lines = tmp_path / "predictions.jsonl"
    lines.write_text(json.dumps(GOOD) + "\n" + "[" * 100_000 + "]" * 100_000 + "\n")
    assert [r["query_id"] for r in read_predictions(lines)] == ["q1"]


def test_training_precheck_probes_raw_videos_before_the_model_loads(tmp_path):
    videos = tmp_path / "videos"
    write_video(videos / "good.mp4", frames(8), 4.0)
    (videos / "broken.mp4").write_bytes(
        b"\x00\x00\x00\x18ftypmp42" + bytes(RNG.integers(0, 255, 4000, dtype=np.uint8))
    )
    rows = [{"video_id": vid, "windows": [[0.0, 1.0]]} for vid in ("good", "broken")]
    with pytest.raises(ValueError, match=r"1 videos cannot be decoded \(broken: cannot decode .*broken\.mp4"):
        check_videos(rows, VideoSource(SETTINGS, video_dir=videos))
    assert check_videos(rows[:1], VideoSource(SETTINGS, video_dir=videos)) == rows[:1]


# --------------------------------------------------------------------------------------------------------------------
# 10. Variable frame rate


def test_variable_frame_rate_is_detected_and_recorded(tmp_path):
    times = [i / 5 for i in range(25)] + [5 + i / 60 for i in range(300)]  # 5 fps for 5 s, then 60 fps for 5 s
    vfr = write_video(tmp_path / "videos" / "vfr.mp4", frames(len(times)), 30.0, timestamps=times)
    cfr = write_video(tmp_path / "videos" / "cfr.mp4", frames(40), 4.0)
    summary = preprocess_videos({"vfr": vfr, "cfr": cfr}, tmp_path / "c", SETTINGS, progress=False)
    latest = read_manifest(tmp_path / "c")
    assert summary.variable_frame_rate == 1
    assert latest["vfr"]["variable_frame_rate"] and latest["vfr"]["timestamp_max_offset"] > 2.0
    assert not latest["cfr"]["variable_frame_rate"] and latest["cfr"]["timestamp_max_offset"] < 0.01
    # Sampling stays qwen-vl-utils': evenly spaced frame indices, whatever their timestamps.
    clip = VideoCache(tmp_path / "c").load("vfr", SETTINGS)
    expected = video_decode.sampled_frame_indices(len(times), clip.num_frames)
    assert clip.frame_indices == expected
    assert '"type": "run"' in (tmp_path / "c" / MANIFEST_NAME).read_text()
