"""What the entry-point tests (test_grpo_video.py, test_sft_video.py) share: a tiny model on four synthetic videos,
and the command-line flags every run of it takes."""

from open_r1.modeling import build_tiny_model
from open_r1.synthetic import make_grounding_dataset

# Tiny frames: 56x56 after resizing, 2 fps -> 8 temporal steps x 4 merged tokens = 32 video tokens per query.
VIDEO_FLAGS = ["--video_min_pixels", "3136", "--video_total_pixels", str(3136 * 16)]


def tiny_setup(tmp_path_factory, name: str):
    """``(root, annotations, video_dir, model)``: 4 videos of 4 s at 4 fps and a tiny random Qwen2.5-VL."""
    root = tmp_path_factory.mktemp(name)
    annotations, video_dir = make_grounding_dataset(root / "data", num_videos=4, duration=4.0, fps=4.0)
    return root, annotations, video_dir, build_tiny_model(root / "tiny")


def common_args(setup, output_dir, *extra: str) -> list[str]:
    """Flags of a CPU run on ``setup`` (fp32, 4 rows per device, no reporting or checkpoints), then ``extra``."""
    _, annotations, video_dir, model = setup
    return [
        "--model_name_or_path", str(model),
        "--annotation_file", str(annotations),
        "--video_dir", str(video_dir),
        "--output_dir", str(output_dir),
        "--use_cpu", "true",
        "--bf16", "false",
        "--per_device_train_batch_size", "4",
        "--report_to", "none",
        "--logging_steps", "1",
        "--save_strategy", "no",
        *VIDEO_FLAGS,
        *extra,
    ]  # fmt: skip
