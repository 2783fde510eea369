"""The demo's synthetic task: its videos, splits and the constant baseline (:mod:`open_r1.demo` runs it)."""

from __future__ import annotations

import argparse
from pathlib import Path

from open_r1.configs import VideoArguments

# 2 fps and 56x56 frames: one temporal step (4 video tokens) per second of video.
DEMO_VIDEO = {"video_fps": 2.0, "video_min_pixels": 56 * 56, "video_total_pixels": 56 * 56 * 24}
# One 1-3 s event per 8-12 s clip, on whole seconds: a coloured shape as large as the frame.
DEMO_DATA = {
    "duration": (8, 12), "fps": 2.0, "events_per_video": 1, "event_seconds": (1, 3), "size": (56, 56),
    "shape_size": 1.0,
}  # fmt: skip
# name: (videos, data seed); `--train_videos` changes the size of the training split.
SPLITS = {"train": (256, 1), "test": (400, 2)}
# Where demo settings are chosen (never on the held-out split or the bench's seeds): videos and data seed.
VALIDATION = (200, 3)


def add_task_arguments(parser: argparse.ArgumentParser, output_dir: str) -> None:
    """Flags that change the demo's synthetic task, defaulting to it (for the probes in benchmarks/); read them back
    with :func:`task_data`."""
    parser.add_argument("--output_dir", default=output_dir)
    parser.add_argument("--train_videos", type=positive_int, default=SPLITS["train"][0])
    parser.add_argument("--events", type=int, default=DEMO_DATA["events_per_video"],
                        help="Events per clip (the query names one).")  # fmt: skip
    parser.add_argument("--shape_size", type=float, default=DEMO_DATA["shape_size"],
                        help="Shape side / the frame's shorter side.")  # fmt: skip
    parser.add_argument("--size", type=int, nargs=2, default=list(DEMO_DATA["size"]), help="Frame height and width.")
    parser.add_argument("--duration", type=int, nargs="+", default=list(DEMO_DATA["duration"]),
                        help="Clip seconds: one value or a range.")  # fmt: skip


def task_data(args: argparse.Namespace) -> dict:
    """The :data:`DEMO_DATA` overrides given by the flags of :func:`add_task_arguments`."""
    low, high = (args.duration * 2)[:2]
    return {"duration": (low, high), "events_per_video": args.events, "shape_size": args.shape_size,
            "size": tuple(args.size)}  # fmt: skip


def make_split(
    out: Path, num_videos: int, seed: int, id_prefix: str, cache: Path, data: dict | None = None, blank: bool = False
) -> Path:
    """Write ``num_videos`` videos of the demo's task to ``out`` (``data`` overrides entries of :data:`DEMO_DATA`)
    and cache them in ``cache`` at the demo's video settings; returns the annotation file."""
    from open_r1.data import load_annotations
    from open_r1.preprocess import preprocess_videos
    from open_r1.synthetic import make_grounding_dataset
    from open_r1.video import find_video

    annotation_file, video_dir = make_grounding_dataset(out, num_videos, seed=seed, id_prefix=id_prefix, blank=blank,
                                                        **{**DEMO_DATA, **(data or {})})  # fmt: skip
    videos = {row["video_id"]: find_video(video_dir, row["video_id"]) for row in load_annotations(annotation_file)}
    preprocess_videos(videos, cache, settings=VideoArguments(**DEMO_VIDEO).to_settings())  # a progress bar
    return annotation_file


def make_data(out: Path, train_videos: int | None = None, data: dict | None = None) -> dict[str, Path]:
    """Write and cache the videos; returns annotation files: ``train``, ``test`` and ``blank`` (the held-out queries
    on all-background copies of the held-out videos). ``data`` overrides entries of :data:`DEMO_DATA`."""
    default_train, train_seed = SPLITS["train"]
    test_videos, test_seed = SPLITS["test"]
    cache = out / "cache"
    return {
        "train": make_split(out / "train", train_videos or default_train, train_seed, "train", cache, data),
        "test": make_split(out / "test", test_videos, test_seed, "test", cache, data),
        "blank": make_split(out / "blank", test_videos, test_seed, "blank", cache, data, blank=True),
    }


def constant_predictions(train_annotations: Path, test_annotations: Path) -> list[dict]:
    """The single span (on a 0.5 s grid) with the best mean IoU on the training split, answered for every test query."""
    from open_r1.data import load_annotations
    from open_r1.evaluation import score_output
    from open_r1.grounding import temporal_iou

    train = load_annotations(train_annotations)
    longest = max(float(row["duration"]) for row in train)
    grid = [i / 2 for i in range(int(longest * 2) + 1)]
    spans = [(s, e) for s in grid for e in grid if e > s]

    def mean_iou(span):
        return sum(max(temporal_iou(span, w) for w in row["windows"]) for row in train) / len(train)

    best = max(spans, key=mean_iou)
    records = []
    for row in load_annotations(test_annotations):
        output = f"<think></think><answer>{best[0]:.2f} to {best[1]:.2f}</answer>"
        gt = [list(map(float, w)) for w in row["windows"]]
        records.append({"query_id": row["query_id"], "output": output, **score_output(output, gt)})
    return records


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1 (0 or -5 steps would train whole epochs or fail deep inside)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value
